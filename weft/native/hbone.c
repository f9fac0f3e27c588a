/* weft._native: the compiled HBONE data path of one TLS connection (see weft/native/README.md).
 *
 * C owns the TLS connection's I/O (an SSL* made from the SSL_CTX of a weft.tls ssl.SSLContext),
 * the HTTP/2 framing, every DATA frame, both flow-control windows in both directions, and the
 * splice of each stream to its TCP socket. Python (h2, through weft.hbone.native_session) keeps
 * everything else: C hands it the bytes of every other frame, and sends the bytes h2 wants to
 * send through this object's single TLS write queue, so frame order is kept.
 *
 * Everything runs on the event loop thread with the GIL held; the loop calls the _tls_* and
 * _tcp_* methods when a socket is ready. Any call into Python (the owner's callbacks) may call
 * back into this object, so no Stream pointer is kept across one: streams are looked up again.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* CPython 3.11's _ssl._SSLContext begins with the SSL_CTX pointer (Modules/_ssl.c). */
typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} PySSLContextHead;

enum { F_DATA = 0, F_HEADERS = 1, F_PRIORITY = 2, F_RST = 3, F_SETTINGS = 4, F_PUSH = 5,
       F_PING = 6, F_GOAWAY = 7, F_WINDOW_UPDATE = 8, F_CONTINUATION = 9 };
enum { FLAG_END_STREAM = 0x1, FLAG_END_HEADERS = 0x4, FLAG_PADDED = 0x8, FLAG_ACK = 0x1 };
enum { E_PROTOCOL = 0x1, E_INTERNAL = 0x2, E_FLOW_CONTROL = 0x3, E_FRAME_SIZE = 0x6 };

#define WEFT_NATIVE_API_VERSION 1
#define MAX_WINDOW 0x7fffffffLL
#define PREFACE_LEN 24
#define READ_MAX (256 * 1024)      /* one TCP read: one DATA frame (if the peer allows it) */
#define OUT_HIGH (1024 * 1024)     /* stop reading TCP above this many unsent TLS bytes */
#define OUT_LOW (256 * 1024)       /* ... and resume below this */
#define TLS_READ_CHUNK (64 * 1024) /* room kept free in the inbound buffer for one SSL_read */
#define MAX_HELD_STREAMS 256       /* server: streams opened by HEADERS that Python has not seen */

/* ---- buffers ------------------------------------------------------------------------------ */

typedef struct {
    char *data;
    size_t off, len, cap; /* the bytes are data[off, off + len) */
} Buf;

static int buf_reserve(Buf *b, size_t extra) {
    if (b->off + b->len + extra <= b->cap) return 0;
    if (b->off && b->len + extra <= b->cap) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
        return 0;
    }
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + extra) cap *= 2;
    if (b->off) {
        memmove(b->data, b->data + b->off, b->len);
        b->off = 0;
    }
    char *data = realloc(b->data, cap);
    if (!data) return -1;
    b->data = data;
    b->cap = cap;
    return 0;
}

static int buf_append(Buf *b, const void *src, size_t n) {
    if (!n) return 0; /* src may be NULL then (an empty Py_buffer) */
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->off + b->len, src, n);
    b->len += n;
    return 0;
}

static void buf_consume(Buf *b, size_t n) {
    b->off += n;
    b->len -= n;
    if (!b->len) b->off = 0;
}

