"""The fast path's request telemetry: a record, or an access-log line formatted at the flush."""

from __future__ import annotations

from collections.abc import Callable

from waypoint.fastpath.plan import FastService
from waypoint.telemetry import UNKNOWN, RequestRecord, line_formatter, utc_timestamp

# What the access log needs of a request the fast path served: (service, route,
# backend authority, endpoint, wall-clock start, method, target, Host, status, flags, duration
# in ms, body bytes in, body bytes out, request id, trace id, user agent, source labels).
FastFacts = tuple[
    FastService, str, str, str, float, str, str, str, int, str, float, int, int, str, str, str,
    "SourceLabels",
]  # fmt: skip

# Istio's source labels of a connection, computed once per connection: (source_principal,
# source_workload_namespace, connection_security_policy), as downstream.source_labels gives
# them for a tunnel's peer; an unidentified caller's on the plain listener.
SourceLabels = tuple[str, str, str]
NO_SOURCE: SourceLabels = (UNKNOWN, UNKNOWN, "none")


def fast_record(facts: FastFacts) -> RequestRecord:
    """The telemetry record of a request the fast path served (formatted at the log flush)."""
    (
        service, route, cluster, endpoint, wall, method, target, host, status, flags,
        duration_ms, bytes_in, bytes_out, request_id, trace_id, agent, source,
    ) = facts  # fmt: skip
    return RequestRecord(
        start_time=utc_timestamp(wall),
        method=method,
        path=target,
        authority=host or "-",
        protocol="HTTP/1.1",
        response_code=status,
        response_flags=flags,
        duration_ms=duration_ms,
        bytes_received=bytes_in,
        bytes_sent=bytes_out,
        request_id=request_id,
        trace_id=trace_id,
        route_name=route,
        upstream_cluster=cluster,
        upstream_host=endpoint,
        attempts=1 if endpoint != "-" else 0,
        user_agent=agent,
        destination_service=service.hostname,
        destination_service_name=service.name,
        destination_service_namespace=service.namespace,
        source_principal=source[0],
        source_workload_namespace=source[1],
        connection_security_policy=source[2],
    )


# The same line as access_log_line(fast_record(facts)) (a test holds them equal), written from
# the tuple: no record is built, at the flush or before.
fast_log_line: Callable[[FastFacts], str] = line_formatter(
    {
        "destination_service": "r[0].hostname",
        "destination_service_name": "r[0].name",
        "destination_service_namespace": "r[0].namespace",
        "route_name": "r[1]",
        "upstream_cluster": "r[2]",
        "upstream_host": "r[3]",
        "attempts": '1 if r[3] != "-" else 0',
        "start_time": "utc(r[4])",
        "method": "r[5]",
        "path": "r[6]",
        "authority": 'r[7] or "-"',
        "protocol": '"HTTP/1.1"',
        "response_code": "r[8]",
        "response_flags": "r[9]",
        "duration_ms": "r[10]",
        "bytes_received": "r[11]",
        "bytes_sent": "r[12]",
        "request_id": "r[13]",
        "trace_id": "r[14]",
        "user_agent": "r[15]",
        "source_principal": "r[16][0]",
        "source_workload_namespace": "r[16][1]",
        "connection_security_policy": "r[16][2]",
    },
    {"utc": utc_timestamp},
)
