/* weft._native's module: the Connection type, its methods (calls from Python and the event
 * loop) and the module's init. See native.h for how the engine is split. */
#include "native.h"

#include <arpa/inet.h>

PyObject *str_add_reader, *str_remove_reader, *str_add_writer, *str_remove_writer;
PyObject *str_request, *str_response, *str_goaway, *str_error, *str_lost, *str_finished;
static PyTypeObject *ssl_context_type;

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
    /* one read() takes every record that arrived, not a header read and a body read per record
     * (tls_read reads on to SSL_ERROR_WANT_READ, so nothing is left in OpenSSL's buffer) */
    SSL_set_read_ahead(c->ssl, 1);
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
    c->cb_tcp_ready = PyObject_GetAttrString((PyObject *)c, "_tcp_ready");
    c->epfd = -1;
    if (!c->fd_obj || !c->cb_tls_readable || !c->cb_tls_writable || !c->cb_tcp_ready)
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

/* A socket is writable again: write what the tunnel sent that it had not taken. */
static void tcp_writable(Conn *c, Stream *s) {
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
}

/* The TCP sockets' epoll set is readable: act on every edge, then flush once (the DATA of all
 * the streams that were read leave in one TLS write). */
static PyObject *Conn_tcp_ready(Conn *c, PyObject *unused) {
    if (c->epfd < 0) Py_RETURN_NONE;
    Py_INCREF(c);
    c->in_callback++;
    struct epoll_event events[64];
    for (int round = 0; round < 4 && c->epfd >= 0 && !c->torn_down; round++) {
        int n = epoll_wait(c->epfd, events, 64, 0);
        for (int i = 0; i < n; i++) {
            Stream *s = find_stream(c, (uint32_t)events[i].data.u64);
            uint32_t ev = events[i].events;
            if (!s || s->fd < 0 || s->reset) continue; /* finished since: its fd is closed */
            if (ev & (EPOLLRDHUP | EPOLLHUP)) s->rdhup = 1;
            if ((ev & (EPOLLOUT | EPOLLERR | EPOLLHUP)) && s->writing) tcp_writable(c, s);
            if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLERR | EPOLLHUP)) && s->reading &&
                !s->reset_pending)
                stream_read_now(c, s);
        }
        if (n < 64) break;
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

static PyObject *closed_stream(unsigned long sid, int fd) {
    if (fd >= 0) close(fd);
    PyErr_Format(PyExc_ConnectionError, "HBONE stream %lu is closed", sid);
    return NULL;
}

static PyObject *Conn_room(Conn *c, PyObject *unused) { return PyLong_FromLong(room(c)); }

/* open(sid, block, fd=-1, buffered=b"", nodelay_set=False): HEADERS (CONNECT) on a new stream,
 * whose id the caller names (it is known to Python before any callback about it); with fd, the
 * socket's bytes follow as DATA at once, in the same TLS write. nodelay_set: fd has TCP_NODELAY
 * already (an accepted socket inherits it from its listener): no setsockopt here. */
static PyObject *Conn_open(Conn *c, PyObject *args) {
    Py_buffer block, buffered = {0};
    int fd = -1, nodelay_set = 0;
    unsigned long wanted;
    if (!PyArg_ParseTuple(args, "ky*|iy*p", &wanted, &block, &fd, &buffered, &nodelay_set))
        return NULL;
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
        failed = attach_common(c, s, fd, buffered.buf, buffered.buf ? (size_t)buffered.len : 0, 0,
                               nodelay_set);
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
    int failed =
        attach_common(c, s, fd, buffered.buf, buffered.buf ? (size_t)buffered.len : 0, eof, 0);
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
    int failed = attach_common(c, s, fd, buffered.buf, (size_t)buffered.len, eof, 0);
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

/* No descriptor is owned until __init__ succeeds (0 is not "none": it is stdin). */
static PyObject *Conn_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Conn *c = (Conn *)PyType_GenericNew(type, args, kwds);
    if (c) {
        c->fd = -1;
        c->epfd = -1;
    }
    return (PyObject *)c;
}

