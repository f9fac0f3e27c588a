"""The cheap frame reprs must produce exactly hyperframe's own strings."""

from __future__ import annotations

import hyperframe.frame as hf
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.hbone import frame_repr


def hyperframe_body_repr(frame: hf.DataFrame) -> str:
    """hyperframe's original: serialize the body, hex-encode it, keep 20 digits."""
    body = frame.serialize_body()
    if not body:
        return "None"
    text = body.hex()
    return "<hex:" + (text[:20] + "..." if len(text) > 20 else text) + ">"


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.binary(max_size=64), st.one_of(st.none(), st.integers(0, 255)))
def test_data_frame_repr_is_unchanged(data: bytes, pad_length: int | None) -> None:
    frame_repr.install()
    frame = hf.DataFrame(1, data=data)
    if pad_length is not None:
        frame.flags.add("PADDED")
        frame.pad_length = pad_length
    assert frame._body_repr() == hyperframe_body_repr(frame)
    assert repr(frame).endswith(hyperframe_body_repr(frame))


@settings(deadline=None)  # time does not matter here; a loaded CI host is slow
@given(st.binary(max_size=64))
def test_raw_data_repr_is_unchanged(data: bytes) -> None:
    text = data.hex()
    expected = (
        "None" if not data else "<hex:" + (text[:20] + "..." if len(text) > 20 else text) + ">"
    )
    assert frame_repr._raw_data_repr(data) == expected
