"""The retry machine with gRPC retry conditions, in virtual time: a settled grpc-status retried
within the attempts and the per-try/request timeouts; an unsettled one (a message already
relayed) never."""

from __future__ import annotations

import pytest

from waypoint.config import RetryOn, RetryPolicy, Timeouts
from waypoint.resilience import (
    Deliver,
    Failure,
    GiveUp,
    RequestRetries,
    ResponseReceived,
    StartAttempt,
    WaitBackoff,
)


class VirtualClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def at(seconds: float) -> object:
    return pytest.approx(seconds, abs=1e-9)


NO_TIMEOUTS = Timeouts()
UNAVAILABLE = ResponseReceived(200, 14)
OK = ResponseReceived(200, 0)


def machine(
    retry_on: set[RetryOn], attempts: int = 2, timeouts: Timeouts = NO_TIMEOUTS, **extra: float
) -> tuple[RequestRetries, VirtualClock]:
    clock = VirtualClock()
    policy = RetryPolicy(
        attempts=attempts, retry_on=frozenset(retry_on), backoff_base_s=0.01,
        backoff_max_s=0.05, **extra,  # type: ignore[arg-type]
    )  # fmt: skip
    return RequestRetries(timeouts, policy, clock, lambda: 1.0), clock


def test_unavailable_is_retried_until_a_try_succeeds() -> None:
    retries, clock = machine({RetryOn.UNAVAILABLE})
    assert retries.begin() == StartAttempt(1, None)
    assert retries.on_outcome(UNAVAILABLE) == WaitBackoff(at(0.01))
    clock.now = 0.01
    assert retries.on_timer() == StartAttempt(2, None)
    assert retries.on_outcome(OK) == Deliver(200)
    assert retries.attempts_made == 2


def test_each_grpc_condition_retries_its_own_status_only() -> None:
    statuses = {
        RetryOn.CANCELLED: 1, RetryOn.DEADLINE_EXCEEDED: 4, RetryOn.RESOURCE_EXHAUSTED: 8,
        RetryOn.INTERNAL: 13, RetryOn.UNAVAILABLE: 14,
    }  # fmt: skip
    for condition, status in statuses.items():
        for seen in (*statuses.values(), 0, 2, 5, 7):
            retries, _ = machine({condition})
            retries.begin()
            retried = isinstance(retries.on_outcome(ResponseReceived(200, seen)), WaitBackoff)
            assert retried is (seen == status), (condition, seen)


def test_attempts_run_out_and_the_last_grpc_answer_is_delivered() -> None:
    retries, clock = machine({RetryOn.UNAVAILABLE}, attempts=2)
    retries.begin()
    for _ in range(2):
        step = retries.on_outcome(UNAVAILABLE)
        assert isinstance(step, WaitBackoff)
        clock.now = step.until
        assert isinstance(retries.on_timer(), StartAttempt)
    assert retries.on_outcome(UNAVAILABLE) == Deliver(200)  # the client gets UNAVAILABLE
    assert retries.attempts_made == 3


def test_a_status_not_known_before_relaying_is_never_retried() -> None:
    # grpc_status None: a message was already relayed, so the status in the trailers that
    # follow is final, whatever it will be.
    retries, _ = machine({RetryOn.UNAVAILABLE, RetryOn.INTERNAL})
    retries.begin()
    assert retries.on_outcome(ResponseReceived(200, None)) == Deliver(200)


def test_http_conditions_do_not_look_at_grpc_status_and_grpc_ones_not_at_http_status() -> None:
    retries, _ = machine({RetryOn.SERVER_ERROR, RetryOn.RETRIABLE_STATUS_CODES})
    retries.begin()
    assert retries.on_outcome(UNAVAILABLE) == Deliver(200)
    retries, _ = machine({RetryOn.UNAVAILABLE})
    retries.begin()
    assert retries.on_outcome(ResponseReceived(503)) == Deliver(503)


def test_per_try_timeout_bounds_each_try_and_the_request_timeout_the_whole() -> None:
    # per try 0.3 s, request 1 s, back-off 0.01 s then 0.02 s: tries at 0, 0.31, 0.63; the
    # third one's per-try deadline (0.93) comes first, then the request's (1.0) ends it.
    retries, clock = machine(
        {RetryOn.UNAVAILABLE, RetryOn.RESET}, attempts=5, timeouts=Timeouts(request_s=1.0),
        per_try_timeout_s=0.3,
    )  # fmt: skip
    assert retries.begin() == StartAttempt(1, at(0.3))
    clock.now = 0.3
    assert retries.on_timer() == WaitBackoff(at(0.31))  # a per-try timeout is a reset
    clock.now = 0.31
    assert retries.on_timer() == StartAttempt(2, at(0.61))
    clock.now = 0.4
    assert retries.on_outcome(UNAVAILABLE) == WaitBackoff(at(0.42))
    clock.now = 0.42
    assert retries.on_timer() == StartAttempt(3, at(0.72))
    clock.now = 0.72
    assert retries.on_timer() == WaitBackoff(at(0.76))
    clock.now = 0.76
    assert retries.on_timer() == StartAttempt(4, at(1.0))  # the request deadline comes first
    clock.now = 1.0
    assert retries.on_timer() == GiveUp(504, None)


def test_a_body_that_outgrew_the_buffer_is_not_retried_on_grpc_status() -> None:
    retries, _ = machine({RetryOn.UNAVAILABLE})
    retries.begin()
    retries.note_body_bytes(64 * 1024 + 1)
    assert retries.on_outcome(UNAVAILABLE) == Deliver(200)


def test_connect_failure_with_only_grpc_conditions_gives_up() -> None:
    retries, _ = machine({RetryOn.UNAVAILABLE})
    retries.begin()
    assert retries.on_outcome(Failure.CONNECT_FAILURE) == GiveUp(503, Failure.CONNECT_FAILURE)
