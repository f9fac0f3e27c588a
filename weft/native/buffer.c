/* weft._native: byte buffers and frame-header packing. */
#include "native.h"

int buf_reserve(Buf *b, size_t extra) {
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

int buf_append(Buf *b, const void *src, size_t n) {
    if (!n) return 0; /* src may be NULL then (an empty Py_buffer) */
    if (buf_reserve(b, n) < 0) return -1;
    memcpy(b->data + b->off + b->len, src, n);
    b->len += n;
    return 0;
}

void buf_consume(Buf *b, size_t n) {
    b->off += n;
    b->len -= n;
    if (!b->len) b->off = 0;
}

void buf_free(Buf *b) {
    free(b->data);
    memset(b, 0, sizeof(*b));
}

/* Give memory back once a burst is over (a 4 MiB backlog must not stay allocated). */
void buf_shrink(Buf *b) {
    if (!b->len && b->cap > 1024 * 1024) buf_free(b);
}

void put_header(unsigned char *p, uint32_t len, int type, int flags, uint32_t sid) {
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

uint32_t be32(const unsigned char *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

void put32(unsigned char *p, uint32_t v) {
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}
