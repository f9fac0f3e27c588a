"""Connection telemetry: Istio's istio_tcp_* metrics and one JSON access-log line per connection.

Metric names and labels are Istio's (reporter="source" on the outbound side, "destination" on
the inbound side), so dashboards built for ztunnel read a Weft agent unchanged. The registry is
the agent's own, so tests read it without global state.

Both run for every connection, so both are cheap: a label set's four series are looked up once
(and counted through their values, see `_series`), the JSON line is made by a function generated
from the record's fields (the text json.dumps would give, a fifth of its time; weft.access_log,
shared with the waypoint), and lines go to the agent's stderr in the format of its log
(`<time> INFO weft.access: {...}`) through a BufferedLog that writes once per event-loop
iteration, not through logging's per-record machinery (a line cost 45 us that way); a stderr
that cannot be written drops lines, never a connection. The `weft.access` logger's level still
turns them on and off (`/logging?logger=weft.access&level=warning`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, TextIO, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from weft.access_log import PER_ITERATION, BufferedLog, json_line_formatter
from weft.hbone.pool import PoolStats
from weft.hbone.relay import abort_tcp

TCP_LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_service",
    "response_code",
    "connection_security_policy",
)


class _Value(Protocol):
    """What a prometheus_client series counts in (MutexValue, or MultiProcessValue)."""

    def inc(self, amount: float) -> None: ...


access_log = logging.getLogger("weft.access")
log = logging.getLogger(__name__)


@dataclass
class ConnectionRecord:
    """Everything one access-log line says about a connection; filled in as it proceeds."""

    direction: str  # "outbound" | "inbound"
    src: str  # ip:port
    dst: str  # ip:port as the client meant it (a VIP for services)
    route: str = ""  # same-node | hbone | passthrough | splice | ...
    endpoint: str = ""  # the ip:port actually reached
    source_workload: str = ""
    source_namespace: str = ""
    source_principal: str = ""
    destination_workload: str = ""
    destination_namespace: str = ""
    destination_principal: str = ""
    destination_service: str = ""
    security: str = "unknown"  # mutual_tls | none
    sent_bytes: int = 0  # towards the destination
    received_bytes: int = 0  # back from the destination
    outcome: str = "ok"  # ok | denied | unavailable | reset | error
    policy: str = ""
    rule: str = ""
    reason: str = ""
    started: float = field(default_factory=time.monotonic)
    duration_ms: float = 0.0

    def labels(self) -> dict[str, str]:
        return dict(zip(TCP_LABELS, self.label_values(), strict=True))

    def label_values(self) -> tuple[str, ...]:
        """The TCP_LABELS values, in order."""
        return (
            "source" if self.direction == "outbound" else "destination",
            self.source_workload or "unknown",
            self.source_namespace or "unknown",
            self.source_principal or "unknown",
            self.destination_workload or "unknown",
            self.destination_namespace or "unknown",
            self.destination_principal or "unknown",
            self.destination_service or "unknown",
            "-",
            self.security,
        )


def access_line(record: ConnectionRecord) -> str:
    """The record as one JSON object, keys sorted, empty strings and `started` left out: the
    text of json.dumps({...}, sort_keys=True) (a test holds them equal)."""
    return _format_line(record)


_format_line = json_line_formatter(ConnectionRecord, omit_empty=True, exclude=("started",))


class Telemetry:
    """The agent's metrics registry and its access log."""

    def __init__(self, access_stream: TextIO | None = None) -> None:
        # stderr (None: sys.stderr when written), where the agent logs; a write per loop turn
        self.access = BufferedLog(access_stream, PER_ITERATION)
        self._second, self._stamp = -1, ""  # the log's asctime, formatted once per second
        self.registry = CollectorRegistry()
        self.opened = Counter(
            "istio_tcp_connections_opened",
            "TCP connections opened",
            TCP_LABELS,
            registry=self.registry,
        )
        self.closed = Counter(
            "istio_tcp_connections_closed",
            "TCP connections closed",
            TCP_LABELS,
            registry=self.registry,
        )
        self.sent = Counter(
            "istio_tcp_sent_bytes", "Bytes sent towards the destination", TCP_LABELS,
            registry=self.registry,
        )  # fmt: skip
        self.received = Counter(
            "istio_tcp_received_bytes", "Bytes received from the destination", TCP_LABELS,
            registry=self.registry,
        )  # fmt: skip
        self.refused = Counter(
            "weft_connections_refused",
            "Connections refused by policy or for want of a route",
            ("direction", "reason"),
            registry=self.registry,
        )
        self.certificates = Gauge(
            "weft_workload_certificates", "Workload SVIDs held, by state", ("state",),
            registry=self.registry,
        )  # fmt: skip
        self.config_version = Gauge(
            "weft_config_version", "The discovery version in force", registry=self.registry
        )
        self._children: dict[tuple[str, ...], tuple[_Value, _Value, _Value, _Value]] = {}

    def connection_opened(self, record: ConnectionRecord) -> None:
        self._series(record.label_values())[0].inc(1)

    def connection_closed(self, record: ConnectionRecord) -> None:
        """Count bytes and the close, and write the connection's access-log line."""
        record.duration_ms = (time.monotonic() - record.started) * 1000  # rounded when written
        if record.outcome in ("denied", "unavailable", "error") and record.sent_bytes == 0:
            self.refused.labels(record.direction, record.outcome).inc()
        else:
            _, closed, sent, received = self._series(record.label_values())
            closed.inc(1)
            sent.inc(record.sent_bytes)
            received.inc(record.received_bytes)
        if access_log.isEnabledFor(logging.INFO):  # `<asctime> INFO weft.access: {...}`
            now = time.time()
            second = int(now)
            if second != self._second:
                self._second = second
                self._stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(second))
            milliseconds = int((now - second) * 1000)
            self.access.write(
                f"{self._stamp},{milliseconds:03d} INFO weft.access: {_format_line(record)}"
            )

    def _series(self, values: tuple[str, ...]) -> tuple[_Value, _Value, _Value, _Value]:
        """The values of one label set's four istio_tcp_* series; prometheus_client's labels()
        lookup (kwargs, validation, a lock) cost more than the rest of opening a connection.
        A child Counter's `inc` checks, each time, what holds for these (a labelled child, an
        amount >= 0, no exemplar) in three Python calls: its value is counted directly (the
        same number at a scrape; tests/unit/agent/test_agent_telemetry.py reads the exposition)."""
        series = self._children.get(values)
        if series is None:
            # `_value` is prometheus_client's private attribute: should a release drop it, the
            # child itself (same `inc(n)`) is counted instead, slower but as correct.
            opened, closed, sent, received = (
                cast(_Value, getattr(child, "_value", child))
                for child in (
                    self.opened.labels(*values),
                    self.closed.labels(*values),
                    self.sent.labels(*values),
                    self.received.labels(*values),
                )
            )
            series = (opened, closed, sent, received)
            self._children[values] = series
        return series

    def track_pool(self, stats: PoolStats) -> None:
        """Export the HBONE pool's counters: handshakes far below tunnels means pooling works."""
        self.registry.register(_PoolCollector(stats))

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


async def accounted(
    telemetry: Telemetry,
    record: ConnectionRecord,
    writer: asyncio.StreamWriter,
    serve: Coroutine[Any, Any, None],
) -> None:
    """Run one accepted connection's `serve`, then count and log it: the frame every listener
    puts around a connection. A failure costs this connection (reset), never the listener."""
    try:
        await serve
    except Exception as err:
        log.exception("%s connection from %s failed", record.direction, record.src)
        record.outcome, record.reason = "error", repr(err)
        abort_tcp(writer)
    finally:
        telemetry.connection_closed(record)


class _PoolCollector(Collector):
    """Reads the pool's counters at scrape time (the pool keeps them as plain integers)."""

    def __init__(self, stats: PoolStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily(
            "weft_hbone_handshakes",
            "TLS connections the outbound HBONE pool opened (each carries up to 100 tunnels)",
            value=self.stats.handshakes,
        )
        yield CounterMetricFamily(
            "weft_hbone_tunnels_opened",
            "HBONE CONNECT streams the outbound pool opened",
            value=self.stats.streams_opened,
        )
