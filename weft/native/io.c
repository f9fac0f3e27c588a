/* weft._native: the event loop (reader/writer registration), calls into the owner, TLS reads
 * and writes, and the end of a connection. */
#include "native.h"

static void conn_lost(Conn *c, const char *reason);

static void report_unraisable(const char *where) {
    if (PyErr_Occurred()) {
        PyObject *context = PyUnicode_FromString(where);
        PyErr_WriteUnraisable(context);
        Py_XDECREF(context);
    }
}

void owner_call(Conn *c, PyObject *method, PyObject *args) {
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

/* The connection's TCP sockets are watched by its own edge-triggered epoll set, registered once
 * with the event loop (Conn._tcp_ready): a socket costs one epoll_ctl and no call into the loop.
 * (uvloop's add_reader/remove_reader per socket cost a handle each way and about five epoll_ctl
 * calls, libuv checking each descriptor with an ADD and a DEL first.) Closing a socket takes it
 * out of the set. */
static int ensure_epoll(Conn *c) {
    if (c->epfd >= 0) return 0;
    c->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (c->epfd < 0) return -1;
    PyObject *fd = PyLong_FromLong(c->epfd);
    PyObject *r =
        fd ? PyObject_CallMethodObjArgs(c->loop, str_add_reader, fd, c->cb_tcp_ready, NULL) : NULL;
    Py_XDECREF(fd);
    if (!r) {
        report_unraisable("weft._native: add_reader");
        close(c->epfd);
        c->epfd = -1;
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

void epoll_close(Conn *c) {
    if (c->epfd < 0) return;
    PyObject *fd = PyLong_FromLong(c->epfd);
    PyObject *r = fd ? PyObject_CallMethodObjArgs(c->loop, str_remove_reader, fd, NULL) : NULL;
    Py_XDECREF(fd);
    if (!r) report_unraisable("weft._native: remove_reader");
    Py_XDECREF(r);
    close(c->epfd);
    c->epfd = -1;
}

/* Readable and writable edges are both watched from the start (edge-triggered: no event storm
 * at EOF, no re-registration); `reading` and `writing` say whether an edge is acted on. An edge
 * ignored while reading was off is made up for by stream_read_now() when it resumes. */
static void stream_watch(Conn *c, Stream *s) {
    if (s->watched || s->fd < 0) return;
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
    ev.data.u64 = s->id;
    if (ensure_epoll(c) < 0 || epoll_ctl(c->epfd, EPOLL_CTL_ADD, s->fd, &ev) < 0) {
        s->reset_pending = 1;
        s->check = 1;
        return;
    }
    s->watched = 1;
}

void stream_set_reading(Conn *c, Stream *s, int on) {
    if (s->fd < 0) return;
    s->reading = on;
    if (on) stream_watch(c, s);
}

void stream_set_writing(Conn *c, Stream *s, int on) {
    if (s->fd < 0) return;
    s->writing = on;
    if (on) stream_watch(c, s);
}

void set_blocked(Conn *c, Stream *s, int on) {
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

void tls_set_reading(Conn *c, int on) {
    if (c->fd < 0 || c->tls_reading == on) return;
    c->tls_reading = on;
    PyObject *r = on ? PyObject_CallMethodObjArgs(c->loop, str_add_reader, c->fd_obj,
                                                  c->cb_tls_readable, NULL)
                     : PyObject_CallMethodObjArgs(c->loop, str_remove_reader, c->fd_obj, NULL);
    if (!r) report_unraisable("weft._native: add_reader");
    Py_XDECREF(r);
}

void tls_flush(Conn *c) {
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

void teardown(Conn *c) {
    if (c->torn_down) return;
    /* our own close (not after a TLS error, when OpenSSL forbids it): send close_notify, best
     * effort, so the peer sees a clean end */
    int graceful = c->started && !c->lost && !c->lost_pending && c->fd >= 0;
    c->torn_down = 1;
    c->lost = 1;
    tls_set_reading(c, 0);
    tls_set_writing(c, 0);
    epoll_close(c);
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
void after_callback(Conn *c) {
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

void tls_read(Conn *c) {
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
