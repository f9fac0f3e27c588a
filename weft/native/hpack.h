/* HPACK (RFC 7541) header-block decoder for the native HTTP/2 engine (weft._native).
 *
 * The native engine speaks all of HTTP/2 itself, so it must decode whatever a conforming peer
 * sends: indexed fields, literals with and without indexing, never-indexed literals, Huffman
 * strings, the dynamic table and its size updates. Encoding is not here: the agent's CONNECT
 * blocks come pre-encoded from weft.hbone.connect_block and a response is one static field.
 */
#ifndef WEFT_HPACK_H
#define WEFT_HPACK_H

#include <Python.h>
#include <stddef.h>
#include <stdint.h>

#define HPACK_OK 0
/* COMPRESSION_ERROR (RFC 7541 / RFC 9113 4.3): the decoder state is lost, so the connection
 * must end with GOAWAY(COMPRESSION_ERROR). */
#define HPACK_ERROR (-1)
/* The decoded header list is larger than max_list_size (RFC 9113 SETTINGS_MAX_HEADER_LIST_SIZE
 * counting: name + value + 32 per field). The whole block was still decoded, so the dynamic table
 * is in step with the peer's and only this stream need be refused. No field was emitted after the
 * limit was crossed. */
#define HPACK_TOO_LARGE (-2)

typedef struct hpack_entry hpack_entry;

typedef struct {
    /* the dynamic table, newest first; sizes count name + value + 32 per entry */
    hpack_entry *entries;
    size_t count, capacity_entries;
    size_t first;           /* ring buffer start */
    size_t size;            /* current size (RFC 7541 4.1) */
    size_t max_size;        /* current maximum, set by the peer's size updates */
    size_t settings_max;    /* our SETTINGS_HEADER_TABLE_SIZE: the most a size update may ask */
} hpack_decoder;

/* Called once per decoded field, in order. Return 0 to go on; non-zero stops decoding and
 * hpack_decode() returns HPACK_ERROR with *error = "header field refused by the caller". */
typedef int (*hpack_emit_fn)(void *ctx, const uint8_t *name, size_t name_len,
                             const uint8_t *value, size_t value_len);

/* settings_max: our SETTINGS_HEADER_TABLE_SIZE (4096 unless we advertise another). */
void hpack_decoder_init(hpack_decoder *d, size_t settings_max);
void hpack_decoder_free(hpack_decoder *d);

/* Decode one complete header block (a HEADERS payload and its CONTINUATIONs, joined, padding and
 * priority removed). Returns HPACK_OK, HPACK_ERROR or HPACK_TOO_LARGE; on an error *error names
 * what was wrong (a static string). */
int hpack_decode(hpack_decoder *d, const uint8_t *block, size_t len, size_t max_list_size,
                 hpack_emit_fn emit, void *ctx, const char **error);

/* Adds the test hook to the weft._native module (called from its init):
 *   weft._native.hpack_decode(blocks: list[bytes], settings_max: int = 4096,
 *                             max_list_size: int = 65536) -> list[list[tuple[bytes, bytes]]]
 * decodes the blocks in order with one decoder (so the dynamic table carries over) and raises
 * ValueError(the error message) for HPACK_ERROR, OverflowError for HPACK_TOO_LARGE. */
int weft_hpack_add_functions(PyObject *module);

#endif
