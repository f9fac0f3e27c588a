/* tool_common.h: what the C load tools share (bench/native.py hashes it into every tool's build).
 *
 * Clients: a monotonic clock in ns and a whole-buffer read/write. Servers: a non-blocking
 * listener and the one-thread epoll loop that accepts (TCP_NODELAY) and hands readable sockets
 * to the tool. `static inline`, so a tool that uses only part of it compiles without warnings.
 */
#ifndef WEFT_BENCH_TOOL_COMMON_H
#define WEFT_BENCH_TOOL_COMMON_H

/* First include of every tool: accept4 and SOCK_NONBLOCK need it before any system header. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define TOOL_MAX_EVENTS 256

static inline uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Read or write all of buf (retrying EINTR); -1 on an error or an early end of stream. */
static inline int full_io(int fd, char *buf, size_t len, int writing) {
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

/* A non-blocking IPv4 listener on addr:port; exits 2 on a bad address, 1 if it cannot listen. */
static inline int listen_on(const char *tool, const char *addr, int port) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    if (fd < 0 || inet_pton(AF_INET, addr, &sa.sin_addr) != 1) {
        fprintf(stderr, "%s: bad bind address %s\n", tool, addr);
        exit(2);
    }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(fd, 4096) < 0) {
        fprintf(stderr, "%s: cannot listen on %s:%d: %s\n", tool, addr, port, strerror(errno));
        exit(1);
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    return fd;
}

/* Serve forever, one thread: accept every pending connection (non-blocking, TCP_NODELAY), keep
 * it if accepted(fd) returns 0 (else it is closed), and call ready(fd) when one is readable. */
static inline void serve_forever(int lfd, int (*accepted)(int fd), void (*ready)(int fd)) {
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event events[TOOL_MAX_EVENTS];
    for (;;) {
        int n = epoll_wait(ep, events, TOOL_MAX_EVENTS, -1);
        for (int i = 0; i < n; i++) {
            int fd = events[i].data.fd;
            if (fd != lfd) {
                ready(fd);
                continue;
            }
            for (;;) {
                int c = accept4(lfd, NULL, NULL, SOCK_NONBLOCK);
                if (c < 0)
                    break;
                if (accepted(c) != 0) {
                    close(c);
                    continue;
                }
                int one = 1;
                setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                struct epoll_event cev = {.events = EPOLLIN, .data.fd = c};
                epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
            }
        }
    }
}

#endif
