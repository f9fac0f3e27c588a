/* weft._native: the compiled HBONE data path of one TLS connection (see weft/native/README.md).
 * This header is what the engine's files share: buffer.c (buffers), io.c (event loop, TLS, the
 * end of a connection), frames.c (HTTP/2 frames), streams.c (streams and their splice) and
 * hbone.c (the Connection type and the module).
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
#ifndef WEFT_NATIVE_H
#define WEFT_NATIVE_H

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
#include <sys/epoll.h>
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

#define WEFT_NATIVE_API_VERSION 3
#define MAX_STREAM_ID 0x7fffffffU
/* A header block (HEADERS + CONTINUATION) larger than this ends the connection: it cannot be
 * skipped without losing the HPACK state, and a CONNECT needs a few hundred bytes. */
#define MAX_HEADER_BLOCK (64 * 1024)
#define MAX_WINDOW 0x7fffffffLL
#define PREFACE_LEN 24
#define READ_MAX (256 * 1024)      /* one TCP read: one DATA frame (if the peer allows it) */
#define OUT_HIGH (1024 * 1024)     /* stop reading TCP above this many unsent TLS bytes */
#define OUT_LOW (256 * 1024)       /* ... and resume below this */
#define TLS_READ_CHUNK (64 * 1024) /* room kept free in the inbound buffer for one SSL_read */

typedef struct {
    char *data;
    size_t off, len, cap; /* the bytes are data[off, off + len) */
} Buf;

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
        refused : 1,   /* client: above the last stream id of the peer's GOAWAY */
        watched : 1,   /* fd is in the connection's epoll set */
        rdhup : 1;     /* epoll saw the peer's FIN: read on to it past a short read */
} Stream;

typedef struct {
    PyObject_HEAD
    SSL *ssl;
    int fd;
    int server;
    PyObject *loop, *owner;
    PyObject *cb_tls_readable, *cb_tls_writable, *cb_tcp_ready;
    int epfd; /* the TCP sockets' own epoll set (edge-triggered), registered once with the loop */
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

extern PyObject *str_add_reader, *str_remove_reader, *str_add_writer, *str_remove_writer;
extern PyObject *str_request, *str_response, *str_goaway, *str_error, *str_lost, *str_finished;

/* ---- shared between the engine's files ---- */

int buf_reserve(Buf *b, size_t extra);
int buf_append(Buf *b, const void *src, size_t n);
void buf_consume(Buf *b, size_t n);
void buf_free(Buf *b);
void buf_shrink(Buf *b);
void put_header(unsigned char *p, uint32_t len, int type, int flags, uint32_t sid);
uint32_t be32(const unsigned char *p);
Stream *find_stream(Conn *c, uint32_t id);
Stream *new_stream(Conn *c, uint32_t id);
void owner_call(Conn *c, PyObject *method, PyObject *args);
void stream_set_reading(Conn *c, Stream *s, int on);
void stream_set_writing(Conn *c, Stream *s, int on);
void set_blocked(Conn *c, Stream *s, int on);
void epoll_close(Conn *c);
void stream_read_now(Conn *c, Stream *s);
void tls_set_reading(Conn *c, int on);
void emit_window_update(Conn *c, uint32_t sid, uint64_t increment);
void put32(unsigned char *p, uint32_t v);
void emit_frame(Conn *c, int type, int flags, uint32_t sid, const void *payload, uint32_t len);
void emit_rst(Conn *c, uint32_t sid, uint32_t code);
void emit_goaway(Conn *c, uint32_t code, const char *reason);
void emit_status(Conn *c, uint32_t sid, int status, int end_stream);
void emit_preface(Conn *c);
void credit(Conn *c, Stream *s, uint64_t n);
void tls_flush(Conn *c);
void abort_fd(int fd);
void finish_stream(Conn *c, Stream *s);
int stream_read_up(Conn *c, Stream *s, int *failed);
void resume_blocked(Conn *c);
void run_checks(Conn *c);
void write_side_done(Stream *s);
void remote_ended(Conn *c, Stream *s);
void stream_error(Conn *c, Stream *s, uint32_t code);
void deliver(Conn *c, Stream *s, const char *data, size_t len);
void parse(Conn *c);
void teardown(Conn *c);
void after_callback(Conn *c);
void tls_read(Conn *c);
int attach_common(Conn *c, Stream *s, int fd, const char *buffered, size_t len, int eof,
                  int nodelay_set);
long room(Conn *c);

#endif