static void buf_free(Buf *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Give memory back once a burst is over (a 4 MiB backlog must not stay allocated). */
static void buf_shrink(Buf *b) {
    if (!b->len && b->cap > 1024 * 1024) buf_free(b);
}

static void put_header(unsigned char *p, uint32_t len, int type, int flags, uint32_t sid) {
    p[0] = (unsigned char)(len >> 16);
    p[1] = (unsigned char)(len >> 8);
    p[2] = (unsigned char)len;
    p[3] = (unsigned char)type;
    p[4] = (unsigned char)flags;
    p[5] = (unsigned char)(sid >> 24) & 0x7f;
    p[6] = (unsigned char)(sid >> 16);
    p[7] = (unsigned char)(sid >> 8);
    p[8] = (unsigned char)sid;
}

static uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

/* ---- streams ------------------------------------------------------------------------------ */

typedef struct {
    uint32_t id;
    int fd;                 /* the workload's TCP socket, -1 until attached */
    int64_t send_window;    /* what the peer lets us send on this stream */
    int64_t recv_window;    /* what we let the peer send */
    uint64_t unacked;       /* passed on to the TCP socket, not yet given back by WINDOW_UPDATE */
    Buf down;               /* from the tunnel, not yet written to fd (held until attached) */
    Buf up;                 /* from TCP (attach's buffered bytes), not yet framed */
    uint64_t to_tunnel, from_tunnel;
    unsigned reading : 1, writing : 1, blocked : 1, tcp_eof : 1, eof_told : 1,
        remote_end : 1, shut_wr : 1, reset : 1, reset_pending : 1, attached : 1, check : 1;
} Stream;

/* ---- the connection ------------------------------------------------------------------------ */

typedef struct {
    PyObject_HEAD
    SSL *ssl;
    int fd;
    int server;
    PyObject *loop, *owner;
    PyObject *cb_tls_readable, *cb_tls_writable, *cb_tcp_readable, *cb_tcp_writable;
    PyObject *fd_obj;
    int tls_reading, tls_writing, started;
    Buf in, out, ctrl;
    int preface_left;
    int in_headers; /* a HEADERS block without END_HEADERS: everything goes to h2 until it ends */
    int64_t conn_send_window, conn_recv_window;
    uint64_t conn_unacked;
    int64_t peer_initial_window;
    uint32_t peer_max_frame;
    uint32_t local_stream_window, local_max_frame;
    uint64_t ack_batch;
    uint32_t highest_stream;
    Stream **streams;
    int nstreams, cap_streams, nblocked;
    Stream *last;
    int in_callback;      /* > 0 while a loop callback runs: send() leaves the flush to it */
    int closing, torn_down, lost;
    int error_code;       /* a connection error found while parsing, reported after it */
    int errored;          /* ... and reported: nothing more is parsed */
    int read_wants_write; /* SSL_read needs the socket writable (a TLS KeyUpdate, say) */
    char error_reason[160];
    char lost_reason[200];
    int lost_pending;
} Conn;

#define DEAD(c) ((c)->lost || (c)->lost_pending || (c)->torn_down)

static PyObject *str_add_reader, *str_remove_reader, *str_add_writer, *str_remove_writer;
static PyObject *str_frames, *str_error, *str_lost, *str_tcp_eof, *str_tcp_reset, *str_finished;
static PyTypeObject *ssl_context_type;

static Stream *find_stream(Conn *c, uint32_t id) {
    if (c->last && c->last->id == id) return c->last;
    for (int i = 0; i < c->nstreams; i++) {
        if (c->streams[i]->id == id) return c->last = c->streams[i];
    }
    return NULL;
}

static Stream *new_stream(Conn *c, uint32_t id) {
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
    if (id > c->highest_stream) c->highest_stream = id;
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

/* ---- calls into the loop and the owner ------------------------------------------------------ */

static void report_unraisable(const char *where) {
    if (PyErr_Occurred()) {
        PyObject *context = PyUnicode_FromString(where);
        PyErr_WriteUnraisable(context);
        Py_XDECREF(context);
    }
}

static void loop_call(Conn *c, PyObject *method, int fd, PyObject *cb, uint32_t sid) {
    PyObject *fd_obj = PyLong_FromLong(fd);
    PyObject *result = NULL;
    if (fd_obj) {
        if (cb == NULL) {
            result = PyObject_CallMethodObjArgs(c->loop, method, fd_obj, NULL);
        } else {
            PyObject *sid_obj = PyLong_FromUnsignedLong(sid);
            if (sid_obj) {
                result = PyObject_CallMethodObjArgs(c->loop, method, fd_obj, cb, sid_obj, NULL);
                Py_DECREF(sid_obj);
            }
        }
        Py_DECREF(fd_obj);
    }
    if (!result) report_unraisable("weft._native: event loop registration");
    Py_XDECREF(result);
}

static void owner_call(Conn *c, PyObject *method, PyObject *args) {
    /* args is a new reference (or NULL after a failed build) */
    if (!args || !c->owner) {
        Py_XDECREF(args);
        report_unraisable("weft._native: owner callback");
        return;
    }
    PyObject *fn = PyObject_GetAttr(c->owner, method);
    PyObject *result = fn ? PyObject_Call(fn, args, NULL) : NULL;
    Py_XDECREF(fn);
    Py_DECREF(args);
    if (!result) report_unraisable("weft._native: owner callback");
    Py_XDECREF(result);
}

static void stream_set_reading(Conn *c, Stream *s, int on) {
    if (s->fd < 0 || s->reading == on) return;
    s->reading = on;
    if (on)
        loop_call(c, str_add_reader, s->fd, c->cb_tcp_readable, s->id);
    else
        loop_call(c, str_remove_reader, s->fd, NULL, 0);
}

static void stream_set_writing(Conn *c, Stream *s, int on) {
    if (s->fd < 0 || s->writing == on) return;
    s->writing = on;
    if (on)
        loop_call(c, str_add_writer, s->fd, c->cb_tcp_writable, s->id);
    else
        loop_call(c, str_remove_writer, s->fd, NULL, 0);
}

static void set_blocked(Conn *c, Stream *s, int on) {
    if (s->blocked == on) return;
    s->blocked = on;
    c->nblocked += on ? 1 : -1;
}

static void tls_set_writing(Conn *c, int on) {
    if (c->fd < 0 || c->tls_writing == on) return;
    c->tls_writing = on;
    if (on) {
        PyObject *r = PyObject_CallMethodObjArgs(c->loop, str_add_writer, c->fd_obj,
                                                 c->cb_tls_writable, NULL);
        if (!r) report_unraisable("weft._native: add_writer");
        Py_XDECREF(r);
    } else {
        PyObject *r = PyObject_CallMethodObjArgs(c->loop, str_remove_writer, c->fd_obj, NULL);
        if (!r) report_unraisable("weft._native: remove_writer");
        Py_XDECREF(r);
    }
}

static void tls_set_reading(Conn *c, int on) {
    if (c->fd < 0 || c->tls_reading == on) return;
    c->tls_reading = on;
    PyObject *r = on ? PyObject_CallMethodObjArgs(c->loop, str_add_reader, c->fd_obj,
                                                  c->cb_tls_readable, NULL)
                     : PyObject_CallMethodObjArgs(c->loop, str_remove_reader, c->fd_obj, NULL);
    if (!r) report_unraisable("weft._native: add_reader");
    Py_XDECREF(r);
}

/* ---- outbound frames ------------------------------------------------------------------------ */

static void emit_window_update(Conn *c, uint32_t sid, uint64_t increment) {
    unsigned char frame[13];
    put_header(frame, 4, F_WINDOW_UPDATE, 0, sid);
    frame[9] = (unsigned char)(increment >> 24) & 0x7f;
    frame[10] = (unsigned char)(increment >> 16);
    frame[11] = (unsigned char)(increment >> 8);
    frame[12] = (unsigned char)increment;
    buf_append(&c->out, frame, sizeof(frame));
}

/* Give back window for bytes passed on (or dropped), in batches. */
static void credit(Conn *c, Stream *s, uint64_t n) {
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

static void conn_lost(Conn *c, const char *reason);

static void tls_flush(Conn *c) {
    if (c->fd < 0 || DEAD(c) || !c->started) return;
    while (c->out.len) {
        size_t n = c->out.len > INT_MAX ? INT_MAX : c->out.len;
        ERR_clear_error();
        int r = SSL_write(c->ssl, c->out.data + c->out.off, (int)n);
        if (r > 0) {
            buf_consume(&c->out, (size_t)r);
            continue;
        }
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_WRITE || err == SSL_ERROR_WANT_READ) {
            tls_set_writing(c, 1);
            return;
        }
        char reason[160];
        unsigned long code = ERR_peek_last_error();
        if (code)
            ERR_error_string_n(code, reason, sizeof(reason));
        else
            snprintf(reason, sizeof(reason), "TLS write failed: %s", strerror(errno));
        conn_lost(c, reason);
        return;
    }
    buf_shrink(&c->out);
    tls_set_writing(c, 0);
}

/* ---- the TCP side of a stream ------------------------------------------------------------------ */

static void abort_fd(int fd) {
    struct linger linger = {1, 0};
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, sizeof(linger));
    close(fd);
}

/* Close the stream's socket and tell the owner the stream is finished. s is freed. */
static void finish_stream(Conn *c, Stream *s) {
    uint32_t sid = s->id;
    int attached = s->attached, reset = s->reset;
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
    if (attached)
        owner_call(c, str_finished,
                   Py_BuildValue("(kKKO)", (unsigned long)sid, (unsigned long long)to_tunnel,
                                 (unsigned long long)from_tunnel, reset ? Py_True : Py_False));
}

static void maybe_finish(Conn *c, Stream *s) {
    if (s->attached && s->eof_told && s->shut_wr && !s->down.len) finish_stream(c, s);
}

/* The TCP side failed: reset it here, then have h2 reset the stream (RST_STREAM). */
static void tcp_failed(Conn *c, uint32_t sid) {
    Stream *s = find_stream(c, sid);
    if (!s || s->reset) return;
    s->reset = 1;
    s->down.len = 0;
    owner_call(c, str_tcp_reset, Py_BuildValue("(k)", (unsigned long)sid));
    if ((s = find_stream(c, sid)) != NULL) finish_stream(c, s);
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
static int stream_read_up(Conn *c, Stream *s, int *failed) {
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
            if (r < n) return 0;
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
    return 0;
}

/* The TCP side sent FIN and every byte before it is queued: h2 ends the stream (END_STREAM). */
static void tell_eof(Conn *c, uint32_t sid) {
    Stream *s = find_stream(c, sid);
    if (!s || s->eof_told || s->reset) return;
    s->eof_told = 1;
    owner_call(c, str_tcp_eof, Py_BuildValue("(k)", (unsigned long)sid));
    if ((s = find_stream(c, sid)) != NULL) maybe_finish(c, s);
}

static void resume_blocked(Conn *c) {
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
        }
    }
}

