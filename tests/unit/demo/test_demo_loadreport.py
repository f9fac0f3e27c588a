"""demo.loadreport: nearest-rank percentiles and the report's verdict."""

from __future__ import annotations

from demo.loadreport import KindStats, LoadReport, percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert [percentile(values, q) for q in (0.5, 0.9, 0.99, 1.0)] == [50.0, 90.0, 99.0, 100.0]
    assert percentile([7.0], 0.99) == 7.0
    assert percentile([], 0.5) is None


def test_report_is_ok_only_without_errors_and_cut_offs_are_not_errors() -> None:
    http = KindStats("http", planned=3)
    http.sent = 3
    http.succeeded(1.0)
    http.succeeded(3.0)
    http.cut_off = 1
    report = LoadReport(targets={}, duration_limit_s=1.0, kinds={"http": http})
    assert report.ok
    http.failed("HTTP 502: backend reviews failed")
    http.failed("HTTP 502: backend reviews failed")
    document = report.document()
    assert (report.ok, document["ok"], document["errors"]) == (False, False, 2)
    assert document["kinds"]["http"]["error_reasons"] == {"HTTP 502: backend reviews failed": 2}
    assert document["kinds"]["http"]["latency_ms"] == {"p50": 1.0, "p90": 3.0, "p99": 3.0}
