"""The agent's access-log line and writer: the JSON json.dumps gives, in the agent log's format."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.telemetry import ConnectionRecord, Telemetry, access_line


def reference_line(record: ConnectionRecord) -> str:
    """What the agent wrote before the generated formatter: json.dumps of the non-empty fields,
    the duration rounded to microseconds."""
    fields = {k: v for k, v in vars(record).items() if v not in ("", None) and k != "started"}
    fields["duration_ms"] = round(record.duration_ms, 3)
    return json.dumps(fields, sort_keys=True)


@given(
    text=st.text(max_size=20),
    number=st.integers(min_value=0, max_value=2**40),
    duration=st.floats(min_value=0, max_value=1e7, allow_nan=False),
)
def test_the_line_is_what_json_dumps_gives_for_any_text(
    text: str, number: int, duration: float
) -> None:
    record = ConnectionRecord("inbound", text, "10.88.2.2:7000")
    record.reason, record.policy, record.source_workload = text, text[::-1], ""
    record.sent_bytes, record.duration_ms = number, duration
    assert access_line(record) == reference_line(record)
    assert json.loads(access_line(record))["reason" if text else "dst"] is not None


def test_lines_go_out_in_the_agent_log_format_once_per_loop_iteration(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    stream = io.StringIO()
    telemetry = Telemetry(stream)

    async def close_two() -> str:
        for port in (1, 2):
            telemetry.connection_closed(ConnectionRecord("outbound", f"10.0.0.1:{port}", "x:1"))
        written = stream.getvalue()  # nothing yet: the loop has not turned
        await asyncio.sleep(0)
        return written

    assert asyncio.run(close_two()) == ""
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    prefix = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO weft\.access: "
    assert all(re.match(prefix + "{", line) for line in lines)
    assert json.loads(lines[1].split("weft.access: ", 1)[1])["src"] == "10.0.0.1:2"


def test_the_weft_access_level_turns_the_lines_off(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "weft.access")
    stream = io.StringIO()
    Telemetry(stream).connection_closed(ConnectionRecord("outbound", "10.0.0.1:1", "x:1"))
    assert stream.getvalue() == ""