/* Streams marked `check` (EOF to tell, a failed write, a finished stream), outside any loop
 * over the stream table: the owner's callbacks may change it. */
static void run_checks(Conn *c) {
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

/* ---- the TLS side: parsing what the peer sent ------------------------------------------------ */

static void conn_error(Conn *c, int code, const char *reason) {
    if (c->error_code || c->errored) return;
    c->error_code = code;
    snprintf(c->error_reason, sizeof(c->error_reason), "%s", reason);
}

static void to_h2(Conn *c, const unsigned char *frame, size_t len) {
    buf_append(&c->ctrl, frame, len);
}

static void deliver(Conn *c, Stream *s, const char *data, size_t len) {
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

static void on_data_frame(Conn *c, const unsigned char *frame, uint32_t len, int flags,
                          uint32_t sid) {
    const unsigned char *payload = frame + 9;
    uint32_t pad = 0, offset = 0;
    if (!sid) {
        to_h2(c, frame, 9 + len); /* h2 answers PROTOCOL_ERROR */
        return;
    }
    if (flags & FLAG_PADDED) {
        if (len < 1 || payload[0] >= len) {
            to_h2(c, frame, 9 + len);
            return;
        }
        pad = payload[0];
        offset = 1;
    }
    Stream *s = find_stream(c, sid);
    if (!s && sid > c->highest_stream) {
        to_h2(c, frame, 9 + len); /* an idle stream: h2 answers PROTOCOL_ERROR */
        return;
    }
    if ((int64_t)len > c->conn_recv_window) {
        conn_error(c, E_FLOW_CONTROL, "DATA beyond the connection's flow-control window");
        return;
    }
    c->conn_recv_window -= len;
    if (!s || s->reset || s->remote_end) {
        /* a stream already closed here (e.g. reset while the peer was sending): drop */
        credit(c, NULL, len);
        return;
    }
    if ((int64_t)len > s->recv_window) {
        conn_error(c, E_FLOW_CONTROL, "DATA beyond the stream's flow-control window");
        return;
    }
    s->recv_window -= len;
    uint32_t data_len = len - offset - pad;
    if (offset + pad) credit(c, s, offset + pad);
    deliver(c, s, (const char *)payload + offset, data_len);
    if (flags & FLAG_END_STREAM) {
        s->remote_end = 1;
        unsigned char end[9];
        put_header(end, 0, F_DATA, FLAG_END_STREAM, sid); /* for h2's state machine */
        to_h2(c, end, 9);
        if (s->attached && !s->down.len && !s->reset_pending) {
            shutdown(s->fd, SHUT_WR);
            s->shut_wr = 1;
            s->check = 1;
        }
    }
}

static void on_window_update(Conn *c, const unsigned char *frame, uint32_t len, uint32_t sid) {
    if (len != 4) {
        conn_error(c, E_FRAME_SIZE, "WINDOW_UPDATE frame is not 4 bytes long");
        return;
    }
    int64_t increment = be32(frame + 9) & 0x7fffffff;
    if (!increment) {
        to_h2(c, frame, 13); /* h2 answers PROTOCOL_ERROR */
        return;
    }
    if (!sid) {
        c->conn_send_window += increment;
        if (c->conn_send_window > MAX_WINDOW)
            conn_error(c, E_FLOW_CONTROL, "WINDOW_UPDATE overflowed the connection window");
        return;
    }
    Stream *s = find_stream(c, sid);
    if (!s) return; /* closed streams may still get WINDOW_UPDATE */
    s->send_window += increment;
    if (s->send_window > MAX_WINDOW)
        conn_error(c, E_FLOW_CONTROL, "WINDOW_UPDATE overflowed a stream window");
}

static void on_settings(Conn *c, const unsigned char *frame, uint32_t len, int flags) {
    to_h2(c, frame, 9 + len); /* h2 validates, records and acknowledges them */
    if ((flags & FLAG_ACK) || len % 6) return;
    for (uint32_t i = 0; i < len; i += 6) {
        const unsigned char *p = frame + 9 + i;
        unsigned id = ((unsigned)p[0] << 8) | p[1];
        uint32_t value = be32(p + 2);
        if (id == 0x4 && value <= MAX_WINDOW) {
            int64_t delta = (int64_t)value - c->peer_initial_window;
            c->peer_initial_window = value;
            for (int k = 0; k < c->nstreams; k++) c->streams[k]->send_window += delta;
        } else if (id == 0x5 && value >= 16384 && value <= 16777215) {
            c->peer_max_frame = value;
        }
    }
}

/* Cut the inbound bytes into frames. Stops at the first connection error. */
static void parse(Conn *c) {
    const unsigned char *p = (const unsigned char *)c->in.data + c->in.off;
    size_t avail = c->in.len, used = 0;
    if (c->preface_left) {
        size_t n = avail < (size_t)c->preface_left ? avail : (size_t)c->preface_left;
        to_h2(c, p, n); /* h2 checks the client preface */
        c->preface_left -= (int)n;
        used += n;
    }
    while (!c->error_code && !c->errored && avail - used >= 9) {
        const unsigned char *frame = p + used;
        uint32_t len = ((uint32_t)frame[0] << 16) | ((uint32_t)frame[1] << 8) | frame[2];
        int type = frame[3], flags = frame[4];
        uint32_t sid = be32(frame + 5) & 0x7fffffff;
        if (len > c->local_max_frame) {
            conn_error(c, E_FRAME_SIZE, "frame longer than SETTINGS_MAX_FRAME_SIZE");
            break;
        }
        if (avail - used < 9 + (size_t)len) break;
        used += 9 + len;
        if (c->in_headers) {
            to_h2(c, frame, 9 + len);
            if (type == F_CONTINUATION && (flags & FLAG_END_HEADERS)) c->in_headers = 0;
            continue;
        }
        switch (type) {
        case F_DATA:
            on_data_frame(c, frame, len, flags, sid);
            break;
        case F_WINDOW_UPDATE:
            on_window_update(c, frame, len, sid);
            break;
        case F_SETTINGS:
            on_settings(c, frame, len, flags);
            break;
        case F_HEADERS:
        case F_PUSH:
            if (!(flags & FLAG_END_HEADERS)) c->in_headers = 1;
            /* A server holds DATA for a stream h2 is about to report, until Python attaches
             * it (or forgets it). */
            if (type == F_HEADERS && c->server && sid > c->highest_stream && (sid & 1) &&
                c->nstreams < MAX_HELD_STREAMS)
                new_stream(c, sid);
            to_h2(c, frame, 9 + len);
            break;
        default:
            to_h2(c, frame, 9 + len);
        }
    }
    buf_consume(&c->in, used);
}

/* ---- teardown -------------------------------------------------------------------------------- */

static void teardown(Conn *c) {
    if (c->torn_down) return;
    /* our own close (not after a TLS error, when OpenSSL forbids it): send close_notify, best
     * effort, so the peer sees a clean end */
    int graceful = c->started && !c->lost && !c->lost_pending && c->fd >= 0;
    c->torn_down = 1;
    c->lost = 1;
    tls_set_reading(c, 0);
    tls_set_writing(c, 0);
    if (graceful) {
        ERR_clear_error();
        SSL_shutdown(c->ssl);
        ERR_clear_error();
    }
    if (c->fd >= 0) {
        close(c->fd);
        c->fd = -1;
    }
    while (c->nstreams) {
        Stream *s = c->streams[c->nstreams - 1];
        s->reset = 1;
        finish_stream(c, s);
    }
    /* the owner's connection_lost(): once, whatever ended the connection */
    owner_call(c, str_lost, Py_BuildValue("(s)", c->lost_reason));
}

static void conn_lost(Conn *c, const char *reason) {
    if (c->lost || c->lost_pending) return;
    snprintf(c->lost_reason, sizeof(c->lost_reason), "%s", reason ? reason : "");
    c->lost_pending = 1;
    tls_set_reading(c, 0);
    tls_set_writing(c, 0);
}

/* After a loop callback: hand h2 its frames, report errors and loss, finish streams, flush. */
static void after_callback(Conn *c) {
    if (c->ctrl.len && c->owner) {
        PyObject *bytes = PyBytes_FromStringAndSize(c->ctrl.data + c->ctrl.off, c->ctrl.len);
        c->ctrl.len = 0;
        c->ctrl.off = 0;
        buf_shrink(&c->ctrl);
        owner_call(c, str_frames, bytes ? PyTuple_Pack(1, bytes) : NULL);
        Py_XDECREF(bytes);
    }
    if (c->error_code && !DEAD(c)) {
        int code = c->error_code;
        c->error_code = 0;
        tls_set_reading(c, 0); /* nothing more is parsed; h2 sends GOAWAY */
        c->in.len = 0;
        c->errored = 1;
        owner_call(c, str_error, Py_BuildValue("(is)", code, c->error_reason));
    }
    run_checks(c);
    tls_flush(c); /* first, so that a drained queue lets blocked streams resume */
    resume_blocked(c);
    run_checks(c);
    tls_flush(c);
    if (c->lost_pending) {
        c->lost_pending = 0;
        teardown(c);
    } else if (c->closing && !c->out.len) {
        teardown(c);
    }
}

/* ---- methods ----------------------------------------------------------------------------------- */

static int Conn_init(Conn *c, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"context", "fd", "server_side", "loop", "owner",
                             "stream_window", "connection_window", "max_frame_size", NULL};
    PyObject *context, *loop, *owner;
    int fd, server;
    unsigned int stream_window, connection_window, max_frame;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OipOOIII", kwlist, &context, &fd, &server,
                                     &loop, &owner, &stream_window, &connection_window,
                                     &max_frame))
        return -1;
    if (c->ssl) {
        PyErr_SetString(PyExc_RuntimeError, "Connection.__init__ called twice");
        return -1;
    }
    if (!PyObject_TypeCheck(context, ssl_context_type)) {
        PyErr_SetString(PyExc_TypeError, "context must be an ssl.SSLContext");
        return -1;
    }
    SSL_CTX *ctx = ((PySSLContextHead *)context)->ctx;
    /* The struct layout is CPython's, not an API: check it against what Python reports. */
    PyObject *verify = PyObject_GetAttrString(context, "verify_mode");
    if (!verify) return -1;
    long python_mode = PyLong_AsLong(verify);
    Py_DECREF(verify);
    int expected = python_mode == 2   ? (SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT)
                   : python_mode == 1 ? SSL_VERIFY_PEER
                                      : SSL_VERIFY_NONE;
    if (!ctx || SSL_CTX_get_verify_mode(ctx) != expected) {
        PyErr_SetString(PyExc_RuntimeError,
                        "weft._native cannot read this Python's ssl.SSLContext (its layout is "
                        "not CPython 3.11's); use the python data path");
        return -1;
    }
    if (stream_window < 65535 || connection_window < 65535 || stream_window > MAX_WINDOW ||
        connection_window > MAX_WINDOW || max_frame < 16384 || max_frame > 16777215) {
        PyErr_SetString(PyExc_ValueError, "window or frame size outside RFC 9113's limits");
        return -1;
    }
    c->ssl = SSL_new(ctx);
    if (!c->ssl) {
        PyErr_SetString(PyExc_MemoryError, "SSL_new failed");
        return -1;
    }
    SSL_set_mode(c->ssl, SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER | SSL_MODE_AUTO_RETRY);
    if (!SSL_set_fd(c->ssl, fd)) {
        PyErr_SetString(PyExc_OSError, "SSL_set_fd failed");
        return -1;
    }
    if (server)
        SSL_set_accept_state(c->ssl);
    else
        SSL_set_connect_state(c->ssl);
    c->fd = fd;
    c->fd_obj = PyLong_FromLong(fd);
    c->server = server;
    Py_INCREF(loop);
    c->loop = loop;
    Py_INCREF(owner);
    c->owner = owner;
    c->cb_tls_readable = PyObject_GetAttrString((PyObject *)c, "_tls_readable");
    c->cb_tls_writable = PyObject_GetAttrString((PyObject *)c, "_tls_writable");
    c->cb_tcp_readable = PyObject_GetAttrString((PyObject *)c, "_tcp_readable");
    c->cb_tcp_writable = PyObject_GetAttrString((PyObject *)c, "_tcp_writable");
    if (!c->fd_obj || !c->cb_tls_readable || !c->cb_tls_writable || !c->cb_tcp_readable ||
        !c->cb_tcp_writable)
        return -1;
    c->preface_left = server ? PREFACE_LEN : 0;
    c->conn_send_window = 65535;
    c->peer_initial_window = 65535;
    c->peer_max_frame = 16384;
    c->conn_recv_window = connection_window;
    c->local_stream_window = stream_window;
    c->local_max_frame = max_frame;
    /* as relay.ACK_BATCH: small enough that idle streams holding unacknowledged bytes never use
     * up the connection window */
    uint64_t batch = 64 * 1024;
    if (batch > stream_window / 4) batch = stream_window / 4;
    if (batch > connection_window / 200) batch = connection_window / 200;
    if (batch < 1) batch = 1;
    c->ack_batch = batch;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    return 0;
}

