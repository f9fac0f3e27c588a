/* weft._native: the compiled HBONE data path of one TLS connection (see weft/native/README.md).
 *
 * C owns the TLS connection's I/O (an SSL* made from the SSL_CTX of a weft.tls ssl.SSLContext)
 * and speaks all of HTTP/2 on it: the preface, SETTINGS, PING, GOAWAY, RST_STREAM, HEADERS and
 * CONTINUATION (decoded by hpack.c), every DATA frame, both flow-control windows in both
 * directions, stream states and limits, and the splice of each stream to its TCP socket.
 * Python (weft.hbone.native_session) hears once per stream when it opens (a server's CONNECT
 * fields, a client's response status) and once when it ends (bytes each way, reset).
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

#include "hpack.h"

/* CPython 3.11's _ssl._SSLContext begins with the SSL_CTX pointer (Modules/_ssl.c). */
typedef struct {
    PyObject_HEAD
    SSL_CTX *ctx;
} PySSLContextHead;

enum { F_DATA = 0, F_HEADERS = 1, F_PRIORITY = 2, F_RST = 3, F_SETTINGS = 4, F_PUSH = 5,
       F_PING = 6, F_GOAWAY = 7, F_WINDOW_UPDATE = 8, F_CONTINUATION = 9 };
enum { FLAG_END_STREAM = 0x1, FLAG_END_HEADERS = 0x4, FLAG_PADDED = 0x8, FLAG_ACK = 0x1,
       FLAG_PRIORITY = 0x20 };
enum { E_NO = 0x0, E_PROTOCOL = 0x1, E_INTERNAL = 0x2, E_FLOW_CONTROL = 0x3,
       E_STREAM_CLOSED = 0x5, E_FRAME_SIZE = 0x6, E_REFUSED = 0x7, E_CANCEL = 0x8,
       E_COMPRESSION = 0x9, E_CONNECT = 0xa, E_CALM = 0xb };

#define WEFT_NATIVE_API_VERSION 2
#define MAX_STREAM_ID 0x7fffffffU
/* A header block (HEADERS + CONTINUATION) larger than this ends the connection: it cannot be
 * skipped without losing the HPACK state, and a CONNECT needs a few hundred bytes. */
#define MAX_HEADER_BLOCK (64 * 1024)
static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define MAX_WINDOW 0x7fffffffLL
#define PREFACE_LEN 24
#define READ_MAX (256 * 1024)      /* one TCP read: one DATA frame (if the peer allows it) */
#define OUT_HIGH (1024 * 1024)     /* stop reading TCP above this many unsent TLS bytes */
#define OUT_LOW (256 * 1024)       /* ... and resume below this */
#define TLS_READ_CHUNK (64 * 1024) /* room kept free in the inbound buffer for one SSL_read */

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
        remote_end : 1, shut_wr : 1, reset : 1, reset_pending : 1, attached : 1, check : 1,
        known : 1,     /* Python was told of the stream: it hears of its end */
        awaiting : 1,  /* client: the response has not arrived */
        answered : 1,  /* server: the response went out */
        refused : 1;   /* client: above the last stream id of the peer's GOAWAY */
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
    Buf in, out;
    int preface_left;
    int got_settings;  /* the peer's first frame (its SETTINGS) arrived */
    /* a header block being assembled: HEADERS without END_HEADERS, then CONTINUATIONs */
    int in_headers, hb_end_stream;
    uint32_t hb_sid;
    Buf hb;
    hpack_decoder hpack;
    int hpack_ready;
    int goaway_sent, goaway_received, draining;
    uint32_t goaway_last;      /* the last stream id of the peer's GOAWAY */
    uint32_t peer_max_streams; /* the peer's SETTINGS_MAX_CONCURRENT_STREAMS */
    uint32_t local_max_streams, max_header_list;
    uint32_t next_stream;      /* client: the id the next open() takes */
    int64_t conn_send_window, conn_recv_window;
    uint64_t conn_unacked;
    int64_t peer_initial_window;
    uint32_t peer_max_frame;
    uint32_t local_stream_window, local_max_frame;
    uint64_t ack_batch;
    uint32_t highest_stream; /* server: the highest stream id the peer opened */
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
static PyObject *str_request, *str_response, *str_goaway, *str_error, *str_lost, *str_finished;
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

static void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static void emit_frame(Conn *c, int type, int flags, uint32_t sid, const void *payload,
                       uint32_t len) {
    unsigned char header[9];
    put_header(header, len, type, flags, sid);
    buf_append(&c->out, header, 9);
    buf_append(&c->out, payload, len);
}

static void emit_rst(Conn *c, uint32_t sid, uint32_t code) {
    unsigned char payload[4];
    put32(payload, code);
    emit_frame(c, F_RST, 0, sid, payload, 4);
}

/* GOAWAY naming the last stream the peer opened that we may serve (a client serves none). */
static void emit_goaway(Conn *c, uint32_t code, const char *reason) {
    unsigned char payload[8 + 128];
    size_t n = reason ? strlen(reason) : 0;
    if (n > 128) n = 128;
    put32(payload, c->server ? c->highest_stream : 0);
    put32(payload + 4, code);
    if (n) memcpy(payload + 8, reason, n);
    emit_frame(c, F_GOAWAY, 0, 0, payload, (uint32_t)(8 + n));
    c->goaway_sent = 1;
}

