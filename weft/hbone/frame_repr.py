"""Constant-time reprs for hyperframe DATA frames, because h2 builds one for every frame it gets.

h2 (4.x) logs `repr(frame)` for each received frame even when logging is off. For a DATA frame
hyperframe then serializes the whole body (a copy of the payload) and hex-encodes all of it,
to keep 20 hex digits: for a 256 KiB frame that was the largest single CPU cost of receiving it.
The replacements return exactly the same strings but only touch the 10 bytes they show.
"""

from __future__ import annotations

import binascii

import hyperframe.frame

_SHOWN_BYTES = 10  # hyperframe shows 20 hex digits


def _shown(head: bytes | memoryview, total_length: int) -> str:
    """hyperframe's `_raw_data_repr` of a body of `total_length` bytes that starts with `head`."""
    if not total_length:
        return "None"
    shown = binascii.hexlify(head[:_SHOWN_BYTES]).decode("ascii")
    return "<hex:" + shown + ("..." if total_length > _SHOWN_BYTES else "") + ">"


def _raw_data_repr(data: bytes | None) -> str:
    return _shown(data or b"", len(data or b""))


def _data_frame_body_repr(frame: hyperframe.frame.Frame) -> str:
    assert isinstance(frame, hyperframe.frame.DataFrame)
    # The body hyperframe would serialize: padding length byte, data, padding.
    padding = frame.serialize_padding_data()
    head = padding + bytes(frame.data[:_SHOWN_BYTES]) + bytes(min(frame.pad_length, _SHOWN_BYTES))
    return _shown(head, len(padding) + len(frame.data) + frame.pad_length)


def install() -> None:
    """Swap in the cheap reprs (idempotent); the strings they produce are unchanged."""
    hyperframe.frame._raw_data_repr = _raw_data_repr
    hyperframe.frame.DataFrame._body_repr = _data_frame_body_repr  # type: ignore[method-assign,assignment]
