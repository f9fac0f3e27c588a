/* HPACK (RFC 7541) header-block decoder of the native HTTP/2 engine; the interface is hpack.h.
 *
 * Memory: the dynamic table holds at most settings_max bytes of names and values (RFC size, so
 * fewer real bytes) in at most settings_max / 32 entries; a block's Huffman strings decode into
 * one scratch buffer bounded by the block's own length (8/5 of it: no code is shorter than 5 bits),
 * on the stack for usual blocks. Nothing else grows with what the peer sends.
 */
#define PY_SSIZE_T_CLEAN
#include "hpack.h"

#include <Python.h>
#include <stdlib.h>
#include <string.h>

#include "huffman_table.h"

struct hpack_entry {
    uint8_t *data; /* name then value, one allocation */
    size_t name_len, value_len;
};

#define ENTRY_OVERHEAD 32 /* RFC 7541 4.1 */
/* Integers: the largest any field needs (a size update up to a 32-bit SETTINGS value); more
 * continuation bytes than this can hold, or a value above it, is refused. */
#define INT_MAX_VALUE 0xffffffffu
#define SCRATCH_STACK 1024

/* ---- RFC 7541 Appendix A ------------------------------------------------------------------- */

typedef struct {
    const char *name, *value;
    uint8_t name_len, value_len;
} static_entry;

#define S(n, v) {n, v, sizeof(n) - 1, sizeof(v) - 1}
static const static_entry static_table[] = {
    S(":authority", ""), S(":method", "GET"), S(":method", "POST"), S(":path", "/"),
    S(":path", "/index.html"), S(":scheme", "http"), S(":scheme", "https"), S(":status", "200"),
    S(":status", "204"), S(":status", "206"), S(":status", "304"), S(":status", "400"),
    S(":status", "404"), S(":status", "500"), S("accept-charset", ""),
    S("accept-encoding", "gzip, deflate"), S("accept-language", ""), S("accept-ranges", ""),
    S("accept", ""), S("access-control-allow-origin", ""), S("age", ""), S("allow", ""),
    S("authorization", ""), S("cache-control", ""), S("content-disposition", ""),
    S("content-encoding", ""), S("content-language", ""), S("content-length", ""),
    S("content-location", ""), S("content-range", ""), S("content-type", ""), S("cookie", ""),
    S("date", ""), S("etag", ""), S("expect", ""), S("expires", ""), S("from", ""), S("host", ""),
    S("if-match", ""), S("if-modified-since", ""), S("if-none-match", ""), S("if-range", ""),
    S("if-unmodified-since", ""), S("last-modified", ""), S("link", ""), S("location", ""),
    S("max-forwards", ""), S("proxy-authenticate", ""), S("proxy-authorization", ""),
    S("range", ""), S("referer", ""), S("refresh", ""), S("retry-after", ""), S("server", ""),
    S("set-cookie", ""), S("strict-transport-security", ""), S("transfer-encoding", ""),
    S("user-agent", ""), S("vary", ""), S("via", ""), S("www-authenticate", ""),
};
#undef S
#define STATIC_COUNT (sizeof(static_table) / sizeof(static_table[0])) /* 61 */

/* ---- the dynamic table (a ring, newest at `first`) ----------------------------------------- */

void hpack_decoder_init(hpack_decoder *d, size_t settings_max) {
    memset(d, 0, sizeof(*d));
    d->settings_max = settings_max;
    d->max_size = settings_max;
}

static hpack_entry *entry_at(hpack_decoder *d, size_t i) { /* i = 0 is the newest */
    return &d->entries[(d->first + i) % d->capacity_entries];
}

static void evict_oldest(hpack_decoder *d) {
    hpack_entry *e = entry_at(d, d->count - 1);
    d->size -= e->name_len + e->value_len + ENTRY_OVERHEAD;
    free(e->data);
    e->data = NULL;
    d->count--;
    if (d->count == 0) d->first = 0;
}

static void evict_to(hpack_decoder *d, size_t limit) {
    while (d->size > limit) evict_oldest(d);
}

void hpack_decoder_free(hpack_decoder *d) {
    evict_to(d, 0);
    free(d->entries);
    d->entries = NULL;
    d->capacity_entries = 0;
}

