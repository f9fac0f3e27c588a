"""weft._native's HPACK decoder (weft/native/hpack.c) through its test hook hpack_decode.

RFC 7541 Appendix C's examples, hpack's own encoder as the reference for random header lists,
random bytes for robustness, and every decoding error the decoder must refuse.
"""

from __future__ import annotations

from collections.abc import Callable

import hpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from weft.hbone.native_session import native_available

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(
        not native_available(),
        reason="weft._native is not built (pip install -e . with libssl-dev)",
    ),
]

Fields = list[tuple[bytes, bytes]]
Decode = Callable[..., list[Fields]]


@pytest.fixture(scope="module")
def decode() -> Decode:
    from weft import _native

    hook: Decode = _native.hpack_decode
    return hook


def h(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def fields(*pairs: tuple[str, str]) -> Fields:
    return [(n.encode(), v.encode()) for n, v in pairs]


# ---- RFC 7541 Appendix C ----------------------------------------------------------------------

REQUEST_1 = fields(
    (":method", "GET"), (":scheme", "http"), (":path", "/"), (":authority", "www.example.com")
)
REQUEST_2 = [*REQUEST_1, (b"cache-control", b"no-cache")]
REQUEST_3 = fields(
    (":method", "GET"),
    (":scheme", "https"),
    (":path", "/index.html"),
    (":authority", "www.example.com"),
    ("custom-key", "custom-value"),
)
RESPONSE_1 = fields(
    (":status", "302"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:21 GMT"),
    ("location", "https://www.example.com"),
)
RESPONSE_2 = [(b":status", b"307"), *RESPONSE_1[1:]]
RESPONSE_3 = fields(
    (":status", "200"),
    ("cache-control", "private"),
    ("date", "Mon, 21 Oct 2013 20:13:22 GMT"),
    ("location", "https://www.example.com"),
    ("content-encoding", "gzip"),
    ("set-cookie", "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1"),
)

C3 = [
    h("8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d"),
    h("8286 84be 5808 6e6f 2d63 6163 6865"),
    h("8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65"),
]
C4 = [
    h("8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff"),
    h("8286 84be 5886 a8eb 1064 9cbf"),
    h("8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf"),
]
C5 = [
    h(
        "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133"
        "2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70"
        "6c65 2e63 6f6d"
    ),
    h("4803 3330 37c1 c0bf"),
    h(
        "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d"
        "54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049"
        "5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e"
        "3d31"
    ),
]
C6 = [
    h(
        "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6"
        "2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3"
    ),
    h("4883 640e ffc1 c0bf"),
    h(
        "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab"
        "77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f"
        "9587 3160 65c0 03ed 4ee5 b106 3d50 07"
    ),
]


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (
            h("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
            fields(("custom-key", "custom-header")),
        ),
        (h("040c 2f73 616d 706c 652f 7061 7468"), fields((":path", "/sample/path"))),
        (h("1008 7061 7373 776f 7264 0673 6563 7265 74"), fields(("password", "secret"))),
        (h("82"), fields((":method", "GET"))),
    ],
    ids=["C.2.1 indexing", "C.2.2 without indexing", "C.2.3 never indexed", "C.2.4 indexed"],
)
def test_rfc7541_c2_single_fields_decode(decode: Decode, block: bytes, expected: Fields) -> None:
    assert decode([block]) == [expected]


@pytest.mark.parametrize("blocks", [C3, C4], ids=["C.3 raw", "C.4 Huffman"])
def test_rfc7541_requests_decode_with_the_dynamic_table(
    decode: Decode, blocks: list[bytes]
) -> None:
    assert decode(blocks) == [REQUEST_1, REQUEST_2, REQUEST_3]


@pytest.mark.parametrize("blocks", [C5, C6], ids=["C.5 raw", "C.6 Huffman"])
def test_rfc7541_responses_decode_with_eviction(decode: Decode, blocks: list[bytes]) -> None:
    assert decode(blocks, settings_max=256) == [RESPONSE_1, RESPONSE_2, RESPONSE_3]
    # after C.5.3 / C.6.3 the 256-byte table holds three entries (RFC: 62..64), the rest evicted
    assert decode([*blocks, h("be")], settings_max=256)[3] == [RESPONSE_3[5]]
    assert decode([*blocks, h("c0")], settings_max=256)[3] == [RESPONSE_3[2]]
    with pytest.raises(ValueError, match="index out of range"):
        decode([*blocks, h("c1")], settings_max=256)


# ---- hpack's encoder as the reference ---------------------------------------------------------

header = st.tuples(
    st.one_of(
        st.sampled_from([b":method", b":path", b":authority", b"content-type", b"x-weft"]),
        st.binary(max_size=40),
    ),
    st.one_of(st.sampled_from([b"GET", b"/", b"200", b""]), st.binary(max_size=300)),
    st.booleans(),  # never indexed
)
block_plan = st.tuples(
    st.lists(st.integers(0, 4096), max_size=2),  # table size changes before the block
    st.lists(header, max_size=12),
    st.booleans(),  # Huffman
)


Plan = list[tuple[list[int], list[tuple[bytes, bytes, bool]], bool]]


def encode_plan(plan: Plan) -> tuple[list[bytes], list[Fields]]:
    """The blocks hpack's encoder makes of the plan (one encoder), and their header lists."""
    encoder = hpack.Encoder()
    blocks, expected = [], []
    for sizes, headers, huffman in plan:
        for size in sizes:
            # hpack's encoder queues a change to the size it already has and emits it later,
            # beside the next ones: more than the two updates a block may carry
            if size != encoder.header_table_size:
                encoder.header_table_size = size
        blocks.append(encoder.encode(headers, huffman=huffman))
        expected.append([(name, value) for name, value, _ in headers])
    return blocks, expected


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(block_plan, min_size=1, max_size=8))
def test_blocks_from_hpacks_encoder_decode_to_the_same_lists(decode: Decode, plan: Plan) -> None:
    blocks, expected = encode_plan(plan)
    assert decode(blocks, max_list_size=1 << 20) == expected


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(block_plan, min_size=1, max_size=6), st.integers(0, 800))
def test_header_list_limit_cuts_only_the_large_lists_and_the_table_stays_in_step(
    decode: Decode, plan: Plan, limit: int
) -> None:
    blocks, expected = encode_plan(plan)
    # each list up to the field that crosses the limit, exclusive
    cut, too_large = [], False
    for fields_sent in expected:
        size, fitting = 0, []
        for name, value in fields_sent:
            size += len(name) + len(value) + 32
            if size > limit:
                too_large = True
                break
            fitting.append((name, value))
        cut.append(fitting)
    try:
        result = decode(blocks, max_list_size=limit)
    except OverflowError as error:
        assert too_large
        result = error.args[1]
    else:
        assert not too_large
    assert result == cut