/* A response of one field: `:status 200` is static index 8 (one byte); another status is a
 * literal without indexing with name index 8 and a 3-digit value (RFC 7541 6.2.2). */
static void emit_status(Conn *c, uint32_t sid, int status, int end_stream) {
    unsigned char block[5];
    uint32_t n;
    if (status == 200) {
        block[0] = 0x88;
        n = 1;
    } else {
        if (status < 100 || status > 999) status = 500;
        block[0] = 0x08;
        block[1] = 3;
        block[2] = (unsigned char)('0' + status / 100);
        block[3] = (unsigned char)('0' + status / 10 % 10);
        block[4] = (unsigned char)('0' + status % 10);
        n = 5;
    }
    emit_frame(c, F_HEADERS, FLAG_END_HEADERS | (end_stream ? FLAG_END_STREAM : 0), sid, block, n);
}

/* Our preface (client) and SETTINGS, and the connection window above the default 65,535. */
static void emit_preface(Conn *c) {
    unsigned char settings[30];
    uint32_t n = 0;
    struct { unsigned id; uint32_t value; } values[] = {
        {0x2, 0}, /* ENABLE_PUSH: a client only */
        {0x3, c->local_max_streams},
        {0x4, c->local_stream_window},
        {0x5, c->local_max_frame},
        {0x6, c->max_header_list},
    };
    if (!c->server) buf_append(&c->out, PREFACE, PREFACE_LEN);
    for (size_t i = c->server ? 1 : 0; i < sizeof(values) / sizeof(values[0]); i++) {
        settings[n] = (unsigned char)(values[i].id >> 8);
        settings[n + 1] = (unsigned char)values[i].id;
        put32(settings + n + 2, values[i].value);
        n += 6;
    }
    emit_frame(c, F_SETTINGS, 0, 0, settings, n);
    if (c->conn_recv_window > 65535) emit_window_update(c, 0, (uint64_t)c->conn_recv_window - 65535);
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

/* The TCP side sent FIN and every byte before it is queued: END_STREAM. */
static void tell_eof(Conn *c, uint32_t sid) {
    Stream *s = find_stream(c, sid);
    if (!s || s->eof_told || s->reset) return;
    s->eof_told = 1;
    if (!DEAD(c)) emit_frame(c, F_DATA, FLAG_END_STREAM, sid, NULL, 0);
    maybe_finish(c, s);
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

/* ---- the TLS side: parsing what the peer sent ------------------------------------------------ */

static void conn_error(Conn *c, int code, const char *reason) {
    if (c->error_code || c->errored) return;
    c->error_code = code;
    snprintf(c->error_reason, sizeof(c->error_reason), "%s", reason);
}

#define STOPPED(c) ((c)->error_code || (c)->errored || DEAD(c))

/* A frame for a stream the peer could not have opened yet (RFC 9113 5.1: idle). */
static int is_idle(Conn *c, uint32_t sid) {
    if (c->server) return !(sid & 1) || sid > c->highest_stream;
    return !(sid & 1) || sid >= c->next_stream;
}

/* Everything from the tunnel is written to the socket: half-close it (FIN), or, when its own
 * direction has ended too (FIN read, END_STREAM sent), leave the FIN to the close() that
 * finishes the stream: one system call less per connection. */
static void write_side_done(Stream *s) {
    s->shut_wr = 1;
    s->check = 1;
    if (!(s->tcp_eof && s->eof_told)) shutdown(s->fd, SHUT_WR);
}

/* The peer ended its direction of the stream (END_STREAM). */
static void remote_ended(Conn *c, Stream *s) {
    if (s->remote_end) return;
    s->remote_end = 1;
    if (s->attached && !s->down.len && !s->reset_pending && !s->shut_wr) write_side_done(s);
}

/* A stream error (RFC 9113 5.4.2): RST_STREAM with `code`, and the stream is gone here. */
static void stream_error(Conn *c, Stream *s, uint32_t code) {
    emit_rst(c, s->id, code);
    s->reset = 1;
    finish_stream(c, s);
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
        conn_error(c, E_PROTOCOL, "DATA on stream 0");
        return;
    }
    if (flags & FLAG_PADDED) {
        if (len < 1 || payload[0] >= len) {
            conn_error(c, E_PROTOCOL, "DATA padding longer than the frame");
            return;
        }
        pad = payload[0];
        offset = 1;
    }
    Stream *s = find_stream(c, sid);
    if (!s && is_idle(c, sid)) {
        conn_error(c, E_PROTOCOL, "DATA on an idle stream");
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
    if (flags & FLAG_END_STREAM) remote_ended(c, s);
}

static void on_window_update(Conn *c, const unsigned char *frame, uint32_t len, uint32_t sid) {
    if (len != 4) {
        conn_error(c, E_FRAME_SIZE, "WINDOW_UPDATE frame is not 4 bytes long");
        return;
    }
    int64_t increment = be32(frame + 9) & 0x7fffffff;
    if (!sid) {
        if (!increment) {
            conn_error(c, E_PROTOCOL, "WINDOW_UPDATE with increment 0");
            return;
        }
        c->conn_send_window += increment;
        if (c->conn_send_window > MAX_WINDOW)
            conn_error(c, E_FLOW_CONTROL, "WINDOW_UPDATE overflowed the connection window");
        return;
    }
    Stream *s = find_stream(c, sid);
    if (!s) {
        if (is_idle(c, sid)) conn_error(c, E_PROTOCOL, "WINDOW_UPDATE on an idle stream");
        return; /* closed streams may still get WINDOW_UPDATE */
    }
    if (!increment) {
        stream_error(c, s, E_PROTOCOL);
        return;
    }
    s->send_window += increment;
    if (s->send_window > MAX_WINDOW) stream_error(c, s, E_FLOW_CONTROL);
}

/* RFC 9113 6.5.2: validate and apply the peer's settings, then acknowledge them. */
static void on_settings(Conn *c, const unsigned char *frame, uint32_t len, int flags,
                        uint32_t sid) {
    if (sid) {
        conn_error(c, E_PROTOCOL, "SETTINGS on a stream");
        return;
    }
    if (flags & FLAG_ACK) {
        if (len) conn_error(c, E_FRAME_SIZE, "SETTINGS acknowledgement with a payload");
        return;
    }
    if (len % 6) {
        conn_error(c, E_FRAME_SIZE, "SETTINGS payload is not a multiple of 6 bytes");
        return;
    }
    for (uint32_t i = 0; i < len; i += 6) {
        const unsigned char *p = frame + 9 + i;
        unsigned id = ((unsigned)p[0] << 8) | p[1];
        uint32_t value = be32(p + 2);
        switch (id) {
        case 0x2: /* ENABLE_PUSH */
            if (value > 1 || (value && !c->server)) {
                conn_error(c, E_PROTOCOL, "SETTINGS_ENABLE_PUSH invalid");
                return;
            }
            break;
        case 0x3: /* MAX_CONCURRENT_STREAMS */
            c->peer_max_streams = value;
            break;
        case 0x4: { /* INITIAL_WINDOW_SIZE */
            if (value > MAX_WINDOW) {
                conn_error(c, E_FLOW_CONTROL, "SETTINGS_INITIAL_WINDOW_SIZE above 2^31-1");
                return;
            }
            int64_t delta = (int64_t)value - c->peer_initial_window;
            c->peer_initial_window = value;
            for (int k = 0; k < c->nstreams; k++) {
                c->streams[k]->send_window += delta;
                if (c->streams[k]->send_window > MAX_WINDOW) {
                    conn_error(c, E_FLOW_CONTROL, "SETTINGS_INITIAL_WINDOW_SIZE overflowed a window");
                    return;
                }
            }
            break;
        }
        case 0x5: /* MAX_FRAME_SIZE */
            if (value < 16384 || value > 16777215) {
                conn_error(c, E_PROTOCOL, "SETTINGS_MAX_FRAME_SIZE outside 16384..16777215");
                return;
            }
            c->peer_max_frame = value;
            break;
        case 0x8: /* ENABLE_CONNECT_PROTOCOL (RFC 8441) */
            if (value > 1) {
                conn_error(c, E_PROTOCOL, "SETTINGS_ENABLE_CONNECT_PROTOCOL invalid");
                return;
            }
            break;
        default: /* HEADER_TABLE_SIZE (we never index), MAX_HEADER_LIST_SIZE, unknown */
            break;
        }
    }
    emit_frame(c, F_SETTINGS, FLAG_ACK, 0, NULL, 0);
}

static void on_ping(Conn *c, const unsigned char *frame, uint32_t len, int flags, uint32_t sid) {
    if (sid) {
        conn_error(c, E_PROTOCOL, "PING on a stream");
    } else if (len != 8) {
        conn_error(c, E_FRAME_SIZE, "PING frame is not 8 bytes long");
    } else if (!(flags & FLAG_ACK)) {
        emit_frame(c, F_PING, FLAG_ACK, 0, frame + 9, 8);
    }
}

static void on_rst(Conn *c, const unsigned char *frame, uint32_t len, uint32_t sid);

static void on_goaway(Conn *c, const unsigned char *frame, uint32_t len, uint32_t sid) {
    if (sid) {
        conn_error(c, E_PROTOCOL, "GOAWAY on a stream");
        return;
    }
    if (len < 8) {
        conn_error(c, E_FRAME_SIZE, "GOAWAY frame shorter than 8 bytes");
        return;
    }
    uint32_t last = be32(frame + 9) & 0x7fffffff, code = be32(frame + 13);
    if (!c->goaway_received || last < c->goaway_last) c->goaway_last = last;
    c->goaway_received = 1;
    /* a client's streams above `last` were never seen by the server: refused (retryable) */
    for (int i = 0; i < c->nstreams; i++) {
        Stream *s = c->streams[i];
        if (!c->server && s->id > c->goaway_last && !s->reset) {
            s->refused = 1;
            s->check = 1;
        }
    }
    uint32_t reason_len = len - 8 > 200 ? 200 : len - 8;
    owner_call(c, str_goaway,
               Py_BuildValue("(kky#)", (unsigned long)code, (unsigned long)last,
                             (const char *)frame + 17, (Py_ssize_t)reason_len));
}

static void on_rst(Conn *c, const unsigned char *frame, uint32_t len, uint32_t sid) {
    if (!sid) {
        conn_error(c, E_PROTOCOL, "RST_STREAM on stream 0");
        return;
    }
    if (len != 4) {
        conn_error(c, E_FRAME_SIZE, "RST_STREAM frame is not 4 bytes long");
        return;
    }
    Stream *s = find_stream(c, sid);
    if (!s) {
        if (is_idle(c, sid)) conn_error(c, E_PROTOCOL, "RST_STREAM on an idle stream");
        return;
    }
    uint32_t code = be32(frame + 9);
    if (s->awaiting) {
        s->awaiting = 0;
        owner_call(c, str_response, Py_BuildValue("(kik)", (unsigned long)sid, 0,
                                                  (unsigned long)code));
        if (!(s = find_stream(c, sid))) return;
    }
    s->reset = 1;
    finish_stream(c, s);
}

/* ---- header blocks ----------------------------------------------------------------------------- */

static int emit_to_list(void *ctx, const uint8_t *name, size_t name_len, const uint8_t *value,
                        size_t value_len) {
    if (!ctx) return 0;
    PyObject *field = Py_BuildValue("(y#y#)", (const char *)name, (Py_ssize_t)name_len,
                                    (const char *)value, (Py_ssize_t)value_len);
    if (!field) return -1;
    int r = PyList_Append((PyObject *)ctx, field);
    Py_DECREF(field);
    return r;
}

typedef struct {
    int status;   /* -1: none, 0: malformed */
    int pseudo;   /* other pseudo-headers or a repeated :status */
} Response;

static int emit_status_field(void *ctx, const uint8_t *name, size_t name_len,
                             const uint8_t *value, size_t value_len) {
    Response *r = ctx;
    if (name_len == 7 && !memcmp(name, ":status", 7)) {
        if (r->status != -1) {
            r->pseudo = 1;
            return 0;
        }
        r->status = 0;
        if (value_len == 3 && value[0] >= '1' && value[0] <= '9' && value[1] >= '0' &&
            value[1] <= '9' && value[2] >= '0' && value[2] <= '9')
            r->status = (value[0] - '0') * 100 + (value[1] - '0') * 10 + (value[2] - '0');
    } else if (name_len && name[0] == ':') {
        r->pseudo = 1;
    }
    return 0;
}

/* Decode the block only to keep the HPACK state in step (a block nobody will read). */
static int skip_block(Conn *c) {
    const char *error = "";
    int r = hpack_decode(&c->hpack, (const uint8_t *)c->hb.data + c->hb.off, c->hb.len,
                         c->max_header_list, emit_to_list, NULL, &error);
    if (r == HPACK_ERROR) {
        conn_error(c, E_COMPRESSION, error);
        return -1;
    }
    return 0;
}

/* Trailers on an open stream: they must end it (RFC 9113 8.1). */
static void on_trailers(Conn *c, Stream *s, int end_stream) {
    if (skip_block(c) < 0) return;
    if (!end_stream) {
        stream_error(c, s, E_PROTOCOL);
        return;
    }
    remote_ended(c, s);
}

static void server_headers(Conn *c, uint32_t sid, int end_stream) {
    Stream *s = find_stream(c, sid);
    if (s) {
        on_trailers(c, s, end_stream);
        return;
    }
    if (!(sid & 1)) {
        skip_block(c);
        conn_error(c, E_PROTOCOL, "a client opened an even-numbered stream");
        return;
    }
    if (sid <= c->highest_stream) { /* a closed stream */
        if (skip_block(c) == 0) conn_error(c, E_STREAM_CLOSED, "HEADERS on a closed stream");
        return;
    }
    c->highest_stream = sid;
    int refuse = c->goaway_sent || c->closing || c->nstreams >= (int)c->local_max_streams;
    PyObject *fields = refuse ? NULL : PyList_New(0);
    if (!refuse && !fields) {
        PyErr_Clear();
        conn_error(c, E_INTERNAL, "out of memory");
        return;
    }
    const char *error = "";
    int r = hpack_decode(&c->hpack, (const uint8_t *)c->hb.data + c->hb.off, c->hb.len,
                         c->max_header_list, emit_to_list, fields, &error);
    if (r == HPACK_ERROR) {
        Py_XDECREF(fields);
        PyErr_Clear();
        conn_error(c, E_COMPRESSION, error);
        return;
    }
    if (refuse) {
        emit_rst(c, sid, E_REFUSED);
        return;
    }
    if (r == HPACK_TOO_LARGE) { /* this stream only: the HPACK state is intact */
        Py_DECREF(fields);
        emit_status(c, sid, 400, 1);
        emit_rst(c, sid, E_NO);
        return;
    }
    s = new_stream(c, sid);
    if (!s) {
        Py_DECREF(fields);
        conn_error(c, E_INTERNAL, "out of memory");
        return;
    }
    s->known = 1;
    if (end_stream) s->remote_end = 1;
    owner_call(c, str_request, Py_BuildValue("(kN)", (unsigned long)sid, fields));
}

/* The response to our CONNECT: 200 and the splice goes on; anything else ends the stream. */
static void client_headers(Conn *c, uint32_t sid, int end_stream) {
    Stream *s = find_stream(c, sid);
    if (!s) {
        if (is_idle(c, sid)) {
            skip_block(c);
            conn_error(c, E_PROTOCOL, "HEADERS on an idle stream");
            return;
        }
        skip_block(c); /* a late answer on a stream we reset */
        return;
    }
    if (!s->awaiting) {
        on_trailers(c, s, end_stream);
        return;
    }
    Response response = {-1, 0};
    const char *error = "";
    int r = hpack_decode(&c->hpack, (const uint8_t *)c->hb.data + c->hb.off, c->hb.len,
                         c->max_header_list, emit_status_field, &response, &error);
    if (r == HPACK_ERROR) {
        conn_error(c, E_COMPRESSION, error);
        return;
    }
    int status = response.status;
    if (r == HPACK_TOO_LARGE || status <= 0 || response.pseudo) {
        s->awaiting = 0;
        owner_call(c, str_response, Py_BuildValue("(kik)", (unsigned long)sid, 0,
                                                  (unsigned long)E_PROTOCOL));
        if ((s = find_stream(c, sid)) != NULL) stream_error(c, s, E_PROTOCOL);
        return;
    }
    if (status < 200) { /* informational: the answer is still to come */
        if (end_stream && (s = find_stream(c, sid)) != NULL) stream_error(c, s, E_PROTOCOL);
        return;
    }
    s->awaiting = 0;
    if (end_stream) remote_ended(c, s);
    owner_call(c, str_response, Py_BuildValue("(kik)", (unsigned long)sid, status, 0UL));
    if (status != 200 && (s = find_stream(c, sid)) != NULL && !s->reset) {
        /* refused: the client socket is reset, the stream cancelled (as h2's abort(CANCEL)) */
        stream_error(c, s, E_CANCEL);
    }
}

static void header_block_done(Conn *c) {
    c->in_headers = 0;
    if (c->server)
        server_headers(c, c->hb_sid, c->hb_end_stream);
    else
        client_headers(c, c->hb_sid, c->hb_end_stream);
    c->hb.off = c->hb.len = 0;
    buf_shrink(&c->hb);
}

static void on_headers(Conn *c, const unsigned char *frame, uint32_t len, int flags,
                       uint32_t sid) {
    const unsigned char *payload = frame + 9;
    uint32_t offset = 0, pad = 0;
    if (!sid) {
        conn_error(c, E_PROTOCOL, "HEADERS on stream 0");
        return;
    }
    if (flags & FLAG_PADDED) {
        if (len < 1) {
            conn_error(c, E_FRAME_SIZE, "padded HEADERS without a pad length");
            return;
        }
        pad = payload[0];
        offset = 1;
    }
    if (flags & FLAG_PRIORITY) offset += 5; /* priorities are ignored (RFC 9113 5.3.2) */
    if ((uint64_t)offset + pad > len) {
        conn_error(c, E_PROTOCOL, "HEADERS padding longer than the frame");
        return;
    }
    if (len - offset - pad > MAX_HEADER_BLOCK) {
        conn_error(c, E_CALM, "header block longer than 64 KiB");
        return;
    }
    c->hb.off = c->hb.len = 0;
    if (buf_append(&c->hb, payload + offset, len - offset - pad) < 0) {
        conn_error(c, E_INTERNAL, "out of memory");
        return;
    }
    c->hb_sid = sid;
    c->hb_end_stream = flags & FLAG_END_STREAM;
    if (flags & FLAG_END_HEADERS)
        header_block_done(c);
    else
        c->in_headers = 1;
}

static void on_continuation(Conn *c, const unsigned char *frame, uint32_t len, int flags,
                            uint32_t sid) {
    if (!c->in_headers || sid != c->hb_sid) {
        conn_error(c, E_PROTOCOL, "CONTINUATION without a HEADERS frame before it");
        return;
    }
    if (c->hb.len + len > MAX_HEADER_BLOCK) {
        conn_error(c, E_CALM, "header block longer than 64 KiB");
        return;
    }
    if (buf_append(&c->hb, frame + 9, len) < 0) {
        conn_error(c, E_INTERNAL, "out of memory");
        return;
    }
    if (flags & FLAG_END_HEADERS) header_block_done(c);
}

/* Cut the inbound bytes into frames and act on each. Stops at the first connection error. */
static void parse(Conn *c) {
    const unsigned char *p = (const unsigned char *)c->in.data + c->in.off;
    size_t avail = c->in.len, used = 0;
    if (c->preface_left) {
        size_t n = avail < (size_t)c->preface_left ? avail : (size_t)c->preface_left;
        if (memcmp(p, PREFACE + (PREFACE_LEN - c->preface_left), n)) {
            conn_error(c, E_PROTOCOL, "the client did not send the HTTP/2 preface");
            c->in.off = c->in.len = 0;
            return;
        }
        c->preface_left -= (int)n;
        used += n;
    }
    while (!STOPPED(c) && avail - used >= 9) {
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
        if (!c->got_settings) {
            if (type != F_SETTINGS || (flags & FLAG_ACK)) {
                conn_error(c, E_PROTOCOL, "the peer's first frame is not SETTINGS");
                break;
            }
            c->got_settings = 1;
        }
        if (c->in_headers && type != F_CONTINUATION) {
            conn_error(c, E_PROTOCOL, "a header block was interrupted by another frame");
            break;
        }
        switch (type) {
        case F_DATA:
            on_data_frame(c, frame, len, flags, sid);
            break;
        case F_HEADERS:
            on_headers(c, frame, len, flags, sid);
            break;
        case F_PRIORITY:
            if (!sid)
                conn_error(c, E_PROTOCOL, "PRIORITY on stream 0");
            else if (len != 5)
                conn_error(c, E_FRAME_SIZE, "PRIORITY frame is not 5 bytes long");
            break;
        case F_RST:
            on_rst(c, frame, len, sid);
            break;
        case F_SETTINGS:
            on_settings(c, frame, len, flags, sid);
            break;
        case F_PUSH:
            conn_error(c, E_PROTOCOL, c->server ? "a client sent PUSH_PROMISE"
                                                : "PUSH_PROMISE, but push is disabled");
            break;
        case F_PING:
            on_ping(c, frame, len, flags, sid);
            break;
        case F_GOAWAY:
            on_goaway(c, frame, len, sid);
            break;
        case F_WINDOW_UPDATE:
            on_window_update(c, frame, len, sid);
            break;
        case F_CONTINUATION:
            on_continuation(c, frame, len, flags, sid);
            break;
        default: /* unknown frame types are ignored (RFC 9113 4.1) */
            break;
        }
    }
    if (c->errored || DEAD(c) || used > c->in.len)
        c->in.off = c->in.len = 0;
    else
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
        uint32_t sid = s->id;
        s->reset = 1;
        if (s->awaiting) {
            s->awaiting = 0;
            owner_call(c, str_response, Py_BuildValue("(kik)", (unsigned long)sid, 0, 0UL));
            if (!(s = find_stream(c, sid))) continue;
        }
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
    if (c->error_code && !DEAD(c)) {
        /* a connection error: GOAWAY with its code, nothing more is parsed, and the
         * connection closes once the GOAWAY is written */
        int code = c->error_code;
        c->error_code = 0;
        tls_set_reading(c, 0);
        c->in.off = c->in.len = 0;
        c->errored = 1;
        emit_goaway(c, (uint32_t)code, c->error_reason);
        c->closing = 1;
        owner_call(c, str_error, Py_BuildValue("(is)", code, c->error_reason));
    }
    run_checks(c);
    tls_flush(c); /* first, so that a drained queue lets blocked streams resume */
    resume_blocked(c);
    run_checks(c);
    tls_flush(c);
    /* after a GOAWAY either way, the connection ends with its last stream */
    if ((c->goaway_received || c->draining) && !c->nstreams && c->started) c->closing = 1;
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
                             "stream_window", "connection_window", "max_frame_size",
                             "max_concurrent_streams", "max_header_list_size", NULL};
    PyObject *context, *loop, *owner;
    int fd, server;
    unsigned int stream_window, connection_window, max_frame, max_streams = 100,
                                                              max_header_list = 16384;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OipOOIII|II", kwlist, &context, &fd, &server,
                                     &loop, &owner, &stream_window, &connection_window,
                                     &max_frame, &max_streams, &max_header_list))
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
    c->local_max_streams = max_streams;
    c->max_header_list = max_header_list;
    c->peer_max_streams = 0xffffffffU; /* unlimited until the peer's SETTINGS say otherwise */
    c->next_stream = 1;
    hpack_decoder_init(&c->hpack, 4096);
    c->hpack_ready = 1;
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
    emit_preface(c);
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
            if (s->remote_end && !s->shut_wr && !s->reset_pending) write_side_done(s);
        }
    } else if (s && s->writing) {
        stream_set_writing(c, s, 0);
    }
    after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
    Py_RETURN_NONE;
}