/* Room for one more entry: the ring doubles, up to the most entries max_size can hold. */
static int reserve_entry(hpack_decoder *d) {
    if (d->count < d->capacity_entries) return 0;
    size_t cap = d->capacity_entries ? d->capacity_entries * 2 : 8;
    size_t most = d->settings_max / ENTRY_OVERHEAD;
    if (cap > most) cap = most;
    if (cap <= d->count) cap = d->count + 1;
    hpack_entry *entries = malloc(cap * sizeof(*entries));
    if (!entries) return -1;
    for (size_t i = 0; i < d->count; i++) entries[i] = *entry_at(d, i);
    free(d->entries);
    d->entries = entries;
    d->capacity_entries = cap;
    d->first = 0;
    return 0;
}

/* RFC 7541 4.4: evict until the new entry fits; one larger than the table empties it. The name
 * may point into an entry evicted here, so it is copied first. */
static int add_entry(hpack_decoder *d, const uint8_t *name, size_t name_len, const uint8_t *value,
                     size_t value_len) {
    size_t esize = name_len + value_len + ENTRY_OVERHEAD;
    if (esize > d->max_size) {
        evict_to(d, 0);
        return 0;
    }
    uint8_t *data = malloc(name_len + value_len ? name_len + value_len : 1);
    if (!data) return -1;
    memcpy(data, name, name_len);
    memcpy(data + name_len, value, value_len);
    evict_to(d, d->max_size - esize);
    if (reserve_entry(d) < 0) {
        free(data);
        return -1;
    }
    d->first = (d->first + d->capacity_entries - 1) % d->capacity_entries;
    d->entries[d->first] = (hpack_entry){data, name_len, value_len};
    d->count++;
    d->size += esize;
    return 0;
}

/* Index 1..61 static, 62.. dynamic (newest first); 0 or past the end is an error. */
static int lookup(hpack_decoder *d, uint32_t index, const uint8_t **name, size_t *name_len,
                  const uint8_t **value, size_t *value_len) {
    if (index == 0) return -1;
    if (index <= STATIC_COUNT) {
        const static_entry *s = &static_table[index - 1];
        *name = (const uint8_t *)s->name;
        *name_len = s->name_len;
        *value = (const uint8_t *)s->value;
        *value_len = s->value_len;
        return 0;
    }
    if (index - STATIC_COUNT - 1 >= d->count) return -1;
    hpack_entry *e = entry_at(d, index - STATIC_COUNT - 1);
    *name = e->data;
    *name_len = e->name_len;
    *value = e->data + e->name_len;
    *value_len = e->value_len;
    return 0;
}

/* ---- primitives (RFC 7541 5) --------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end;
    const char *error;
    uint8_t *scratch; /* Huffman output, reset per field */
    size_t scratch_used, scratch_cap;
    uint8_t *heap_scratch;
    uint8_t stack_scratch[SCRATCH_STACK];
    size_t block_len;
} reader;

#define READ_FAIL(r, msg) ((r)->error = (msg), -1)

/* 5.1: the prefix is the low `bits` of the current byte. */
static int read_int(reader *r, int bits, uint32_t *out) {
    if (r->p >= r->end) return READ_FAIL(r, "header block truncated in an integer");
    uint32_t mask = (1u << bits) - 1;
    uint64_t value = *r->p++ & mask;
    if (value < mask) {
        *out = (uint32_t)value;
        return 0;
    }
    for (int shift = 0;; shift += 7) {
        if (r->p >= r->end) return READ_FAIL(r, "header block truncated in an integer");
        uint8_t b = *r->p++;
        /* a zero byte after the first continuation adds nothing: only an overlong encoding
         * (or one padded to hide a huge value) has one */
        if (shift > 0 && b == 0) return READ_FAIL(r, "overlong integer encoding");
        if (shift > 28) return READ_FAIL(r, "integer too large");
        value += (uint64_t)(b & 0x7f) << shift;
        if (value > INT_MAX_VALUE) return READ_FAIL(r, "integer too large");
        if (!(b & 0x80)) break;
    }
    *out = (uint32_t)value;
    return 0;
}

