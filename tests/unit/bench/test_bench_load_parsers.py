"""The parsers of the load tools' output: iperf3 JSON, wrk text, rr/conn clients, gRPC client."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.loads.bulk import parse_iperf3_json
from bench.loads.connrate import parse_conn_output
from bench.loads.grpc_unary import parse_grpc_report
from bench.loads.http import parse_wrk_output
from bench.loads.request_response import parse_rr_output
from bench.measurement import LoadError

FIXTURES = Path(__file__).parent / "fixtures"


def test_iperf3_report_gives_receiver_bits_per_second() -> None:
    bits = parse_iperf3_json((FIXTURES / "iperf3_loopback.json").read_text())
    assert bits == pytest.approx(15616058144.0292)


def test_iperf3_error_report_becomes_a_load_error_with_iperf3s_message() -> None:
    with pytest.raises(LoadError, match="Connection refused"):
        parse_iperf3_json((FIXTURES / "iperf3_refused.json").read_text())


def test_iperf3_non_json_output_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no JSON"):
        parse_iperf3_json("iperf3: error - unable to connect")


def test_wrk_report_gives_rate_and_latency_percentiles_in_microseconds() -> None:
    report = parse_wrk_output((FIXTURES / "wrk_16conns.txt").read_text())
    assert report.requests_per_s == pytest.approx(36965.63)
    assert report.latency_us == {50.0: 252.0, 75.0: 574.0, 90.0: 3120.0, 99.0: 36270.0}
    assert report.socket_errors == 0
    assert report.non_2xx == 0


def test_wrk_errors_and_non_2xx_responses_are_counted() -> None:
    text = (
        (FIXTURES / "wrk_16conns.txt")
        .read_text()
        .replace(
            "Requests/sec:",
            "  Socket errors: connect 1, read 2, write 0, timeout 3\n"
            "  Non-2xx or 3xx responses: 17\nRequests/sec:",
        )
    )
    report = parse_wrk_output(text)
    assert report.socket_errors == 6
    assert report.non_2xx == 17


def test_wrk_latency_in_seconds_is_converted() -> None:
    report = parse_wrk_output("     50%    1.50s\nRequests/sec:      2.00\n")
    assert report.latency_us[50.0] == 1_500_000.0


def test_wrk_output_without_a_rate_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="Requests/sec"):
        parse_wrk_output("unable to connect to 10.88.2.10:8080 Connection refused\n")


def test_rr_output_gives_one_sample_per_round() -> None:
    assert parse_rr_output("rounds 3 elapsed_ns 900\n100\n200\n300\n") == [100, 200, 300]


def test_rr_output_with_fewer_samples_than_announced_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="announced 3"):
        parse_rr_output("rounds 3 elapsed_ns 900\n100\n")


def test_rr_output_with_no_round_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no round trip"):
        parse_rr_output("rounds 0 elapsed_ns 5\n")


def test_conn_output_gives_counts_and_timings() -> None:
    run = parse_conn_output("connections 2 failures 1 elapsed_ns 1000\n10 40\n12 50\n")
    assert (run.connections, run.failures, run.elapsed_ns) == (2, 1, 1000)
    assert run.connect_ns == [10, 12]
    assert run.total_ns == [40, 50]


def test_conn_output_without_header_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no header"):
        parse_conn_output("conn_client: bad arguments\n")


def test_grpc_report_is_requests_over_elapsed_from_the_last_line() -> None:
    text = 'some warning\n{"requests": 3000, "elapsed_s": 1.5}\n'
    assert parse_grpc_report(text) == pytest.approx(2000.0)


def test_grpc_report_with_no_request_is_a_load_error() -> None:
    with pytest.raises(LoadError, match="no request"):
        parse_grpc_report('{"requests": 0, "elapsed_s": 1.0}')


@given(st.text(max_size=300))
def test_parsers_reject_garbage_with_load_error_only(text: str) -> None:
    for parse in (parse_iperf3_json, parse_wrk_output, parse_rr_output, parse_conn_output,
                  parse_grpc_report):  # fmt: skip
        with contextlib.suppress(LoadError):
            parse(text)
