/* echo_server: the far end of the 1 KiB request/response and new-connection loads.
 *
 * One thread, epoll, non-blocking sockets: it echoes every byte it reads, so a client that sends
 * a 1 KiB request reads a 1 KiB response. A C server, because a Python one would add tens of
 * microseconds per exchange and hide the differences between the paths being compared.
 *
 * usage: echo_server BIND_ADDR PORT
 * It runs until killed (the harness kills it by pid at teardown).
 */
#include "tool_common.h"

#include <signal.h>

#define BUF_SIZE 65536

/* Echo what is readable now; a short write (peer slow to read) is finished with a blocking
 * loop, which is fine for a request/response load where at most 1 KiB is in flight. */
static void echo_ready(int fd) {
    static char buf[BUF_SIZE];
    for (;;) {
        ssize_t n = read(fd, buf, sizeof buf);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            close(fd);
            return;
        }
        if (n < 0)
            return;
        ssize_t off = 0;
        while (off < n) {
            ssize_t w = write(fd, buf + off, (size_t)(n - off));
            if (w < 0 && (errno == EAGAIN || errno == EINTR))
                continue;
            if (w <= 0) {
                close(fd);
                return;
            }
            off += w;
        }
    }
}

/* echo_server keeps no state per connection: every accepted one is served. */
static int keep(int fd) {
    (void)fd;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: echo_server BIND_ADDR PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    serve_forever(listen_on("echo_server", argv[1], atoi(argv[2])), keep, echo_ready);
}