# ---- robustness -------------------------------------------------------------------------------


def decode_or_error(
    decode: Decode, blocks: list[bytes], settings_max: int
) -> list[Fields] | ValueError | OverflowError:
    """The decoded lists, or the ValueError / OverflowError raised (anything else propagates)."""
    try:
        return decode(blocks, settings_max=settings_max)
    except (ValueError, OverflowError) as error:
        return error


def hpacks_decoding(blocks: list[bytes], settings_max: int) -> list[Fields] | None:
    """What hpack's (Python) decoder makes of the blocks, or None if it refuses them."""
    decoder = hpack.Decoder(max_header_list_size=1 << 30)
    decoder.max_allowed_table_size = decoder.header_table_size = settings_max
    try:
        return [[tuple(field) for field in decoder.decode(block, raw=True)] for block in blocks]
    except hpack.HPACKError:
        return None


@settings(max_examples=2000, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4), st.integers(0, 4096))
def test_random_bytes_decode_or_raise_value_error(
    decode: Decode, blocks: list[bytes], settings_max: int
) -> None:
    outcome = decode_or_error(decode, blocks, settings_max=settings_max)
    if isinstance(outcome, list):  # then hpack's decoder, the reference, agrees
        assert outcome == hpacks_decoding(blocks, settings_max)
    elif isinstance(outcome, OverflowError):  # a small block can name a large entry many times
        assert "header list larger" in outcome.args[0]
    else:
        assert str(outcome)


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([*C3, *C4, *C5, *C6]), st.data())
def test_corrupted_valid_blocks_decode_or_raise_value_error(
    decode: Decode, block: bytes, data: st.DataObject
) -> None:
    corrupted = bytearray(block)
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(corrupted) - 1))
        corrupted[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(corrupted)))
    outcome = decode_or_error(decode, [bytes(corrupted[:cut])], settings_max=256)
    assert not isinstance(outcome, OverflowError)
    if isinstance(outcome, list):
        assert outcome == hpacks_decoding([bytes(corrupted[:cut])], 256)
    else:
        assert str(outcome)


