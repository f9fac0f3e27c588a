"""The controller's Prometheus metrics (one registry per controller, so tests can run several)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


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
