"""Istio request metrics, W3C traceparent handling and the JSON access-log line."""

from __future__ import annotations

import json
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from waypoint.telemetry import (
    REQUEST_LABELS,
    RequestRecord,
    TraceContext,
    WaypointMetrics,
    access_log_line,
    new_trace,
    parse_traceparent,
    propagate,
    request_labels,
)

VALID = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def record(**overrides: object) -> RequestRecord:
    fields: dict[str, object] = {
        "start_time": "2026-11-23T12:00:00.000Z",
        "method": "GET",
        "path": "/reviews/1",
        "authority": "reviews:9080",
        "protocol": "HTTP/1.1",
        "response_code": 200,
        "response_flags": "-",
        "duration_ms": 12.5,
        "bytes_received": 0,
        "bytes_sent": 42,
        "request_id": "r-1",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
        "destination_service": "reviews.default.svc.cluster.local",
    }
    fields.update(overrides)
    return RequestRecord(**fields)  # type: ignore[arg-type]


# --- metrics -------------------------------------------------------------------------------------


def test_requests_are_counted_with_istio_labels_and_reporter_waypoint() -> None:
    metrics = WaypointMetrics()
    metrics.record(record())
    metrics.record(record(response_code=503, response_flags="no_healthy_upstream"))
    metrics.record(record())
    text = metrics.exposition().decode()
    ok = [
        line
        for line in text.splitlines()
        if line.startswith("istio_requests_total{") and 'response_code="200"' in line
    ]
    assert len(ok) == 1
    assert 'reporter="waypoint"' in ok[0]
    assert 'destination_service="reviews.default.svc.cluster.local"' in ok[0]
    assert ok[0].endswith(" 2.0")
    assert 'response_flags="no_healthy_upstream"' in text


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"source_principal": "spiffe://cluster.local/ns/shop/sa/frontend",
         "source_workload_namespace": "shop", "connection_security_policy": "mutual_tls"},
        {"grpc_response_status": "14", "response_code": 200, "destination_workload": "w"},
    ],
    ids=["plain", "tunnel", "grpc"],
)  # fmt: skip
def test_request_labels_are_each_label_read_by_its_name(overrides: dict[str, object]) -> None:
    request = record(**overrides)
    by_name = {name: getattr(request, name, "unknown") for name in REQUEST_LABELS}
    by_name["reporter"] = "waypoint"
    by_name["request_protocol"] = "grpc" if request.grpc_response_status else "http"
    by_name["response_code"] = str(request.response_code)
    assert request_labels(request) == tuple(by_name[name] for name in REQUEST_LABELS)


def test_duration_lands_in_istio_buckets() -> None:
    metrics = WaypointMetrics()
    metrics.record(record(duration_ms=7.0))
    text = metrics.exposition().decode()
    buckets = [
        line
        for line in text.splitlines()
        if line.startswith("istio_request_duration_milliseconds_bucket")
    ]
    bucket = [line for line in buckets if 'le="10.0"' in line]
    below = [line for line in buckets if 'le="5.0"' in line]
    assert bucket[0].endswith(" 1.0")
    assert below[0].endswith(" 0.0")


def test_each_metrics_instance_has_its_own_registry() -> None:
    first, second = WaypointMetrics(), WaypointMetrics()
    first.record(record())
    assert "istio_requests_total{" not in second.exposition().decode()


# --- access log ---------------------------------------------------------------------------------


def test_access_log_is_one_json_line_with_the_request_facts() -> None:
    line = access_log_line(record(audit_policies=("default/audit-all",), duration_ms=1.23456))
    assert "\n" not in line
    parsed = json.loads(line)
    assert parsed["response_code"] == 200
    assert parsed["path"] == "/reviews/1"
    assert parsed["duration_ms"] == 1.235
    assert parsed["audit_policies"] == ["default/audit-all"]


def test_access_log_line_is_exactly_what_json_dumps_writes() -> None:
    tricky = record(
        path='/a"b\\c\x01\u00e9\u2603', user_agent="curl \n", audit_policies=('x"y', "z"),
        duration_ms=0.1 + 0.2, response_code=503, bytes_sent=10**12,
    )  # fmt: skip
    fields = dict(tricky.__dict__)
    fields["audit_policies"] = list(tricky.audit_policies)
    fields["duration_ms"] = round(tricky.duration_ms, 3)
    assert access_log_line(tricky) == json.dumps(fields, sort_keys=True, separators=(",", ":"))


@given(
    texts=st.lists(st.text(), min_size=5, max_size=5),
    audit=st.lists(st.text(max_size=8), max_size=3),
    duration=st.floats(min_value=0, max_value=1e9),
)
def test_json_loads_of_a_line_gives_back_the_record_for_any_strings(
    texts: list[str], audit: list[str], duration: float
) -> None:
    path, agent, authority, status, principal = texts
    request = record(
        path=path, user_agent=agent, authority=authority, grpc_response_status=status,
        source_principal=principal, audit_policies=tuple(audit), duration_ms=duration,
    )  # fmt: skip
    fields = dict(vars(request), audit_policies=audit, duration_ms=round(duration, 3))
    assert json.loads(access_log_line(request)) == fields


# --- trace context -------------------------------------------------------------------------------


def test_valid_traceparent_is_parsed() -> None:
    assert parse_traceparent(VALID) == TraceContext(
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", 1
    )


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
    ],
)
def test_invalid_traceparent_is_ignored(value: str | None) -> None:
    assert parse_traceparent(value) is None


def test_future_version_with_extra_fields_is_accepted() -> None:
    context = parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-future")
    assert context is not None
    assert context.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_propagation_keeps_the_trace_and_makes_this_hop_the_parent() -> None:
    onward = propagate(VALID, lambda size: b"\x11" * size)
    assert onward.header_value() == "00-4bf92f3577b34da6a3ce929d0e0e4736-1111111111111111-01"


def test_unsampled_flag_is_kept_when_propagating() -> None:
    onward = propagate(VALID[:-2] + "00", os.urandom)
    assert not onward.sampled


def test_missing_traceparent_starts_a_new_sampled_trace() -> None:
    started = propagate(None, os.urandom)
    assert parse_traceparent(started.header_value()) == started
    assert started.sampled


def test_new_trace_never_uses_all_zero_ids() -> None:
    draws = iter([b"\x00" * 16, b"\x01" * 16, b"\x00" * 8, b"\x02" * 8])
    started = new_trace(lambda size: next(draws))
    assert started.trace_id == "01" * 16
    assert started.parent_id == "02" * 8


@given(st.text(max_size=80))
def test_any_header_value_parses_or_is_ignored_without_raising(value: str) -> None:
    context = parse_traceparent(value)
    if context is not None:
        assert parse_traceparent(context.header_value()) == context