static int huffman_decode(reader *r, const uint8_t *in, size_t len, uint8_t **out,
                          size_t *out_len) {
    if (!r->scratch) {
        size_t cap = r->block_len / 5 * 8 + 8; /* >= 8/5 of the whole block */
        if (cap <= SCRATCH_STACK) {
            r->scratch = r->stack_scratch;
        } else {
            r->heap_scratch = malloc(cap);
            if (!r->heap_scratch) return READ_FAIL(r, "out of memory");
            r->scratch = r->heap_scratch;
        }
        r->scratch_cap = cap;
    }
    /* at most floor(8 len / 5) symbols; these add up to no more than the block's bound */
    if (len / 5 * 8 + len % 5 * 8 / 5 > r->scratch_cap - r->scratch_used)
        return READ_FAIL(r, "Huffman scratch buffer too small"); /* cannot happen */
    uint8_t *dst = r->scratch + r->scratch_used, *o = dst;
    unsigned state = 0;
    for (size_t i = 0; i < len; i++) {
        const huff_step *s = &huff_steps[state][in[i] >> 4];
        if (s->flags & HUFF_FAIL) return READ_FAIL(r, "Huffman string contains EOS");
        if (s->flags & HUFF_EMIT) *o++ = s->symbol;
        s = &huff_steps[s->state][in[i] & 0xf];
        if (s->flags & HUFF_FAIL) return READ_FAIL(r, "Huffman string contains EOS");
        if (s->flags & HUFF_EMIT) *o++ = s->symbol;
        state = s->state;
    }
    if (!(huff_state[state] & HUFF_ACCEPT))
        return READ_FAIL(r, huff_state[state] & HUFF_ONES ? "Huffman padding longer than 7 bits"
                                                     : "Huffman padding not all ones");
    *out = dst;
    *out_len = (size_t)(o - dst);
    r->scratch_used += *out_len;
    return 0;
}

/* 5.2: a string literal, raw (pointing into the block) or Huffman (into the scratch buffer). */
static int read_string(reader *r, const uint8_t **out, size_t *out_len) {
    if (r->p >= r->end) return READ_FAIL(r, "header block truncated in a string length");
    int huffman = *r->p & 0x80;
    uint32_t len;
    if (read_int(r, 7, &len) < 0) return -1;
    if (len > (size_t)(r->end - r->p)) return READ_FAIL(r, "string literal longer than the header block");
    const uint8_t *in = r->p;
    r->p += len;
    if (!huffman) {
        *out = in;
        *out_len = len;
        return 0;
    }
    uint8_t *decoded;
    if (huffman_decode(r, in, len, &decoded, out_len) < 0) return -1;
    *out = decoded;
    return 0;
}

/* ---- one block (RFC 7541 6) ---------------------------------------------------------------- */

int hpack_decode(hpack_decoder *d, const uint8_t *block, size_t len, size_t max_list_size,
                 hpack_emit_fn emit, void *ctx, const char **error) {
    reader r;
    r.p = block;
    r.end = block + len;
    r.error = NULL;
    r.scratch = r.heap_scratch = NULL;
    r.scratch_used = r.scratch_cap = 0;
    r.block_len = len;
    size_t list_size = 0;
    int too_large = 0, fields = 0, size_updates = 0, rc = HPACK_ERROR;

    while (r.p < r.end) {
        uint8_t first = *r.p;
        uint32_t index;
        const uint8_t *name, *value;
        size_t name_len, value_len;
        int indexing = 0;
        r.scratch_used = 0;

        if (first & 0x80) { /* 6.1 indexed field */
            if (read_int(&r, 7, &index) < 0) goto out;
            if (index == 0) {
                r.error = "indexed header field with index 0";
                goto out;
            }
            if (lookup(d, index, &name, &name_len, &value, &value_len) < 0) {
                r.error = "header field index out of range";
                goto out;
            }
        } else if ((first & 0xe0) == 0x20) { /* 6.3 dynamic table size update */
            uint32_t size;
            if (read_int(&r, 5, &size) < 0) goto out;
            if (fields) {
                r.error = "dynamic table size update after a header field";
                goto out;
            }
            if (++size_updates > 2) {
                r.error = "more than two dynamic table size updates in a block";
                goto out;
            }
            if (size > d->settings_max) {
                r.error = "dynamic table size update above SETTINGS_HEADER_TABLE_SIZE";
                goto out;
            }
            d->max_size = size;
            evict_to(d, size);
            continue;
        } else { /* 6.2 literals: with incremental indexing, without, never indexed */
            indexing = (first & 0xc0) == 0x40;
            if (read_int(&r, indexing ? 6 : 4, &index) < 0) goto out;
            if (index) {
                const uint8_t *unused;
                size_t unused_len;
                if (lookup(d, index, &name, &name_len, &unused, &unused_len) < 0) {
                    r.error = "header name index out of range";
                    goto out;
                }
            } else if (read_string(&r, &name, &name_len) < 0) {
                goto out;
            }
            if (read_string(&r, &value, &value_len) < 0) goto out;
        }
        fields++;

        /* emit before adding: adding may evict the entry the name points into */
        if (!too_large) {
            list_size += name_len + value_len + ENTRY_OVERHEAD;
            if (list_size > max_list_size) {
                too_large = 1;
            } else if (emit(ctx, name, name_len, value, value_len)) {
                r.error = "header field refused by the caller";
                goto out;
            }
        }
        if (indexing && add_entry(d, name, name_len, value, value_len) < 0) {
            r.error = "out of memory";
            goto out;
        }
    }
    rc = too_large ? HPACK_TOO_LARGE : HPACK_OK;
    if (too_large) r.error = "header list larger than SETTINGS_MAX_HEADER_LIST_SIZE";
out:
    free(r.heap_scratch);
    if (error) *error = r.error;
    return rc;
}