static PyObject *tls_error(Conn *c, int r, const char *what) {
    int err = SSL_get_error(c->ssl, r);
    unsigned long code = ERR_get_error();
    char reason[256];
    if (code) {
        ERR_error_string_n(code, reason, sizeof(reason));
    } else if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && errno == 0)) {
        snprintf(reason, sizeof(reason), "the peer closed the connection");
    } else {
        snprintf(reason, sizeof(reason), "%s", strerror(errno));
    }
    long verify = SSL_get_verify_result(c->ssl);
    if (verify != X509_V_OK)
        PyErr_Format(PyExc_ConnectionError, "%s failed: %s (certificate: %s)", what, reason,
                     X509_verify_cert_error_string(verify));
    else
        PyErr_Format(PyExc_ConnectionError, "%s failed: %s", what, reason);
    ERR_clear_error();
    return NULL;
}

/* handshake() -> 0 done, 1 wants the socket readable, 2 writable; ConnectionError on failure */
static PyObject *Conn_handshake(Conn *c, PyObject *unused) {
    if (!c->ssl || c->fd < 0) {
        PyErr_SetString(PyExc_ConnectionError, "the connection is closed");
        return NULL;
    }
    ERR_clear_error();
    int r = SSL_do_handshake(c->ssl);
    if (r == 1) return PyLong_FromLong(0);
    int err = SSL_get_error(c->ssl, r);
    if (err == SSL_ERROR_WANT_READ) return PyLong_FromLong(1);
    if (err == SSL_ERROR_WANT_WRITE) return PyLong_FromLong(2);
    return tls_error(c, r, "TLS handshake");
}

