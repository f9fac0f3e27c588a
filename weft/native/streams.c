/* weft._native: streams and their splice to TCP sockets (windows given back, half-close,
 * reset, the end reported to Python). */
#include "native.h"

Stream *find_stream(Conn *c, uint32_t id) {
    if (c->last && c->last->id == id) return c->last;
    for (int i = 0; i < c->nstreams; i++) {
        if (c->streams[i]->id == id) return c->last = c->streams[i];
    }
    return NULL;
}

Stream *new_stream(Conn *c, uint32_t id) {
    if (c->nstreams == c->cap_streams) {
        int cap = c->cap_streams ? c->cap_streams * 2 : 16;
        Stream **streams = realloc(c->streams, sizeof(Stream *) * cap);
        if (!streams) return NULL;
        c->streams = streams;
        c->cap_streams = cap;
    }
    Stream *s = calloc(1, sizeof(Stream));
    if (!s) return NULL;
    s->id = id;
    s->fd = -1;
    s->send_window = c->peer_initial_window;
    s->recv_window = c->local_stream_window;
    c->streams[c->nstreams++] = s;
    if (c->server && id > c->highest_stream) c->highest_stream = id;
    return s;
}

static void drop_stream(Conn *c, Stream *s) {
    for (int i = 0; i < c->nstreams; i++) {
        if (c->streams[i] == s) {
            c->streams[i] = c->streams[--c->nstreams];
            break;
        }
    }
    if (c->last == s) c->last = NULL;
    if (s->blocked) c->nblocked--;
    buf_free(&s->down);
    buf_free(&s->up);
    free(s);
}

/* Give back window for bytes passed on (or dropped), in batches. */
void credit(Conn *c, Stream *s, uint64_t n) {
    c->conn_unacked += n;
    if (c->conn_unacked >= c->ack_batch) {
        emit_window_update(c, 0, c->conn_unacked);
        c->conn_recv_window += (int64_t)c->conn_unacked;
        c->conn_unacked = 0;
    }
    if (s && !s->remote_end && !s->reset) {
        s->unacked += n;
        if (s->unacked >= c->ack_batch) {
            emit_window_update(c, s->id, s->unacked);
            s->recv_window += (int64_t)s->unacked;
            s->unacked = 0;
        }
    }
}

void abort_fd(int fd) {
    struct linger linger = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
    close(fd);
}

/* Close the stream's socket and tell the owner the stream is finished. s is freed. */
void finish_stream(Conn *c, Stream *s) {
    uint32_t sid = s->id;
    int known = s->known, reset = s->reset;
    uint64_t to_tunnel = s->to_tunnel, from_tunnel = s->from_tunnel;
    /* the connection's share of bytes nobody will read */
    uint64_t dropped = s->down.len;
    stream_set_reading(c, s, 0);
    stream_set_writing(c, s, 0);
    if (s->fd >= 0) {
        if (reset)
            abort_fd(s->fd);
        else
            close(s->fd);
        s->fd = -1;
    }
    s->reset = 1; /* no stream window to give back any more */
    if (dropped) credit(c, NULL, dropped);
    drop_stream(c, s);
    if (known)
        owner_call(c, str_finished,
                   Py_BuildValue("(kKKO)", (unsigned long)sid, (unsigned long long)to_tunnel,
                                 (unsigned long long)from_tunnel, reset ? Py_True : Py_False));
}

static void maybe_finish(Conn *c, Stream *s) {
    if (s->attached && s->eof_told && s->shut_wr && !s->down.len) finish_stream(c, s);
}

/* The TCP side failed: reset it here and the stream (RST_STREAM CONNECT_ERROR). */
static void tcp_failed(Conn *c, uint32_t sid) {
    Stream *s = find_stream(c, sid);
    if (!s || s->reset) return;
    s->reset = 1;
    if (!DEAD(c)) emit_rst(c, sid, E_CONNECT);
    finish_stream(c, s);
}

/* Frame what can be sent of s->up (bytes Python's StreamReader had already read). */
static void drain_up(Conn *c, Stream *s) {
    while (s->up.len && s->send_window > 0 && c->conn_send_window > 0) {
        uint64_t n = s->up.len;
        if ((int64_t)n > s->send_window) n = (uint64_t)s->send_window;
        if ((int64_t)n > c->conn_send_window) n = (uint64_t)c->conn_send_window;
        if (n > c->peer_max_frame) n = c->peer_max_frame;
        unsigned char header[9];
        put_header(header, (uint32_t)n, F_DATA, 0, s->id);
        buf_append(&c->out, header, 9);
        buf_append(&c->out, s->up.data + s->up.off, n);
        buf_consume(&s->up, n);
        s->send_window -= (int64_t)n;
        c->conn_send_window -= (int64_t)n;
        s->to_tunnel += n;
    }
}