static int Conn_traverse(Conn *c, visitproc visit, void *arg) {
    Py_VISIT(c->loop);
    Py_VISIT(c->owner);
    Py_VISIT(c->cb_tls_readable);
    Py_VISIT(c->cb_tls_writable);
    Py_VISIT(c->cb_tcp_ready);
    return 0;
}

static int Conn_clear(Conn *c) {
    Py_CLEAR(c->loop);
    Py_CLEAR(c->owner);
    Py_CLEAR(c->cb_tls_readable);
    Py_CLEAR(c->cb_tls_writable);
    Py_CLEAR(c->cb_tcp_ready);
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
    if (c->epfd >= 0) close(c->epfd); /* not torn down: the loop is gone too */
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
     "open(stream_id, block, fd=-1, buffered=b'', nodelay_set=False): client: send a CONNECT "
     "(an HPACK block without the dynamic table) on the next stream and splice fd (owned "
     "after; nodelay_set: it has TCP_NODELAY already)."},
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
    {"_tcp_ready", (PyCFunction)Conn_tcp_ready, METH_NOARGS, NULL},
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
    .tp_new = Conn_new,
    .tp_init = (initproc)Conn_init,
    .tp_dealloc = (destructor)Conn_dealloc,
    .tp_traverse = (traverseproc)Conn_traverse,
    .tp_clear = (inquiry)Conn_clear,
    .tp_methods = Conn_methods,
    .tp_getset = Conn_getset,
};

/* accept(listener_fd): one waiting connection as (fd, peer host, peer port), None if none waits.
 * accept4(SOCK_NONBLOCK | SOCK_CLOEXEC): the socket is non-blocking from the start, without the
 * ioctl(FIONBIO) a Python socket's setblocking(False) costs per connection. */
static PyObject *native_accept(PyObject *unused, PyObject *arg) {
    long listener = PyLong_AsLong(arg);
    if (listener == -1 && PyErr_Occurred()) return NULL;
    struct sockaddr_storage peer;
    socklen_t len = sizeof(peer);
    int fd = accept4((int)listener, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) Py_RETURN_NONE;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    char host[INET6_ADDRSTRLEN];
    unsigned port;
    const char *text = NULL;
    if (peer.ss_family == AF_INET) {
        struct sockaddr_in *in4 = (struct sockaddr_in *)&peer;
        text = inet_ntop(AF_INET, &in4->sin_addr, host, sizeof(host));
        port = ntohs(in4->sin_port);
    } else if (peer.ss_family == AF_INET6) {
        struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&peer;
        text = inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
        port = ntohs(in6->sin6_port);
    }
    if (!text) {
        close(fd);
        PyErr_Format(PyExc_OSError, "accept(): a peer of address family %d, not IPv4 or IPv6",
                     (int)peer.ss_family);
        return NULL;
    }
    PyObject *result = Py_BuildValue("(isI)", fd, host, port);
    if (!result) close(fd);
    return result;
}

static PyMethodDef module_methods[] = {
    {"accept", (PyCFunction)native_accept, METH_O,
     "accept(listener_fd): (fd, peer host, peer port) of a waiting connection, non-blocking "
     "and close-on-exec from accept4(); None if none waits; OSError on other errors."},
    {NULL, NULL, 0, NULL},
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
    if (PyModule_AddFunctions(m, module_methods) < 0) return NULL;
    if (PyModule_AddStringConstant(m, "OPENSSL_VERSION", OpenSSL_version(OPENSSL_VERSION)) < 0)
        return NULL;
    /* weft.hbone.native_session refuses a module built from other sources (a stale build) */
    if (PyModule_AddIntConstant(m, "API_VERSION", WEFT_NATIVE_API_VERSION) < 0) return NULL;
    return m;
}