static PyObject *Conn_peer_certificate(Conn *c, PyObject *unused) {
    if (!c->ssl) Py_RETURN_NONE;
    X509 *cert = SSL_get1_peer_certificate(c->ssl);
    if (!cert || SSL_get_verify_result(c->ssl) != X509_V_OK) {
        X509_free(cert);
        Py_RETURN_NONE;
    }
    unsigned char *der = NULL;
    int len = i2d_X509(cert, &der);
    X509_free(cert);
    if (len < 0) Py_RETURN_NONE;
    PyObject *result = PyBytes_FromStringAndSize((char *)der, len);
    OPENSSL_free(der);
    return result;
}

static PyObject *Conn_alpn(Conn *c, PyObject *unused) {
    const unsigned char *protocol = NULL;
    unsigned int len = 0;
    if (c->ssl) SSL_get0_alpn_selected(c->ssl, &protocol, &len);
    if (!protocol || !len) Py_RETURN_NONE;
    return PyUnicode_DecodeASCII((const char *)protocol, len, "replace");
}

static PyObject *Conn_start(Conn *c, PyObject *unused) {
    if (c->started || c->torn_down) Py_RETURN_NONE;
    c->started = 1;
    tls_set_reading(c, 1);
    c->in_callback++;
    /* the handshake may have read records already (e.g. the client's first frames) */
    PyObject *r = PyObject_CallMethod((PyObject *)c, "_tls_readable", NULL);
    c->in_callback--;
    if (!r) return NULL;
    Py_DECREF(r);
    Py_RETURN_NONE;
}

