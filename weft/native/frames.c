/* weft._native: HTTP/2 on the TLS connection: frames received (parse and act on each) and
 * frames sent (SETTINGS, GOAWAY, RST_STREAM, responses); header blocks go to hpack.c. */
#include "native.h"

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
#define STOPPED(c) ((c)->error_code || (c)->errored || DEAD(c))

typedef struct {
    int status;   /* -1: none, 0: malformed */
    int pseudo;   /* other pseudo-headers or a repeated :status */
} Response;

void emit_window_update(Conn *c, uint32_t sid, uint64_t increment) {
    unsigned char frame[13];
    put_header(frame, 4, F_WINDOW_UPDATE, 0, sid);
    frame[9] = (unsigned char)(increment >> 24) & 0x7f;
    frame[10] = (unsigned char)(increment >> 16);
    frame[11] = (unsigned char)(increment >> 8);
    frame[12] = (unsigned char)increment;
    buf_append(&c->out, frame, sizeof(frame));
}

void emit_frame(Conn *c, int type, int flags, uint32_t sid, const void *payload,
                       uint32_t len) {
    unsigned char header[9];
    put_header(header, len, type, flags, sid);
    buf_append(&c->out, header, 9);
    buf_append(&c->out, payload, len);
}

void emit_rst(Conn *c, uint32_t sid, uint32_t code) {
    unsigned char payload[4];
    put32(payload, code);
    emit_frame(c, F_RST, 0, sid, payload, 4);
}

/* GOAWAY naming the last stream the peer opened that we may serve (a client serves none). */
void emit_goaway(Conn *c, uint32_t code, const char *reason) {
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
void emit_status(Conn *c, uint32_t sid, int status, int end_stream) {
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
void emit_preface(Conn *c) {
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

static void conn_error(Conn *c, int code, const char *reason) {
    if (c->error_code || c->errored) return;
    c->error_code = code;
    snprintf(c->error_reason, sizeof(c->error_reason), "%s", reason);
}

/* A frame for a stream the peer could not have opened yet (RFC 9113 5.1: idle). */
static int is_idle(Conn *c, uint32_t sid) {
    if (c->server) return !(sid & 1) || sid > c->highest_stream;
    return !(sid & 1) || sid >= c->next_stream;
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
void parse(Conn *c) {
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