/* Read the TCP socket into DATA frames while the windows and the TLS queue allow. Returns 1 if
 * the stream reached EOF (the caller tells the owner once the frames are queued). */
int stream_read_up(Conn *c, Stream *s, int *failed) {
    if (s->up.len) drain_up(c, s);
    for (int round = 0; round < 16; round++) {
        if (s->up.len || s->send_window <= 0 || c->conn_send_window <= 0 ||
            c->out.len >= OUT_HIGH) {
            stream_set_reading(c, s, 0);
            set_blocked(c, s, 1);
            return 0;
        }
        if (s->tcp_eof) {
            stream_set_reading(c, s, 0);
            return !s->eof_told;
        }
        int64_t n = READ_MAX;
        if (n > s->send_window) n = s->send_window;
        if (n > c->conn_send_window) n = c->conn_send_window;
        if (n > c->peer_max_frame) n = c->peer_max_frame;
        if (buf_reserve(&c->out, (size_t)n + 9) < 0) {
            *failed = 1;
            return 0;
        }
        unsigned char *header = (unsigned char *)c->out.data + c->out.off + c->out.len;
        ssize_t r = recv(s->fd, header + 9, (size_t)n, 0);
        if (r > 0) {
            put_header(header, (uint32_t)r, F_DATA, 0, s->id);
            c->out.len += 9 + (size_t)r;
            s->send_window -= r;
            c->conn_send_window -= r;
            s->to_tunnel += (uint64_t)r;
            /* A short read drained the socket, except that a FIN behind the data gives no new
               edge: when epoll saw one, read on to it. */
            if (r < n && !s->rdhup) return 0;
            continue;
        }
        if (r == 0) {
            s->tcp_eof = 1;
            stream_set_reading(c, s, 0);
            return 1;
        }
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
        *failed = 1;
        return 0;
    }
    /* more to read, and no new edge will say so: go on from resume_blocked() */
    stream_set_reading(c, s, 0);
    set_blocked(c, s, 1);
    return 0;
}

/* Read what the socket holds now (reading resumed, or an edge): EOF and failures are acted on
 * by run_checks(). */
void stream_read_now(Conn *c, Stream *s) {
    int failed = 0;
    int eof = stream_read_up(c, s, &failed);
    if (failed) {
        s->reset_pending = 1;
        s->check = 1;
    } else if (eof) {
        s->check = 1;
    }
}

/* The TCP side sent FIN and every byte before it is queued: END_STREAM. */
static void tell_eof(Conn *c, uint32_t sid) {
    Stream *s = find_stream(c, sid);
    if (!s || s->eof_told || s->reset) return;
    s->eof_told = 1;
    if (!DEAD(c)) emit_frame(c, F_DATA, FLAG_END_STREAM, sid, NULL, 0);
    maybe_finish(c, s);
}

void resume_blocked(Conn *c) {
    if (!c->nblocked || c->out.len >= OUT_LOW || c->conn_send_window <= 0) return;
    for (int i = 0; i < c->nstreams; i++) {
        Stream *s = c->streams[i];
        if (!s->blocked || s->send_window <= 0) continue;
        set_blocked(c, s, 0);
        if (s->up.len) drain_up(c, s);
        if (s->up.len) {
            set_blocked(c, s, 1);
            continue;
        }
        if (s->tcp_eof) {
            s->check = 1; /* tell_eof after the loop */
        } else if (!s->reset) {
            stream_set_reading(c, s, 1);
            stream_read_now(c, s); /* edges that came while it was blocked were not acted on */
        }
    }
}

/* Streams marked `check` (EOF to tell, a failed write, a finished stream), outside any loop
 * over the stream table: the owner's callbacks may change it. */
void run_checks(Conn *c) {
    for (;;) {
        Stream *s = NULL;
        for (int i = 0; i < c->nstreams; i++) {
            if (c->streams[i]->check) {
                s = c->streams[i];
                break;
            }
        }
        if (!s) return;
        s->check = 0;
        uint32_t sid = s->id;
        if (s->refused) { /* above the peer's GOAWAY: never served, so retryable */
            if (s->awaiting) {
                s->awaiting = 0;
                owner_call(c, str_response, Py_BuildValue("(kik)", (unsigned long)sid, 0,
                                                          (unsigned long)E_REFUSED));
                if (!(s = find_stream(c, sid))) continue;
            }
            s->reset = 1;
            finish_stream(c, s);
            continue;
        }
        if (s->reset_pending) {
            s->reset_pending = 0;
            tcp_failed(c, sid);
            continue;
        }
        if (s->tcp_eof && !s->eof_told && !s->up.len) {
            tell_eof(c, sid);
            continue;
        }
        maybe_finish(c, s);
    }
}

