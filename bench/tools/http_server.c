/* http_server: the far end of the HTTP/1.1 keep-alive load (wrk).
 *
 * One thread, epoll: every request (head ending in CRLF CRLF, no body) gets the same 200 response
 * with a 1 KiB body, on a connection that stays open; `GET /1m` gets a 1 MiB body instead (the
 * streaming-memory check of a proxy: the proxy must pass it on, not hold it). nginx is not
 * installed here and a Python server tops out far below what a proxy in front of it can carry,
 * so the server would be the bottleneck and every path would look alike; this one does well over
 * 100k requests/s on a core.
 *
 * usage: http_server BIND_ADDR PORT
 * It runs until killed (the harness kills it by pid at teardown).
 */
#include "tool_common.h"

#include <poll.h>
#include <signal.h>

#define MAX_FDS 65536
#define REQ_BUF 16384
#define BODY_SIZE 1024
#define BIG_BODY_SIZE (1024 * 1024)

struct conn {
    size_t used;
    char buf[REQ_BUF];
};

static struct conn *conns[MAX_FDS];
static char response[BODY_SIZE + 256];
static size_t response_len;
static char *big_response;
static size_t big_response_len;

static void build_response(void) {
    int head = snprintf(response, sizeof response,
                        "HTTP/1.1 200 OK\r\nServer: weft-bench\r\nContent-Type: text/plain\r\n"
                        "Content-Length: %d\r\n\r\n",
                        BODY_SIZE);
    memset(response + head, 'x', BODY_SIZE);
    response_len = (size_t)head + BODY_SIZE;
    big_response = malloc(BIG_BODY_SIZE + 256);
    int big_head = snprintf(big_response, 256,
                            "HTTP/1.1 200 OK\r\nServer: weft-bench\r\nContent-Type: text/plain\r\n"
                            "Content-Length: %d\r\n\r\n",
                            BIG_BODY_SIZE);
    memset(big_response + big_head, 'y', BIG_BODY_SIZE);
    big_response_len = (size_t)big_head + BIG_BODY_SIZE;
}

static void drop(int fd) {
    free(conns[fd]);
    conns[fd] = NULL;
    close(fd);
}

static int send_all(int fd, const char *data, size_t len) {
    size_t off = 0;
    while (off < len) {
        ssize_t w = write(fd, data + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno == EAGAIN) { /* a 1 MiB body to a slow reader: wait, do not spin */
            struct pollfd p = {.fd = fd, .events = POLLOUT};
            if (poll(&p, 1, 10000) <= 0)
                return -1;
            continue;
        }
        if (w <= 0)
            return -1;
        off += (size_t)w;
    }
    return 0;
}

/* Answer every complete request head in the buffer (wrk may pipeline nothing, proxies may). */
static void serve_ready(int fd) {
    struct conn *c = conns[fd];
    for (;;) {
        ssize_t n = read(fd, c->buf + c->used, REQ_BUF - c->used);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            drop(fd);
            return;
        }
        if (n < 0)
            return;
        c->used += (size_t)n;
        char *start = c->buf;
        char *end;
        while ((end = memmem(start, c->used - (size_t)(start - c->buf), "\r\n\r\n", 4)) != NULL) {
            int big = end - start >= 4 && memcmp(start, "GET /1m ", 8) == 0; /* in the head */
            if (send_all(fd, big ? big_response : response, big ? big_response_len : response_len) <
                0) {
                drop(fd);
                return;
            }
            start = end + 4;
        }
        size_t rest = c->used - (size_t)(start - c->buf);
        if (rest == REQ_BUF) { /* a request head larger than the buffer: not ours to serve */
            drop(fd);
            return;
        }
        memmove(c->buf, start, rest);
        c->used = rest;
    }
}

/* A connection's request buffer, indexed by its fd; an fd beyond the table is refused. */
static int open_conn(int fd) {
    if (fd >= MAX_FDS)
        return -1;
    conns[fd] = calloc(1, sizeof(struct conn));
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: http_server BIND_ADDR PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    build_response();
    serve_forever(listen_on("http_server", argv[1], atoi(argv[2])), open_conn, serve_ready);
}
