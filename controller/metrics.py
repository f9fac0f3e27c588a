"""The controller's Prometheus metrics (one registry per controller, so tests can run several)."""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from controller.discovery import AgentState
from controller.store import NodeCertificate


class ControllerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.revision = Gauge(
            "weft_controller_revision", "Current store revision", registry=self.registry
        )
        self.resources = Gauge(
            "weft_controller_resources", "Stored resources", ["kind"], registry=self.registry
        )
        self.connected_agents = Gauge(
            "weft_controller_connected_agents",
            "Agents with an open discovery stream",
            registry=self.registry,
        )
        self.certificates_issued = Counter(
            "weft_controller_certificates_issued_total",
            "Certificates signed",
            ["type"],  # workload | node
            registry=self.registry,
        )
        self.certificates_denied = Counter(
            "weft_controller_certificate_requests_denied_total",
            "Certificate and join requests refused",
            ["type"],
            registry=self.registry,
        )
        self.nacks = Counter(
            "weft_controller_nacks_total",
            "Discovery updates NACKed by agents",
            ["node"],
            registry=self.registry,
        )
        self.applies = Counter(
            "weft_controller_applies_total", "Apply requests", ["result"], registry=self.registry
        )
        self.push_seconds = Histogram(
            "weft_controller_push_seconds",
            "Time from a committed change to every watcher's update being queued",
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=self.registry,
        )


class AgentCollector(Collector):
    """Per-node gauges read at scrape time: versions, lag, NACKs, node certificate expiry."""

    def __init__(
        self,
        agents: Callable[[], list[AgentState]],
        revision: Callable[[], int],
        node_certificates: Callable[[], list[NodeCertificate]],
    ) -> None:
        self._agents = agents
        self._revision = revision
        self._certs = node_certificates

    def collect(self) -> Iterator[GaugeMetricFamily]:
        connected = GaugeMetricFamily(
            "weft_controller_agent_connected", "1 if the node's agent is watching", labels=["node"]
        )
        acked = GaugeMetricFamily(
            "weft_controller_agent_acked_version", "Last version the agent ACKed", labels=["node"]
        )
        lag = GaugeMetricFamily(
            "weft_controller_agent_lag_versions",
            "Store revision minus the agent's ACKed version",
            labels=["node"],
        )
        nacked = GaugeMetricFamily(
            "weft_controller_agent_nacked_version",
            "Version the agent refused (0: none outstanding)",
            labels=["node"],
        )
        revision = self._revision()
        for agent in self._agents():
            connected.add_metric([agent.node], 1.0 if agent.connected else 0.0)
            acked.add_metric([agent.node], agent.acked_version)
            lag.add_metric([agent.node], max(0, revision - agent.acked_version))
            nacked.add_metric([agent.node], agent.nacked_version)
        expiry = GaugeMetricFamily(
            "weft_controller_node_certificate_expiry_timestamp_seconds",
            "When each node's certificate expires (unix time)",
            labels=["node"],
        )
        for cert in self._certs():
            expiry.add_metric([cert.node], cert.not_after)
        yield from (connected, acked, lag, nacked, expiry)
