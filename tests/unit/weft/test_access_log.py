"""weft.access_log: the generated JSON line formatter and the buffered, whole-line log writer."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import select
import socket
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from weft.access_log import (
    COMPACT,
    PER_ITERATION,
    SPACED,
    BufferedLog,
    FlushPolicy,
    json_line_formatter,
    whole_lines,
)


@dataclass
class Sample:
    """One field of each supported kind, some with defaults."""

    name: str
    count: int
    took_ms: float
    tags: tuple[str, ...] = ()
    note: str = ""
    zero: int = 0


def expected(sample: Sample, omit_empty: bool, exclude: tuple[str, ...] = ()) -> dict[str, Any]:
    """What json.dumps is given for `sample`: the line's object."""
    values = {
        "name": sample.name, "count": sample.count, "took_ms": round(sample.took_ms, 3),
        "tags": list(sample.tags), "note": sample.note, "zero": sample.zero,
    }  # fmt: skip
    if omit_empty:
        values = {k: v for k, v in values.items() if v not in ("", [])}
    return {k: v for k, v in values.items() if k not in exclude}


samples = st.builds(
    Sample,
    name=st.text(),
    count=st.integers(min_value=-(2**70), max_value=2**70),
    took_ms=st.floats(allow_nan=False, allow_infinity=False),
    tags=st.lists(st.text(max_size=8), max_size=3).map(tuple),
    note=st.text(max_size=10),
)


@pytest.mark.parametrize("separators", [SPACED, COMPACT])
@pytest.mark.parametrize("omit_empty", [False, True])
@given(sample=samples)
def test_a_line_is_the_json_of_the_record_for_any_strings(
    separators: tuple[str, str], omit_empty: bool, sample: Sample
) -> None:
    line = json_line_formatter(Sample, separators=separators, omit_empty=omit_empty)(sample)
    fields = expected(sample, omit_empty)
    assert "\n" not in line
    assert json.loads(line) == fields
    assert line == json.dumps(fields, sort_keys=True, separators=separators)


def test_empty_strings_and_tuples_are_left_out_only_when_asked_and_numbers_never() -> None:
    sample = Sample("", 0, 0.0)
    assert json_line_formatter(Sample, omit_empty=True)(sample) == (
        '{"count": 0, "took_ms": 0.0, "zero": 0}'
    )
    assert json_line_formatter(Sample, separators=COMPACT)(sample) == (
        '{"count":0,"name":"","note":"","tags":[],"took_ms":0.0,"zero":0}'
    )


def test_excluded_fields_are_not_written_and_an_unknown_one_is_refused_by_name() -> None:
    line = json_line_formatter(Sample, exclude=("took_ms", "tags"))(Sample("a", 1, 2.0))
    assert json.loads(line) == {"name": "a", "count": 1, "note": "", "zero": 0}
    with pytest.raises(ValueError, match=r"exclude names no field of Sample: \['nmae'\]"):
        json_line_formatter(Sample, exclude=("nmae",))


def test_expressions_read_any_object_and_unlisted_fields_are_their_defaults() -> None:
    line = json_line_formatter(
        Sample,
        separators=COMPACT,
        expressions={"name": "r[0]", "count": "len(r)", "took_ms": "ms(r[1])"},
        names={"ms": lambda seconds: seconds * 1000},
    )(('a"b', 0.0012346))
    assert json.loads(line) == {
        "name": 'a"b', "count": 2, "took_ms": 1.235, "tags": [], "note": "", "zero": 0,
    }  # fmt: skip
    with pytest.raises(ValueError, match="expressions must name 'count': it has no default"):
        json_line_formatter(Sample, expressions={"name": "r", "took_ms": "r"})
    with pytest.raises(ValueError, match=r"expressions names no field of Sample: \['nmae'\]"):
        json_line_formatter(Sample, expressions={"nmae": "r"})


def test_a_field_of_another_type_is_refused_naming_it() -> None:
    @dataclass
    class Odd:
        when: dict[str, int] = field(default_factory=dict)

    with pytest.raises(TypeError, match=r"Odd.when is dict\[str, int\]: a JSON line field must"):
        json_line_formatter(Odd)


# --- the writer ------------------------------------------------------------------------------


def datagram_stream() -> tuple[io.TextIOWrapper, socket.socket]:
    """A stream whose every write() arrives as one datagram at the returned socket, so a test
    sees exactly the writes a BufferedLog made (a pipe would merge them)."""
    writer, reader = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    reader.setblocking(False)
    stream = io.TextIOWrapper(writer.makefile("wb"), write_through=True)
    return stream, reader


def writes(reader: socket.socket) -> list[bytes]:
    received = []
    while True:
        try:
            received.append(reader.recv(1 << 20))
        except BlockingIOError:
            return received


def test_per_iteration_writes_the_lines_of_a_loop_turn_in_one_write() -> None:
    stream, reader = datagram_stream()
    log = BufferedLog(stream, PER_ITERATION)

    async def main() -> list[list[bytes]]:
        seen = []
        for turn in range(2):
            for n in range(3):
                log.write(f"{turn}-{n}")
            seen.append(writes(reader))  # nothing yet: the loop has not turned
            await asyncio.sleep(0)
            seen.append(writes(reader))
        return seen

    with stream, reader:
        assert asyncio.run(main()) == [[], [b"0-0\n0-1\n0-2\n"], [], [b"1-0\n1-1\n1-2\n"]]


