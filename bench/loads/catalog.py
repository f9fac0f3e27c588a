"""What a load is: a name, the server it talks to, the metrics it reports and how to run it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bench.measurement import LoadContext, LoadOutcome, Metric

# The server each load talks to, and its port on every server workload.
SERVICE_PORTS: dict[str, int] = {"iperf": 5201, "echo": 7001, "http": 8080, "grpc": 9090}


@dataclass(frozen=True)
class Load:
    """One kind of traffic; `run` performs it once and returns its figures."""

    name: str
    title: str
    service: str  # a key of SERVICE_PORTS
    metrics: tuple[Metric, ...]
    run: Callable[[LoadContext], LoadOutcome]
    max_count: int  # the count bound of one run, on top of the time bound

    def metric(self, key: str) -> Metric:
        for metric in self.metrics:
            if metric.key == key:
                return metric
        raise KeyError(f"load {self.name} has no metric {key}")