static void enter(Conn *c) {
    Py_INCREF(c);
    c->in_callback++;
}

/* The outermost call into this object flushes, reports and finishes what the call left. */
static void leave(Conn *c) {
    if (c->in_callback == 1) after_callback(c);
    c->in_callback--;
    Py_DECREF(c);
}

/* Splice s to the TCP socket fd (owned from now on), with what was already read of it. */
static int attach_common(Conn *c, Stream *s, int fd, const char *buffered, size_t len, int eof) {
    if (buf_append(&s->up, buffered, len) < 0) {
        close(fd);
        return -1;
    }
    s->fd = fd;
    s->attached = 1;
    s->tcp_eof = eof ? 1 : 0;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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
        /* A socket attached as accepted usually holds its first message already: read it now
           (its DATA leaves in the same TLS write as what is queued before it). */
        int read_failed = 0;
        stream_read_up(c, s, &read_failed);
        if (read_failed) s->reset_pending = 1;
    }
    s->check = 1;
    return 0;
}

static PyObject *closed_stream(unsigned long sid, int fd) {
    if (fd >= 0) close(fd);
    PyErr_Format(PyExc_ConnectionError, "HBONE stream %lu is closed", sid);
    return NULL;
}

/* room(): how many more streams open() takes now (0 once either side sent GOAWAY). */
static long room(Conn *c) {
    if (c->server || DEAD(c) || c->closing || c->goaway_sent || c->goaway_received ||
        c->draining || c->next_stream > MAX_STREAM_ID - 2)
        return 0;
    uint32_t limit = c->peer_max_streams < c->local_max_streams ? c->peer_max_streams
                                                                : c->local_max_streams;
    return (long)limit > c->nstreams ? (long)limit - c->nstreams : 0;
}