# ---- what the decoder refuses -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        ([h("ff")], "header block truncated in an integer"),
        ([h("ff 80")], "header block truncated in an integer"),
        ([h("ff 80 00")], "overlong integer encoding"),
        ([h("ff ff ff ff ff 0f")], "integer too large"),
        ([h("ff ff ff ff ff ff 01")], "integer too large"),
        ([h("80")], "indexed header field with index 0"),
        ([h("be")], "header field index out of range"),
        ([h("ff 80 01")], "header field index out of range"),
        ([h("7e 00")], "header name index out of range"),
        ([h("0f 30 00")], "header name index out of range"),
        ([h("00 05 61 62")], "string literal longer than the header block"),
        ([h("00")], "header block truncated in a string length"),
        ([h("82 20")], "dynamic table size update after a header field"),
        ([h("20 20 20")], "more than two dynamic table size updates in a block"),
        ([h("3f e2 1f")], "dynamic table size update above SETTINGS_HEADER_TABLE_SIZE"),
        # 30 one-bits are EOS (then 2 bits of padding)
        ([h("00 84 ff ff ff ff 00")], "Huffman string contains EOS"),
        # 'a' (00011) then 11 one-bits
        ([h("00 82 1f ff 00")], "Huffman padding longer than 7 bits"),
        # 'a' then 000
        ([h("00 81 18 00")], "Huffman padding not all ones"),
        # 'a' then 011
        ([h("00 81 1b 00")], "Huffman padding not all ones"),
    ],
)
def test_bad_blocks_raise_value_error_naming_the_error(
    decode: Decode, blocks: list[bytes], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        decode(blocks)


def test_two_size_updates_up_to_settings_max_are_accepted(decode: Decode) -> None:
    assert decode([h("20 3f e1 1f 82")]) == [fields((":method", "GET"))]


def test_a_size_update_evicts_and_a_later_one_does_not_bring_entries_back(
    decode: Decode,
) -> None:
    add = h("40 01 61 01 62")  # a: b, incremental indexing
    assert decode([add, h("be")]) == [fields(("a", "b")), fields(("a", "b"))]
    with pytest.raises(ValueError, match="index out of range"):
        decode([add, h("20 3f e1 1f be")])


def test_an_entry_larger_than_the_table_empties_it(decode: Decode) -> None:
    small = h("40 01 61 01 62")  # a: b (34 bytes)
    large = h("40 01 63 7f 21") + b"x" * 160  # c: 160 x (193 bytes > 128)
    assert decode([small, large], settings_max=128)[1] == [(b"c", b"x" * 160)]
    with pytest.raises(ValueError, match="index out of range"):
        decode([small, large, h("be")], settings_max=128)


def test_eviction_keeps_the_newest_entries(decode: Decode) -> None:
    first = h("40 01 61 1e") + b"x" * 30  # 63 bytes
    second = h("40 01 62 1e") + b"y" * 30  # 63 bytes: 126 > 100 evicts the first
    assert decode([first, second, h("be")], settings_max=100)[2] == [(b"b", b"y" * 30)]
    with pytest.raises(ValueError, match="index out of range"):
        decode([first, second, h("bf")], settings_max=100)


def test_a_new_entry_may_name_the_entry_its_insertion_evicts(decode: Decode) -> None:
    name = b"n" * 30
    first = h("40 1e") + name + h("01 76")  # n*30: v, 63 bytes
    second = h("7e 1e") + b"w" * 30  # name of index 62, 92 bytes: evicts index 62 to fit
    result = decode([first, second, h("be")], settings_max=100)
    assert result[1:] == [[(name, b"w" * 30)], [(name, b"w" * 30)]]


def test_too_large_list_raises_overflow_error_and_keeps_the_table_in_step(
    decode: Decode,
) -> None:
    big = h("40 01 61 7f 21") + b"v" * 160  # a: 160 v (193 bytes), indexed
    # :method GET (42 bytes), a (crosses 100), :path / (38: would fit alone), b: c indexed
    block = h("82") + big + h("84 40 01 62 01 63")
    after = h("be 7f 00 01 7a")  # b: c (62), then a literal named by index 63 (a): z
    with pytest.raises(OverflowError, match="header list larger") as raised:
        decode([block, after], max_list_size=100)
    message, results = raised.value.args
    assert "SETTINGS_MAX_HEADER_LIST_SIZE" in message
    # nothing after the limit was crossed; the next block still sees both entries
    assert results == [fields((":method", "GET")), fields(("b", "c"), ("a", "z"))]


def test_blocks_must_be_bytes(decode: Decode) -> None:
    with pytest.raises(TypeError, match="block 1 is str"):
        decode([b"\x82", "82"])
    with pytest.raises(ValueError, match="must be >= 0"):
        decode([b"\x82"], settings_max=-1)


def test_an_empty_block_decodes_to_no_fields(decode: Decode) -> None:
    assert decode([b"", b""]) == [[], []]