def test_an_interval_policy_writes_after_the_interval_past_max_lines_and_on_flush() -> None:
    stream = io.StringIO()
    log = BufferedLog(stream, FlushPolicy(interval_s=0.05, max_lines=3))

    async def main() -> None:
        log.write("one")
        log.write("two")
        await asyncio.sleep(0.01)
        assert stream.getvalue() == ""  # not one write per line
        await asyncio.sleep(0.1)
        assert stream.getvalue() == "one\ntwo\n"
        for n in range(4):  # the fourth is past max_lines: all four at once
            log.write(f"burst {n}")
        assert stream.getvalue().endswith("two\nburst 0\nburst 1\nburst 2\nburst 3\n")
        log.write("three")
        log.flush()
        assert stream.getvalue().endswith("burst 3\nthree\n")

    asyncio.run(main())


def test_a_flush_policy_that_makes_no_sense_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="a flush interval must be positive seconds, not 0"):
        FlushPolicy(interval_s=0)
    with pytest.raises(ValueError, match="max_lines must be at least 1, not 0"):
        FlushPolicy(max_lines=0)


def test_without_a_running_loop_a_line_is_written_at_once() -> None:
    stream = io.StringIO()
    BufferedLog(stream, FlushPolicy(interval_s=10)).write("now")
    assert stream.getvalue() == "now\n"


def test_lines_written_later_are_formatted_at_the_flush_in_order() -> None:
    stream = io.StringIO()
    log = BufferedLog(stream, FlushPolicy(interval_s=10))
    formatted = []

    def late(n: int) -> str:
        formatted.append(n)
        return f"late {n}"

    async def main() -> None:
        log.write_later(late, (1,))
        log.write("now")
        log.write_later(late, (2,))
        assert formatted == []
        log.flush()

    asyncio.run(main())
    assert formatted == [1, 2]
    assert stream.getvalue() == "late 1\nnow\nlate 2\n"


def test_a_flush_is_writes_of_whole_lines_of_at_most_pipe_buf_bytes() -> None:
    stream, reader = datagram_stream()
    log = BufferedLog(stream, FlushPolicy(interval_s=10, max_lines=1000))
    lines = [f'{{"n":{i},"pad":"{"x" * (i * 37 % 300)}"}}' for i in range(200)]
    long_line = "y" * (select.PIPE_BUF + 100)
    with stream, reader:
        for line in [*lines[:100], long_line, *lines[100:]]:
            log.write(line)
        log.flush()
        received = writes(reader)
    assert len(received) > 2
    assert b"".join(received).decode().splitlines() == [*lines[:100], long_line, *lines[100:]]
    assert all(piece.endswith(b"\n") for piece in received)
    assert [len(piece) <= select.PIPE_BUF for piece in received].count(False) == 1
    assert long_line.encode() + b"\n" in received  # longer than PIPE_BUF: a write of its own


def test_whole_lines_cuts_after_newlines_and_keeps_a_long_line_whole() -> None:
    lines = [f'{{"n":{i},"pad":"{"x" * (i * 37 % 300)}"}}' for i in range(200)]
    data = ("\n".join(lines) + "\n").encode()
    pieces = list(whole_lines(data, 4096))
    assert b"".join(pieces) == data
    assert all(len(p) <= 4096 and p.endswith(b"\n") for p in pieces)
    long_line = b"y" * 5000 + b"\n"
    assert list(whole_lines(b"a\n" + long_line + b"b\n", 4096)) == [b"a\n", long_line, b"b\n"]


def test_a_closed_stream_drops_lines_with_one_warning_and_raises_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stream = io.StringIO()
    log = BufferedLog(stream, FlushPolicy(interval_s=10))
    stream.close()
    log.write("lost")
    log.write("lost too")
    assert log.dropped == 2
    warnings = [r for r in caplog.records if r.name == "weft.access_log"]
    assert len(warnings) == 1
    assert "access-log lines cannot be written" in warnings[0].getMessage()


def test_a_broken_pipe_drops_the_batch_and_later_lines_still_go_when_it_is_fixed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "weft.access_log")
    read_end, write_end = os.pipe()
    os.close(read_end)
    stream = os.fdopen(write_end, "w")
    log = BufferedLog(stream, PER_ITERATION)

    async def main() -> None:
        log.write("a")
        log.write("b")
        await asyncio.sleep(0)
        assert log.dropped == 2
        replacement = io.StringIO()
        log.stream = replacement
        log.write("c")
        await asyncio.sleep(0)
        assert replacement.getvalue() == "c\n"

    with stream:
        asyncio.run(main())
    assert [r.getMessage() for r in caplog.records].count(
        f"access-log lines cannot be written ({BrokenPipeError(32, 'Broken pipe')!r}); "
        "dropping them until the stream takes writes again"
    ) == 1