static PyObject *Conn_room(Conn *c, PyObject *unused) { return PyLong_FromLong(room(c)); }

/* open(sid, block, fd=-1, buffered=b""): HEADERS (CONNECT) on a new stream, whose id the
 * caller names (it is known to Python before any callback about it); with fd, the socket's
 * bytes follow as DATA at once, in the same TLS write. */
static PyObject *Conn_open(Conn *c, PyObject *args) {
    Py_buffer block, buffered = {0};
    int fd = -1;
    unsigned long wanted;
    if (!PyArg_ParseTuple(args, "ky*|iy*", &wanted, &block, &fd, &buffered)) return NULL;
    PyObject *result = NULL;
    if (room(c) <= 0 || !c->started) {
        if (fd >= 0) close(fd);
        PyErr_SetString(PyExc_ConnectionError, "this HBONE connection takes no new streams");
        goto done;
    }
    uint32_t sid = c->next_stream;
    if (wanted != sid) {
        if (fd >= 0) close(fd);
        PyErr_Format(PyExc_ValueError, "the next stream id is %lu, not %lu", (unsigned long)sid,
                     wanted);
        goto done;
    }
    Stream *s = new_stream(c, sid);
    if (!s) {
        if (fd >= 0) close(fd);
        PyErr_NoMemory();
        goto done;
    }
    c->next_stream += 2;
    s->known = 1;
    s->awaiting = 1;
    enter(c);
    const unsigned char *p = block.buf;
    size_t left = (size_t)block.len;
    int type = F_HEADERS;
    do { /* CONTINUATION frames if the block is longer than the peer's frames */
        uint32_t n = left > c->peer_max_frame ? c->peer_max_frame : (uint32_t)left;
        emit_frame(c, type, n == left ? FLAG_END_HEADERS : 0, sid, p, n);
        p += n;
        left -= n;
        type = F_CONTINUATION;
    } while (left);
    int failed = 0;
    if (fd >= 0)
        failed = attach_common(c, s, fd, buffered.buf, buffered.buf ? (size_t)buffered.len : 0, 0);
    leave(c);
    result = failed ? PyErr_NoMemory() : PyLong_FromUnsignedLong(sid);
done:
    PyBuffer_Release(&block);
    if (buffered.obj) PyBuffer_Release(&buffered);
    return result;
}