/* Everything from the tunnel is written to the socket: half-close it (FIN), or, when its own
 * direction has ended too (FIN read, END_STREAM sent), leave the FIN to the close() that
 * finishes the stream: one system call less per connection. */
void write_side_done(Stream *s) {
    s->shut_wr = 1;
    s->check = 1;
    if (!(s->tcp_eof && s->eof_told)) shutdown(s->fd, SHUT_WR);
}

/* The peer ended its direction of the stream (END_STREAM). */
void remote_ended(Conn *c, Stream *s) {
    if (s->remote_end) return;
    s->remote_end = 1;
    if (s->attached && !s->down.len && !s->reset_pending && !s->shut_wr) write_side_done(s);
}

/* A stream error (RFC 9113 5.4.2): RST_STREAM with `code`, and the stream is gone here. */
void stream_error(Conn *c, Stream *s, uint32_t code) {
    emit_rst(c, s->id, code);
    s->reset = 1;
    finish_stream(c, s);
}

void deliver(Conn *c, Stream *s, const char *data, size_t len) {
    s->from_tunnel += len;
    if (!len) return;
    if (!s->attached || s->down.len) {
        buf_append(&s->down, data, len);
        return;
    }
    /* write straight from the inbound buffer; only a remainder is copied */
    size_t written = 0;
    while (written < len) {
        ssize_t r = send(s->fd, data + written, len - written, MSG_NOSIGNAL);
        if (r > 0) {
            written += (size_t)r;
        } else if (r < 0 && errno == EINTR) {
            continue;
        } else if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            break;
        } else {
            s->reset_pending = 1;
            s->check = 1;
            credit(c, NULL, len - written);
            if (written) credit(c, s, written);
            return;
        }
    }
    if (written) credit(c, s, written);
    if (written < len) {
        buf_append(&s->down, data + written, len - written);
        stream_set_writing(c, s, 1);
    }
}

/* Splice s to the TCP socket fd (owned from now on), with what was already read of it;
 * `nodelay_set`: fd has TCP_NODELAY already (inherited from its listener), no setsockopt. */
int attach_common(Conn *c, Stream *s, int fd, const char *buffered, size_t len, int eof,
                  int nodelay_set) {
    if (buf_append(&s->up, buffered, len) < 0) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    s->attached = 1;
    s->tcp_eof = eof ? 1 : 0;
    if (!nodelay_set) {
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    }
    /* what the tunnel sent before the attach */
    if (s->down.len) {
        Buf held = s->down;
        memset(&s->down, 0, sizeof(Buf));
        deliver(c, s, held.data + held.off, held.len);
        s->from_tunnel -= held.len; /* counted when it arrived */
        buf_free(&held);
    }
    if (s->remote_end && !s->down.len && !s->reset_pending && !s->shut_wr) write_side_done(s);
    if (s->up.len) drain_up(c, s);
    if (s->up.len) {
        set_blocked(c, s, 1);
    } else if (!s->tcp_eof) {
        stream_set_reading(c, s, 1);
        /* A client's socket, attached as accepted, usually holds its first message already:
           read it now (its DATA leaves in the same TLS write as the HEADERS before it). A
           server's socket was just connected to a workload that has not spoken yet: that
           read would only find EAGAIN (a system call per connection for nothing). */
        if (!c->server) {
            int read_failed = 0;
            stream_read_up(c, s, &read_failed);
            if (read_failed) s->reset_pending = 1;
        }
    }
    s->check = 1;
    return 0;
}

/* room(): how many more streams open() takes now (0 once either side sent GOAWAY). */
long room(Conn *c) {
    if (c->server || DEAD(c) || c->closing || c->goaway_sent || c->goaway_received ||
        c->draining || c->next_stream > MAX_STREAM_ID - 2)
        return 0;
    uint32_t limit = c->peer_max_streams < c->local_max_streams ? c->peer_max_streams
                                                                : c->local_max_streams;
    return (long)limit > c->nstreams ? (long)limit - c->nstreams : 0;
}
