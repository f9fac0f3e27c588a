"""The agent's access-log line and writer: the JSON json.dumps gives, in the agent log's format;
a refusal's line names its policy and rule; a log that cannot be written costs lines, not
connections (a real agent listener on loopback)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
from collections.abc import Iterator
from ipaddress import IPv4Address
from typing import TextIO

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.plaintext_inbound import PlaintextInbound
from agent.state import NodeState
from agent.telemetry import ConnectionRecord, Telemetry, access_line
from tests.resource_yaml import authorization_policy, documents, namespace, workload
from tests.unit.agent.mesh_config import node_state

CLUSTER = documents(
    namespace("shop"),
    namespace("legacy", ambient=False),
    workload("catalog", "shop", "127.0.0.2", "node2", service_account="catalog"),
    workload("legacy-client", "legacy", "127.0.0.1", "node2"),
)


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


@given(texts=st.lists(st.text(), min_size=6, max_size=6))
def test_json_loads_of_a_line_gives_back_the_record_for_any_strings(texts: list[str]) -> None:
    record = ConnectionRecord(texts[0] or "inbound", texts[1], texts[2], route=texts[3])
    record.policy, record.rule, record.reason = texts[3:6]
    record.sent_bytes, record.duration_ms = 10, 1.5
    fields = {k: v for k, v in vars(record).items() if v != "" and k != "started"}
    assert json.loads(access_line(record)) == fields


async def serve_two(state: NodeState, telemetry: Telemetry) -> list[bytes]:
    """Two connections through a real agent listener (plaintext inbound) to an echo pod."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read())
        await writer.drain()
        writer.close()

    pod = await asyncio.start_server(echo, "127.0.0.2", 0)
    pod_port = pod.sockets[0].getsockname()[1]
    inbound = PlaintextInbound(
        lambda: state, telemetry, IPv4Address("127.0.0.1"), port=0,
        original_destination=lambda local: ("127.0.0.2", pod_port),
    )  # fmt: skip
    await inbound.start("127.0.0.1")
    answers = []
    try:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", inbound.port)
            writer.write(b"weft")
            writer.write_eof()
            try:
                answers.append(await asyncio.wait_for(reader.read(), 5))
            except ConnectionResetError:
                answers.append(b"")
            writer.close()
            await asyncio.sleep(0.05)  # the agent's side closes and logs
    finally:
        await inbound.close()
        pod.close()
    return answers


def test_a_refusal_line_names_the_policy_and_the_rule(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    deny = authorization_policy(
        "no-loopback", "shop", action="DENY", app="catalog", ip_blocks=["127.0.0.1/32"]
    )
    stream = io.StringIO()
    answers = asyncio.run(serve_two(node_state("node2", CLUSTER, deny), Telemetry(stream)))
    assert answers == [b"", b""]
    lines = [
        json.loads(line.split("weft.access: ", 1)[1]) for line in stream.getvalue().splitlines()
    ]
    assert [(r["outcome"], r["policy"], r["rule"]) for r in lines] == [
        ("denied", "shop/no-loopback", "0")
    ] * 2


@pytest.fixture
def broken_pipe() -> Iterator[TextIO]:
    """A stream on a pipe whose reader is gone: every write is EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    with os.fdopen(write_end, "w") as stream:
        yield stream


def test_a_broken_access_log_pipe_costs_lines_not_connections(
    caplog: pytest.LogCaptureFixture, broken_pipe: TextIO
) -> None:
    caplog.set_level(logging.INFO, "weft.access")
    telemetry = Telemetry(broken_pipe)
    answers = asyncio.run(serve_two(node_state("node2", CLUSTER), telemetry))
    assert answers == [b"weft", b"weft"]  # both relayed
    closed = [
        sample.value
        for metric in telemetry.registry.collect()
        for sample in metric.samples
        if sample.name == "istio_tcp_connections_closed_total"
    ]
    assert sum(closed) == 2
    assert telemetry.access.dropped == 2
    warnings = [r.getMessage() for r in caplog.records if r.name == "weft.access_log"]
    assert len(warnings) == 1
    assert "BrokenPipeError" in warnings[0]


def test_a_label_sets_four_series_count_what_its_connections_did() -> None:
    """The series are counted through their values (Telemetry._series): a scrape reads the
    opened and closed connections and both byte counts of each label set, Istio's names."""
    telemetry = Telemetry(io.StringIO())
    for sent, received, principal in ((5, 7, "a"), (11, 13, "a"), (17, 19, "b")):
        record = ConnectionRecord("outbound", "10.0.0.1:1000", "10.0.0.2:80")
        record.source_principal = principal
        record.security = "mutual_tls"
        telemetry.connection_opened(record)
        record.sent_bytes, record.received_bytes = sent, received
        telemetry.connection_closed(record)
    samples = {
        (sample.name, sample.labels["source_principal"]): sample.value
        for metric in telemetry.registry.collect()
        for sample in metric.samples
        if sample.name.startswith("istio_tcp_") and sample.name.endswith("_total")
    }
    assert samples == {
        ("istio_tcp_connections_opened_total", "a"): 2,
        ("istio_tcp_connections_closed_total", "a"): 2,
        ("istio_tcp_sent_bytes_total", "a"): 16,
        ("istio_tcp_received_bytes_total", "a"): 20,
        ("istio_tcp_connections_opened_total", "b"): 1,
        ("istio_tcp_connections_closed_total", "b"): 1,
        ("istio_tcp_sent_bytes_total", "b"): 17,
        ("istio_tcp_received_bytes_total", "b"): 19,
    }
    assert b'istio_tcp_sent_bytes_total{connection_security_policy="mutual_tls"' in (
        telemetry.exposition()
    )