/* respond(sid, fd, buffered=b"", eof=False): server: 200, then splice fd (owned from now on) */
static PyObject *Conn_respond(Conn *c, PyObject *args) {
    unsigned long sid;
    int fd, eof = 0;
    Py_buffer buffered = {0};
    if (!PyArg_ParseTuple(args, "ki|y*p", &sid, &fd, &buffered, &eof)) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    PyObject *result = NULL;
    if (!c->server || !s || s->reset || s->answered || s->attached || DEAD(c)) {
        closed_stream(sid, fd);
        goto done;
    }
    enter(c);
    emit_status(c, (uint32_t)sid, 200, 0);
    s->answered = 1;
    int failed = attach_common(c, s, fd, buffered.buf, buffered.buf ? (size_t)buffered.len : 0, eof);
    leave(c);
    if (failed)
        PyErr_NoMemory();
    else
        result = Py_NewRef(Py_None);
done:
    if (buffered.obj) PyBuffer_Release(&buffered);
    return result;
}

/* accept(sid): server: 200 without a socket yet (attach() follows) */
static PyObject *Conn_accept(Conn *c, PyObject *arg) {
    unsigned long sid = PyLong_AsUnsignedLong(arg);
    if (PyErr_Occurred()) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    if (!c->server || !s || s->reset || s->answered || DEAD(c)) return closed_stream(sid, -1);
    enter(c);
    emit_status(c, (uint32_t)sid, 200, 0);
    s->answered = 1;
    leave(c);
    Py_RETURN_NONE;
}