/* ---- the test hook: weft._native.hpack_decode ---------------------------------------------- */

static int emit_tuple(void *ctx, const uint8_t *name, size_t name_len, const uint8_t *value,
                      size_t value_len) {
    PyObject *field = Py_BuildValue("(y#y#)", (const char *)name, (Py_ssize_t)name_len,
                                    (const char *)value, (Py_ssize_t)value_len);
    if (!field) return -1;
    int rc = PyList_Append((PyObject *)ctx, field);
    Py_DECREF(field);
    return rc;
}

/* Every block is decoded (a too-large one keeps the table in step, so the ones after it still
 * decode); then ValueError for the first HPACK_ERROR, or OverflowError(message, results) for a
 * too-large block, where results holds every block's list (the too-large one's up to the limit). */
static PyObject *py_hpack_decode(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *kwlist[] = {"blocks", "settings_max", "max_list_size", NULL};
    PyObject *blocks;
    Py_ssize_t settings_max = 4096, max_list_size = 65536;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|nn:hpack_decode", kwlist, &blocks,
                                     &settings_max, &max_list_size))
        return NULL;
    if (settings_max < 0 || max_list_size < 0) {
        PyErr_SetString(PyExc_ValueError, "settings_max and max_list_size must be >= 0");
        return NULL;
    }
    PyObject *seq = PySequence_Fast(blocks, "hpack_decode: blocks must be a list of bytes");
    if (!seq) return NULL;
    PyObject *results = PyList_New(0);
    hpack_decoder d;
    hpack_decoder_init(&d, (size_t)settings_max);
    const char *too_large = NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    for (Py_ssize_t i = 0; results && i < n; i++) {
        PyObject *block = PySequence_Fast_GET_ITEM(seq, i);
        if (!PyBytes_Check(block)) {
            PyErr_Format(PyExc_TypeError, "hpack_decode: block %zd is %.100s, not bytes", i,
                         Py_TYPE(block)->tp_name);
            Py_CLEAR(results);
            break;
        }
        PyObject *fields = PyList_New(0);
        if (!fields || PyList_Append(results, fields) < 0) {
            Py_XDECREF(fields);
            Py_CLEAR(results);
            break;
        }
        Py_DECREF(fields); /* results holds it */
        const char *error = NULL;
        int rc = hpack_decode(&d, (const uint8_t *)PyBytes_AS_STRING(block),
                              (size_t)PyBytes_GET_SIZE(block), (size_t)max_list_size, emit_tuple,
                              fields, &error);
        if (rc == HPACK_ERROR) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, error);
            Py_CLEAR(results);
        } else if (rc == HPACK_TOO_LARGE && !too_large) {
            too_large = error;
        }
    }
    hpack_decoder_free(&d);
    Py_DECREF(seq);
    if (results && too_large) {
        PyObject *exc_args = Py_BuildValue("(sO)", too_large, results);
        if (exc_args) {
            PyErr_SetObject(PyExc_OverflowError, exc_args);
            Py_DECREF(exc_args);
        }
        Py_CLEAR(results);
    }
    return results;
}

static PyMethodDef hpack_methods[] = {
    {"hpack_decode", (PyCFunction)(void (*)(void))py_hpack_decode, METH_VARARGS | METH_KEYWORDS,
     "hpack_decode(blocks, settings_max=4096, max_list_size=65536) -> list of [(name, value)]\n"
     "Decodes HPACK header blocks in order with one decoder (test hook of weft/native/hpack.c)."},
    {NULL, NULL, 0, NULL},
};

int weft_hpack_add_functions(PyObject *module) {
    return PyModule_AddFunctions(module, hpack_methods);
}
