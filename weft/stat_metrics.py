"""Per-service request rate, success rate and latency from waypoints' Istio metrics (pure).

Input: Prometheus text from waypoints (`istio_requests_total`,
`istio_request_duration_milliseconds`, reporter="waypoint"), scraped twice. Output: one row per
destination service with the request rate over the interval, the share of non-5xx responses
(what Istio's and Linkerd's dashboards call success) and p50/p99 estimated from the histogram
buckets as Prometheus' histogram_quantile() does (linear within a bucket).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

REQUESTS = "istio_requests_total"
DURATION_BUCKET = "istio_request_duration_milliseconds_bucket"

ServiceKey = tuple[str, str]  # (namespace, service name)


@dataclass
class Counts:
    """Cumulative counters of one service, summed over every label set and waypoint."""

    requests: float = 0.0
    failures: float = 0.0  # 5xx
    buckets: dict[float, float] | None = None  # upper bound (le) -> cumulative count

    def minus(self, earlier: Counts | None) -> Counts:
        if earlier is None:
            return self
        buckets = {
            le: count - (earlier.buckets or {}).get(le, 0.0)
            for le, count in (self.buckets or {}).items()
        }
        return Counts(self.requests - earlier.requests, self.failures - earlier.failures, buckets)


@dataclass(frozen=True)
class ServiceStat:
    namespace: str
    service: str
    requests: float  # in the interval
    rps: float
    success_rate: float | None  # None: no requests
    p50_ms: float | None
    p99_ms: float | None

    def as_dict(self) -> dict[str, object]:
        return {
            "namespace": self.namespace,
            "service": self.service,
            "requests": self.requests,
            "rps": round(self.rps, 3),
            "success_rate": None if self.success_rate is None else round(self.success_rate, 4),
            "p50_ms": None if self.p50_ms is None else round(self.p50_ms, 3),
            "p99_ms": None if self.p99_ms is None else round(self.p99_ms, 3),
        }


def _service(labels: Mapping[str, str]) -> ServiceKey | None:
    if labels.get("reporter") != "waypoint":
        return None
    name = labels.get("destination_service_name", "unknown")
    namespace = labels.get("destination_service_namespace", "unknown")
    if name == "unknown":
        return None  # a request no service took (404 route_not_found and the like)
    return namespace, name


def parse_counts(texts: Iterable[str]) -> dict[ServiceKey, Counts]:
    """Sum the waypoints' expositions into cumulative counts per service."""
    counts: dict[ServiceKey, Counts] = defaultdict(Counts)
    for text in texts:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                key = _service(sample.labels)
                if key is None:
                    continue
                entry = counts[key]
                if sample.name == REQUESTS:
                    entry.requests += sample.value
                    if sample.labels.get("response_code", "").startswith("5"):
                        entry.failures += sample.value
                elif sample.name == DURATION_BUCKET:
                    if entry.buckets is None:
                        entry.buckets = {}
                    le = float(sample.labels["le"])
                    entry.buckets[le] = entry.buckets.get(le, 0.0) + sample.value
    return dict(counts)


def quantile(q: float, buckets: Mapping[float, float]) -> float | None:
    """histogram_quantile(q) over cumulative `buckets` (le -> count); None when empty."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for upper_bound, count in ordered:
        if count >= rank:
            if math.isinf(upper_bound):
                return lower_bound  # Prometheus answers the highest finite bound
            if count == lower_count:
                return upper_bound
            return lower_bound + (upper_bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = upper_bound, count
    return lower_bound


def service_stats(
    before: Mapping[ServiceKey, Counts],
    after: Mapping[ServiceKey, Counts],
    seconds: float,
    namespace: str | None = None,
) -> list[ServiceStat]:
    """One row per service seen in `after`, over the `seconds` between the two scrapes."""
    rows = []
    for key in sorted(after):
        if namespace is not None and key[0] != namespace:
            continue
        delta = after[key].minus(before.get(key))
        requests = max(delta.requests, 0.0)
        buckets = delta.buckets or {}
        rows.append(
            ServiceStat(
                namespace=key[0],
                service=key[1],
                requests=requests,
                rps=requests / seconds if seconds > 0 else 0.0,
                success_rate=None if requests == 0 else 1.0 - delta.failures / requests,
                p50_ms=quantile(0.5, buckets),
                p99_ms=quantile(0.99, buckets),
            )
        )
    return rows