/* refuse(sid, status): server: answer status with END_STREAM, then RST_STREAM(NO_ERROR) so
 * that a client that never half-closes does not hold a stream slot (RFC 9113 8.1). */
static PyObject *Conn_refuse(Conn *c, PyObject *args) {
    unsigned long sid;
    int status;
    if (!PyArg_ParseTuple(args, "ki", &sid, &status)) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    if (!c->server || !s || s->reset || s->answered) Py_RETURN_NONE; /* the client gave up */
    enter(c);
    if (!DEAD(c)) {
        emit_status(c, (uint32_t)sid, status, 1);
        emit_rst(c, (uint32_t)sid, E_NO);
    }
    s->answered = 1;
    s->reset = 1;
    s->known = 0; /* Python ended it: no callback */
    finish_stream(c, s);
    leave(c);
    Py_RETURN_NONE;
}

/* attach(sid, fd, buffered, eof): splice an answered stream to a TCP socket (owned after) */
static PyObject *Conn_attach(Conn *c, PyObject *args) {
    unsigned long sid;
    int fd, eof;
    Py_buffer buffered;
    if (!PyArg_ParseTuple(args, "kiy*p", &sid, &fd, &buffered, &eof)) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    if (!s || s->attached || s->reset || s->awaiting || (c->server && !s->answered) ||
        c->torn_down) {
        PyBuffer_Release(&buffered);
        return closed_stream(sid, fd);
    }
    enter(c);
    int failed = attach_common(c, s, fd, buffered.buf, (size_t)buffered.len, eof);
    PyBuffer_Release(&buffered);
    leave(c);
    if (failed) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* reset_stream(sid, code): RST_STREAM(code) and abort the stream's TCP socket (RST). */
static PyObject *Conn_reset_stream(Conn *c, PyObject *args) {
    unsigned long sid, code = E_CANCEL;
    if (!PyArg_ParseTuple(args, "k|k", &sid, &code)) return NULL;
    Stream *s = find_stream(c, (uint32_t)sid);
    if (!s || s->reset) Py_RETURN_NONE;
    enter(c);
    if (!DEAD(c)) emit_rst(c, (uint32_t)sid, (uint32_t)code);
    s->reset = 1;
    s->awaiting = 0;
    finish_stream(c, s);
    leave(c);
    Py_RETURN_NONE;
}

/* drain(): GOAWAY(NO_ERROR); open streams may finish, then the connection closes */
static PyObject *Conn_drain(Conn *c, PyObject *unused) {
    if (DEAD(c) || c->closing) Py_RETURN_NONE;
    enter(c);
    if (c->started && !c->goaway_sent) emit_goaway(c, E_NO, "");
    c->draining = 1;
    leave(c);
    Py_RETURN_NONE;
}

/* close(): GOAWAY, and stop once the queued bytes are written; abort(): now */
static PyObject *Conn_close(Conn *c, PyObject *unused) {
    if (c->torn_down) Py_RETURN_NONE;
    Py_INCREF(c);
    if (c->started && !c->goaway_sent && !DEAD(c)) emit_goaway(c, E_NO, "");
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
    buf_free(&c->hb);
    if (c->hpack_ready) hpack_decoder_free(&c->hpack);
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
    {"open", (PyCFunction)Conn_open, METH_VARARGS,
     "open(stream_id, block, fd=-1, buffered=b''): client: send a CONNECT (an HPACK block "
     "without the dynamic table) on the next stream and splice fd (owned after)."},
    {"room", (PyCFunction)Conn_room, METH_NOARGS, "How many more streams open() takes now."},
    {"respond", (PyCFunction)Conn_respond, METH_VARARGS,
     "respond(stream_id, fd, buffered=b'', eof=False): server: answer 200 and splice fd."},
    {"accept", (PyCFunction)Conn_accept, METH_O, "Server: answer 200 (attach() follows)."},
    {"refuse", (PyCFunction)Conn_refuse, METH_VARARGS,
     "refuse(stream_id, status): server: answer status and end the stream."},
    {"attach", (PyCFunction)Conn_attach, METH_VARARGS,
     "attach(stream_id, fd, buffered, eof): splice the stream to a TCP socket (owned after)."},
    {"reset_stream", (PyCFunction)Conn_reset_stream, METH_VARARGS,
     "reset_stream(stream_id, code): RST_STREAM, and abort its TCP socket."},
    {"drain", (PyCFunction)Conn_drain, METH_NOARGS,
     "GOAWAY; open streams finish, then the connection closes."},
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
    INTERN(str_request, "_native_request");
    INTERN(str_response, "_native_response");
    INTERN(str_goaway, "_native_goaway");
    INTERN(str_error, "_native_error");
    INTERN(str_lost, "_native_lost");
    INTERN(str_finished, "_native_finished");
    if (PyType_Ready(&ConnType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&ConnType);
    if (PyModule_AddObject(m, "Connection", (PyObject *)&ConnType) < 0) return NULL;
    if (weft_hpack_add_functions(m) < 0) return NULL;
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0)
        return NULL;
    /* weft.hbone.native_session refuses a module built from other sources (a stale build) */
    if (PyModule_AddIntConstant(m, "API_VERSION", WEFT_NATIVE_API_VERSION) < 0) return NULL;
    return m;
}
