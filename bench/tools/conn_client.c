/* conn_client: new connections per second, each carrying one SIZE-byte exchange.
 *
 * Each of CONCURRENCY threads (default 1) loops: connect, send SIZE bytes, read SIZE bytes back
 * (echo_server), close. One thread measures a connection's latency (the path's round trips);
 * several measure a connection *rate* under concurrency, which is what a proxy's per-connection
 * CPU cost limits and what operators see. Stops after SECONDS or MAX_CONNS connections in all,
 * whichever comes first, or after 100 failures in all. Records how long connect() itself took
 * (from just before the call to its return: what eBPF capture adds to), and the whole
 * connection's lifetime (from socket() to close()). A connection that
 * makes no progress for IO_TIMEOUT_S (connect, send or receive) is a failure, not a hang of the
 * whole run: its error is printed, and the load fails the run if more than 1% fail.
 *
 * With INTERVAL_US, each thread starts a connection at most every INTERVAL_US microseconds
 * (paced: it sleeps until the next start if the last connection finished sooner), so the time a
 * client's CPU sits idle before each connect() is the same whatever path is measured.
 *
 * usage: conn_client HOST PORT SIZE SECONDS MAX_CONNS [CONCURRENCY [INTERVAL_US]]
 * stdout: "connections N failures F elapsed_ns E" then "CONNECT_NS TOTAL_NS" per connection.
 */
#include "tool_common.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define MAX_FAILURES 100
#define IO_TIMEOUT_S 5
#define MAX_CONCURRENCY 256

static struct sockaddr_in target;
static size_t size;
static uint64_t start_ns, limit_ns, interval_ns;
static long max_conns;
static uint32_t *connect_ns, *total_ns;
static long next_slot;              /* connections completed, in all threads (atomic) */
static long failures;               /* atomic */
static const char *last_error = ""; /* a static string; a racy write of a pointer is harmless */

static uint32_t clamp32(uint64_t v) { return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v; }

static void fail(const char *why) {
    last_error = why;
    __atomic_fetch_add(&failures, 1, __ATOMIC_RELAXED);
}

static void *loop(void *unused) {
    (void)unused;
    char *buf = malloc(size);
    if (buf == NULL)
        return NULL;
    memset(buf, 'x', size);
    uint64_t next_start = now_ns();
    while (__atomic_load_n(&failures, __ATOMIC_RELAXED) < MAX_FAILURES &&
           __atomic_load_n(&next_slot, __ATOMIC_RELAXED) < max_conns) {
        if (interval_ns) {
            struct timespec at = {.tv_sec = (time_t)(next_start / 1000000000ull),
                                  .tv_nsec = (long)(next_start % 1000000000ull)};
            while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &at, NULL) == EINTR)
                ;
            uint64_t now = now_ns();
            /* Behind (a connection took longer than the interval): no burst to catch up. */
            next_start = next_start + interval_ns > now ? next_start + interval_ns : now + interval_ns;
        }
        uint64_t t0 = now_ns();
        if (t0 - start_ns >= limit_ns)
            break;
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        struct timeval timeout = {.tv_sec = IO_TIMEOUT_S};
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        /* On Linux SO_SNDTIMEO bounds connect() too. */
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, sizeof timeout);
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, sizeof timeout);
        /* connect() alone: socket() and setsockopt() are no part of what capture adds to, and
         * other tasks woken by the previous connection's close (a server's EOF) can preempt the
         * client in them, which would count against whichever path woke its server there. */
        uint64_t t_connect = now_ns();
        if (connect(fd, (struct sockaddr *)&target, sizeof target) < 0) {
            fail(errno == EINPROGRESS || errno == EAGAIN ? "connect() timed out"
                                                         : strerror(errno));
            close(fd);
            continue;
        }
        uint64_t t1 = now_ns();
        errno = 0; /* a read() of 0 bytes (EOF) leaves errno alone */
        if (full_io(fd, buf, size, 1) < 0 || full_io(fd, buf, size, 0) < 0) {
            fail(errno == EAGAIN ? "no echo within the I/O timeout"
                                 : "connection closed before the echo came back");
            close(fd);
            continue;
        }
        close(fd);
        uint64_t t2 = now_ns();
        long slot = __atomic_fetch_add(&next_slot, 1, __ATOMIC_RELAXED);
        if (slot >= max_conns)
            break; /* another thread took the last slot: this connection is not counted */
        connect_ns[slot] = clamp32(t1 - t_connect);
        total_ns[slot] = clamp32(t2 - t0);
    }
    free(buf);
    return NULL;
}

int main(int argc, char **argv) {
    if (argc < 6 || argc > 8) {
        fprintf(stderr, "usage: conn_client HOST PORT SIZE SECONDS MAX_CONNS "
                        "[CONCURRENCY [INTERVAL_US]]\n");
        return 2;
    }
    size = (size_t)atol(argv[3]);
    limit_ns = (uint64_t)(atof(argv[4]) * 1e9);
    max_conns = atol(argv[5]);
    long concurrency = argc >= 7 ? atol(argv[6]) : 1;
    interval_ns = argc == 8 ? (uint64_t)atol(argv[7]) * 1000ull : 0;
    target.sin_family = AF_INET;
    target.sin_port = htons((unsigned short)atoi(argv[2]));
    if (size == 0 || max_conns <= 0 || concurrency < 1 || concurrency > MAX_CONCURRENCY ||
        inet_pton(AF_INET, argv[1], &target.sin_addr) != 1) {
        fprintf(stderr, "conn_client: bad arguments (CONCURRENCY is 1..%d)\n", MAX_CONCURRENCY);
        return 2;
    }
    connect_ns = malloc(sizeof(uint32_t) * (size_t)max_conns);
    total_ns = malloc(sizeof(uint32_t) * (size_t)max_conns);
    if (connect_ns == NULL || total_ns == NULL) {
        fprintf(stderr, "conn_client: MAX_CONNS %ld is too many to record\n", max_conns);
        return 2;
    }
    pthread_t threads[MAX_CONCURRENCY];
    start_ns = now_ns();
    long started = 0;
    for (; started < concurrency; started++)
        if (pthread_create(&threads[started], NULL, loop, NULL) != 0)
            break;
    for (long i = 0; i < started; i++)
        pthread_join(threads[i], NULL);
    uint64_t elapsed = now_ns() - start_ns;
    if (started == 0) {
        fprintf(stderr, "conn_client: cannot start a thread\n");
        return 2;
    }
    long done = next_slot < max_conns ? next_slot : max_conns;
    if (failures)
        fprintf(stderr, "conn_client: %ld failures, last: %s\n", failures, last_error);
    printf("connections %ld failures %ld elapsed_ns %llu\n", done, failures,
           (unsigned long long)elapsed);
    for (long i = 0; i < done; i++)
        printf("%u %u\n", connect_ns[i], total_ns[i]);
    return failures >= MAX_FAILURES ? 1 : 0;
}
