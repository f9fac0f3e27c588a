"""What a load run saw, per kind of traffic: counts, outcomes, latency percentiles and errors."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

KINDS = ("http", "grpc-unary", "grpc-stream", "tcp-echo")


def percentile(sorted_values: list[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values; None when there are none."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[rank - 1]


@dataclass
class KindStats:
    """One kind of traffic: `planned` operations, of which `sent` started and `ok` succeeded."""

    kind: str
    planned: int
    sent: int = 0
    ok: int = 0
    # Still in flight when --duration-limit expired: not counted as errors, reported apart.
    cut_off: int = 0
    # Status codes (HTTP) or status names (gRPC, echo) of the answers that came back.
    responses: Counter[str] = field(default_factory=Counter)
    reviews_versions: Counter[str] = field(default_factory=Counter)
    error_reasons: Counter[str] = field(default_factory=Counter)
    latencies_ms: list[float] = field(default_factory=list)
    # Kind-specific totals, e.g. stream messages or echoed bytes.
    totals: Counter[str] = field(default_factory=Counter)

    @property
    def errors(self) -> int:
        return sum(self.error_reasons.values())

    def succeeded(self, latency_ms: float) -> None:
        self.ok += 1
        self.latencies_ms.append(latency_ms)

    def failed(self, reason: str) -> None:
        self.error_reasons[reason] += 1

    def latency_summary(self) -> dict[str, float | None]:
        ordered = sorted(self.latencies_ms)
        return {
            name: None if (value := percentile(ordered, q)) is None else round(value, 3)
            for name, q in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99))
        }

    def document(self) -> dict[str, Any]:
        return {
            "planned": self.planned,
            "sent": self.sent,
            "ok": self.ok,
            "errors": self.errors,
            "cut_off": self.cut_off,
            "responses": dict(sorted(self.responses.items())),
            "reviews_versions": dict(sorted(self.reviews_versions.items())),
            "latency_ms": self.latency_summary(),
            "totals": dict(sorted(self.totals.items())),
            "error_reasons": dict(self.error_reasons.most_common()),
        }


@dataclass
class LoadReport:
    targets: dict[str, str]
    duration_limit_s: float
    kinds: dict[str, KindStats]
    elapsed_s: float = 0.0
    stopped_by_duration_limit: bool = False

    @property
    def errors(self) -> int:
        return sum(stats.errors for stats in self.kinds.values())

    @property
    def ok(self) -> bool:
        return self.errors == 0

    def document(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "errors": self.errors,
            "elapsed_s": round(self.elapsed_s, 3),
            "duration_limit_s": self.duration_limit_s,
            "stopped_by_duration_limit": self.stopped_by_duration_limit,
            "targets": self.targets,
            "kinds": {name: stats.document() for name, stats in self.kinds.items()},
        }