static void tls_read(Conn *c) {
    c->read_wants_write = 0;
    for (;;) {
        if (c->error_code || c->errored) break;
        if (buf_reserve(&c->in, TLS_READ_CHUNK) < 0) {
            conn_lost(c, "out of memory");
            break;
        }
        size_t room = c->in.cap - c->in.off - c->in.len;
        ERR_clear_error();
        int r = SSL_read(c->ssl, c->in.data + c->in.off + c->in.len, (int)room);
        if (r > 0) {
            c->in.len += (size_t)r;
            parse(c);
            continue;
        }
        int err = SSL_get_error(c->ssl, r);
        if (err == SSL_ERROR_WANT_READ) break;
        if (err == SSL_ERROR_WANT_WRITE) {
            c->read_wants_write = 1;
            tls_set_writing(c, 1);
            break;
        }
        char reason[200];
        unsigned long code = ERR_peek_last_error();
        if (err == SSL_ERROR_ZERO_RETURN || (err == SSL_ERROR_SYSCALL && !code && !errno))
            snprintf(reason, sizeof(reason), "the peer closed the TLS connection");
        else if (code)
            ERR_error_string_n(code, reason, sizeof(reason));
        else
            snprintf(reason, sizeof(reason), "TLS read failed: %s", strerror(errno));
        conn_lost(c, reason);
        break;
    }
    if (c->in.len == 0) buf_shrink(&c->in);
}

