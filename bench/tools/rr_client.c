/* rr_client: request/response latency on one connection.
 *
 * Sends SIZE bytes, waits for SIZE bytes back (echo_server), and records the round trip, again
 * and again on the same TCP connection, until SECONDS have passed or MAX_ROUNDS were done,
 * whichever comes first. A C client so the measurement is the path, not the interpreter.
 *
 * usage: rr_client HOST PORT SIZE SECONDS MAX_ROUNDS
 * stdout: "rounds N elapsed_ns E" then one round-trip time in nanoseconds per line.
 */
#include "tool_common.h"

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

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: rr_client HOST PORT SIZE SECONDS MAX_ROUNDS\n");
        return 2;
    }
    size_t size = (size_t)atol(argv[3]);
    uint64_t limit_ns = (uint64_t)(atof(argv[4]) * 1e9);
    long max_rounds = atol(argv[5]);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)atoi(argv[2]))};
    if (size == 0 || max_rounds <= 0 || inet_pton(AF_INET, argv[1], &sa.sin_addr) != 1) {
        fprintf(stderr, "rr_client: bad arguments\n");
        return 2;
    }
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        fprintf(stderr, "rr_client: connect %s:%s: %s\n", argv[1], argv[2], strerror(errno));
        return 1;
    }
    char *buf = malloc(size);
    uint32_t *samples = malloc(sizeof(uint32_t) * (size_t)max_rounds);
    memset(buf, 'x', size);
    uint64_t start = now_ns();
    long rounds = 0;
    while (rounds < max_rounds) {
        uint64_t t0 = now_ns();
        if (t0 - start >= limit_ns)
            break;
        if (full_io(fd, buf, size, 1) < 0 || full_io(fd, buf, size, 0) < 0) {
            fprintf(stderr, "rr_client: connection lost after %ld rounds\n", rounds);
            return 1;
        }
        uint64_t rtt = now_ns() - t0;
        samples[rounds++] = rtt > UINT32_MAX ? UINT32_MAX : (uint32_t)rtt;
    }
    uint64_t elapsed = now_ns() - start;
    close(fd);
    printf("rounds %ld elapsed_ns %llu\n", rounds, (unsigned long long)elapsed);
    for (long i = 0; i < rounds; i++)
        printf("%u\n", samples[i]);
    return 0;
}
