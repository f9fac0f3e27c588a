/* conn_client: new connections per second, each carrying one SIZE-byte exchange.
 *
 * One connection at a time: connect, send SIZE bytes, read SIZE bytes back (echo_server), close.
 * Stops after SECONDS or MAX_CONNS connections, whichever comes first, or after 100 failures.
 * Records how long connect() itself took, which is what eBPF capture adds to, and the whole
 * connection's lifetime.
 *
 * usage: conn_client HOST PORT SIZE SECONDS MAX_CONNS
 * stdout: "connections N failures F elapsed_ns E" then "CONNECT_NS TOTAL_NS" per connection.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_FAILURES 100

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int full_io(int fd, char *buf, size_t len, int writing) {
    size_t off = 0;
    while (off < len) {
        ssize_t n = writing ? write(fd, buf + off, len - off) : read(fd, buf + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        off += (size_t)n;
    }
    return 0;
}

static uint32_t clamp32(uint64_t v) { return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v; }

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: conn_client HOST PORT SIZE SECONDS MAX_CONNS\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[3]);
    uint64_t limit_ns = (uint64_t)(atof(argv[4]) * 1e9);
    long max_conns = atol(argv[5]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (size == 0 || max_conns <= 0 || inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "conn_client: bad arguments\n");
        return 2;
    }
    char *buf = malloc(size);
    uint32_t *connect_ns = malloc(sizeof(uint32_t) * (size_t)max_conns);
    uint32_t *total_ns = malloc(sizeof(uint32_t) * (size_t)max_conns);
    memset(buf, 'x', size);
    long done = 0, failures = 0;
    const char *last_error = "";
    uint64_t start = now_ns();
    while (done < max_conns && failures < MAX_FAILURES) {
        uint64_t t0 = now_ns();
        if (t0 - start >= limit_ns)
            break;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
            last_error = strerror(errno);
            failures++;
            close(fd);
            continue;
        }
        uint64_t t1 = now_ns();
        if (full_io(fd, buf, size, 1) < 0 || full_io(fd, buf, size, 0) < 0) {
            last_error = "connection closed before the echo came back";
            failures++;
            close(fd);
            continue;
        }
        close(fd);
        uint64_t t2 = now_ns();
        connect_ns[done] = clamp32(t1 - t0);
        total_ns[done] = clamp32(t2 - t0);
        done++;
    }
    uint64_t elapsed = now_ns() - start;
    if (failures)
        fprintf(stderr, "conn_client: %ld failures, last: %s\n", failures, last_error);
    printf("connections %ld failures %ld elapsed_ns %llu\n", done, failures,
           (unsigned long long)elapsed);
    for (long i = 0; i < done; i++)
        printf("%u %u\n", connect_ns[i], total_ns[i]);
    return failures >= MAX_FAILURES ? 1 : 0;
}