static PyObject *Conn_tls_readable(Conn *c, PyObject *unused) {
    if (DEAD(c) || !c->started) Py_RETURN_NONE;
    Py_INCREF(c);
    c->in_callback++;
    tls_read(c);
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_tls_writable(Conn *c, PyObject *unused) {
    if (DEAD(c)) Py_RETURN_NONE;
    Py_INCREF(c);
    c->in_callback++;
    tls_flush(c);
    if (!DEAD(c) && c->read_wants_write) tls_read(c);
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_tcp_readable(Conn *c, PyObject *arg) {
    uint32_t sid = (uint32_t)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    Py_INCREF(c);
    c->in_callback++;
    Stream *s = find_stream(c, sid);
    if (s && s->fd >= 0 && !s->reset && !c->torn_down) {
        int failed = 0;
        int eof = stream_read_up(c, s, &failed);
        tls_flush(c);
        if (failed) {
            s->reset_pending = 1;
            s->check = 1;
        } else if (eof) {
            s->check = 1;
        }
    } else if (s && s->reading) {
        stream_set_reading(c, s, 0);
    }
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_tcp_writable(Conn *c, PyObject *arg) {
    uint32_t sid = (uint32_t)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    Py_INCREF(c);
    c->in_callback++;
    Stream *s = find_stream(c, sid);
    if (s && s->fd >= 0 && !s->reset) {
        while (s->down.len) {
            ssize_t r = send(s->fd, s->down.data + s->down.off, s->down.len, MSG_NOSIGNAL);
            if (r > 0) {
                buf_consume(&s->down, (size_t)r);
                credit(c, s, (uint64_t)r);
                continue;
            }
            if (r < 0 && errno == EINTR) continue;
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) break;
            s->reset_pending = 1;
            s->check = 1;
            break;
        }
        if (!s->down.len) {
            buf_shrink(&s->down);
            stream_set_writing(c, s, 0);
            if (s->remote_end && !s->shut_wr && !s->reset_pending) {
                shutdown(s->fd, SHUT_WR);
                s->shut_wr = 1;
                s->check = 1;
            }
        }
    } else if (s && s->writing) {
        stream_set_writing(c, s, 0);
    }
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

/* send(data): queue bytes h2 wants on the wire (after every frame queued before) */
static PyObject *Conn_send(Conn *c, PyObject *arg) {
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) return NULL;
    int failed = 0;
    if (!DEAD(c)) failed = buf_append(&c->out, view.buf, (size_t)view.len);
    PyBuffer_Release(&view);
    if (failed) return PyErr_NoMemory();
    if (!c->in_callback) {
        c->in_callback++;
        Py_INCREF(c);
        after_callback(c);
        c->in_callback--;
        Py_DECREF(c);
    }
    Py_RETURN_NONE;
}

static PyObject *Conn_open_stream(Conn *c, PyObject *arg) {
    uint32_t sid = (uint32_t)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    if (!find_stream(c, sid) && !c->torn_down && !new_stream(c, sid)) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* attach(sid, fd, buffered, eof): splice the stream to the TCP socket fd (owned from now on) */
static PyObject *Conn_attach(Conn *c, PyObject *args) {
    unsigned long sid;
    int fd, eof;
    Py_buffer buffered;
    if (!PyArg_ParseTuple(args, "kiy*p", &sid, &fd, &buffered, &eof)) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    if (!s || s->attached || s->reset || c->torn_down) {
        PyBuffer_Release(&buffered);
        close(fd);
        PyErr_Format(PyExc_ConnectionError, "HBONE stream %lu is closed", sid);
        return NULL;
    }
    int failed = buf_append(&s->up, buffered.buf, (size_t)buffered.len);
    PyBuffer_Release(&buffered);
    if (failed) {
        close(fd);
        return PyErr_NoMemory();
    }
    s->fd = fd;
    s->attached = 1;
    s->tcp_eof = eof ? 1 : 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    Py_INCREF(c);
    c->in_callback++;
    /* what the tunnel sent before the attach */
    if (s->down.len) {
        Buf held = s->down;
        memset(&s->down, 0, sizeof(Buf));
        deliver(c, s, held.data + held.off, held.len);
        s->from_tunnel -= held.len; /* counted when it arrived */
        buf_free(&held);
    }
    if (s->remote_end && !s->down.len && !s->reset_pending) {
        shutdown(s->fd, SHUT_WR);
        s->shut_wr = 1;
    }
    if (s->up.len) drain_up(c, s);
    if (s->up.len) {
        set_blocked(c, s, 1);
    } else if (!s->tcp_eof) {
        stream_set_reading(c, s, 1);
        /* A socket attached as accepted (no bytes read by Python) usually holds its first
           message already: read it now rather than one loop turn later. */
        int read_failed = 0;
        stream_read_up(c, s, &read_failed);
        tls_flush(c);
        if (read_failed) s->reset_pending = 1;
    }
    s->check = 1;
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

/* remote_end(sid): h2 saw the peer end the stream (END_STREAM on HEADERS, say) */
static PyObject *Conn_remote_end(Conn *c, PyObject *arg) {
    uint32_t sid = (uint32_t)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    Stream *s = find_stream(c, sid);
    if (s && !s->remote_end) {
        s->remote_end = 1;
        if (s->attached && !s->down.len && !s->reset) {
            shutdown(s->fd, SHUT_WR);
            s->shut_wr = 1;
            s->check = 1;
            if (!c->in_callback) {
                Py_INCREF(c);
                c->in_callback++;
                after_callback(c);
                c->in_callback--;
                Py_DECREF(c);
            }
        }
    }
    Py_RETURN_NONE;
}

/* reset_stream(sid): the stream was reset (either way) or refused: abort its TCP socket with
 * RST, drop what it holds, and report it finished. Unknown streams are ignored. */
static PyObject *Conn_reset_stream(Conn *c, PyObject *arg) {
    uint32_t sid = (uint32_t)PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    Stream *s = find_stream(c, sid);
    if (!s || s->reset) Py_RETURN_NONE;
    Py_INCREF(c);
    s->reset = 1;
    finish_stream(c, s);
    if (!c->in_callback) {
        c->in_callback++;
        after_callback(c);
        c->in_callback--;
    }
    Py_DECREF(c);
    Py_RETURN_NONE;
}

/* close(): stop once the queued bytes (h2's GOAWAY) are written; abort(): now */
static PyObject *Conn_close(Conn *c, PyObject *unused) {
    if (c->torn_down) Py_RETURN_NONE;
    Py_INCREF(c);
    c->closing = 1;
    if (!c->in_callback) {
        c->in_callback++;
        after_callback(c);
        c->in_callback--;
    }
    if (!c->started || c->lost) teardown(c);
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_abort(Conn *c, PyObject *unused) {
    Py_INCREF(c);
    c->in_callback++;
    teardown(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static PyObject *Conn_stats(Conn *c, PyObject *unused) {
    size_t held = 0, up = 0;
    for (int i = 0; i < c->nstreams; i++) {
        held += c->streams[i]->down.len;
        up += c->streams[i]->up.len;
    }
    return Py_BuildValue(
        "{s:n,s:n,s:n,s:n,s:i,s:L,s:L,s:O}", "tls_out", (Py_ssize_t)c->out.len, "tls_in",
        (Py_ssize_t)c->in.len, "held", (Py_ssize_t)held, "pending_up", (Py_ssize_t)up,
        "streams", c->nstreams, "send_window", (long long)c->conn_send_window, "recv_window",
        (long long)c->conn_recv_window, "closed", c->torn_down ? Py_True : Py_False);
}

static PyObject *Conn_get_closed(Conn *c, void *unused) {
    return PyBool_FromLong(c->torn_down || c->lost);
}

static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT(c->loop);
    Py_VISIT(c->owner);
    Py_VISIT(c->cb_tls_readable);
    Py_VISIT(c->cb_tls_writable);
    Py_VISIT(c->cb_tcp_readable);
    Py_VISIT(c->cb_tcp_writable);
    return 0;
}

static int Conn_clear(Conn *c) {
    Py_CLEAR(c->loop);
    Py_CLEAR(c->owner);
    Py_CLEAR(c->cb_tls_readable);
    Py_CLEAR(c->cb_tls_writable);
    Py_CLEAR(c->cb_tcp_readable);
    Py_CLEAR(c->cb_tcp_writable);
    return 0;
}

static void Conn_dealloc(Conn *c) {
    PyObject_GC_UnTrack(c);
    /* Python always closes first; this only frees what is left, without calling anyone. */
    for (int i = 0; i < c->nstreams; i++) {
        Stream *s = c->streams[i];
        if (s->fd >= 0) abort_fd(s->fd);
        buf_free(&s->down);
        buf_free(&s->up);
        free(s);
    }
    free(c->streams);
    if (c->fd >= 0 && !c->torn_down) close(c->fd);
    if (c->ssl) SSL_free(c->ssl);
    buf_free(&c->in);
    buf_free(&c->out);
    buf_free(&c->ctrl);
    Py_XDECREF(c->fd_obj);
    Conn_clear(c);
    Py_TYPE(c)->tp_free((PyObject *)c);
}

static PyMethodDef Conn_methods[] = {
    {"handshake", (PyCFunction)Conn_handshake, METH_NOARGS,
     "Advance the TLS handshake: 0 done, 1 wait readable, 2 wait writable."},
    {"peer_certificate", (PyCFunction)Conn_peer_certificate, METH_NOARGS,
     "The verified peer certificate (DER), or None."},
    {"alpn", (PyCFunction)Conn_alpn, METH_NOARGS, "The negotiated ALPN protocol, or None."},
    {"start", (PyCFunction)Conn_start, METH_NOARGS, "Start moving bytes (after the handshake)."},
    {"send", (PyCFunction)Conn_send, METH_O, "Queue bytes (h2's frames) for the TLS connection."},
    {"open_stream", (PyCFunction)Conn_open_stream, METH_O, "Hold DATA for a new stream."},
    {"attach", (PyCFunction)Conn_attach, METH_VARARGS,
     "attach(stream_id, fd, buffered, eof): splice the stream to a TCP socket (owned after)."},
    {"remote_end", (PyCFunction)Conn_remote_end, METH_O, "The peer ended the stream."},
    {"reset_stream", (PyCFunction)Conn_reset_stream, METH_O,
     "The stream is reset: abort its TCP socket."},
    {"close", (PyCFunction)Conn_close, METH_NOARGS, "Close once queued bytes are written."},
    {"abort", (PyCFunction)Conn_abort, METH_NOARGS, "Close now."},
    {"stats", (PyCFunction)Conn_stats, METH_NOARGS, "Buffer sizes and windows, for tests."},
    {"_tls_readable", (PyCFunction)Conn_tls_readable, METH_NOARGS, NULL},
    {"_tls_writable", (PyCFunction)Conn_tls_writable, METH_NOARGS, NULL},
    {"_tcp_readable", (PyCFunction)Conn_tcp_readable, METH_O, NULL},
    {"_tcp_writable", (PyCFunction)Conn_tcp_writable, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Conn_getset[] = {
    {"closed", (getter)Conn_get_closed, NULL, "True once the connection is gone.", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject ConnType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "weft._native.Connection",
    .tp_basicsize = sizeof(Conn),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One HBONE TLS connection's data path: TLS, framing, DATA, flow control, splice.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_methods = Conn_methods,
    .tp_getset = Conn_getset,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "weft._native",
    "The compiled HBONE data path (TLS, DATA frames, flow control, TCP splice).", -1, NULL,
    NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__native(void) {
    PyObject *ssl = PyImport_ImportModule("_ssl");
    if (!ssl) return NULL;
    ssl_context_type = (PyTypeObject *)PyObject_GetAttrString(ssl, "_SSLContext");
    Py_DECREF(ssl);
    if (!ssl_context_type) return NULL;
#define INTERN(var, text) \
    if (!(var = PyUnicode_InternFromString(text))) return NULL;
    INTERN(str_add_reader, "add_reader");
    INTERN(str_remove_reader, "remove_reader");
    INTERN(str_add_writer, "add_writer");
    INTERN(str_remove_writer, "remove_writer");
    INTERN(str_frames, "_native_frames");
    INTERN(str_error, "_native_error");
    INTERN(str_lost, "_native_lost");
    INTERN(str_tcp_eof, "_native_tcp_eof");
    INTERN(str_tcp_reset, "_native_tcp_reset");
    INTERN(str_finished, "_native_finished");
    if (PyType_Ready(&ConnType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ConnType);
    if (PyModule_AddObject(m, "Connection", (PyObject *)&ConnType) < 0) return NULL;
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0)
        return NULL;
    /* weft.hbone.native_session refuses a module built from other sources (a stale build) */
    if (PyModule_AddIntConstant(m, "API_VERSION", WEFT_NATIVE_API_VERSION) < 0) return NULL;
    return m;
}
