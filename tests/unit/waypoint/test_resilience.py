"""Retries, timeouts, circuit breaking, outlier detection, balancing, rate limits and faults,
driven in virtual time with injected randomness."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from waypoint.config import (
    ConnectionPool,
    FaultAbort,
    FaultDelay,
    FaultInjection,
    LoadBalancer,
    LoadBalancerPolicy,
    OutlierDetection,
    RateLimit,
    RetryOn,
    RetryPolicy,
    Timeouts,
)
from waypoint.resilience import (
    ConsistentHash,
    Deliver,
    Failure,
    GiveUp,
    LeastRequest,
    OpenConnection,
    OutlierDetector,
    Overflow,
    Queued,
    RandomChoice,
    RequestRetries,
    ResponseReceived,
    RoundRobin,
    StartAttempt,
    TokenBucket,
    UpstreamPool,
    UseConnection,
    WaitBackoff,
    decide_fault,
    make_balancer,
)


class VirtualClock:
    """Time that moves only when the test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now = round(self.now + seconds, 9)


def at(seconds: float) -> object:
    """A virtual instant, compared with float tolerance (0.4 + 0.025 is not exactly 0.425)."""
    return pytest.approx(seconds, abs=1e-9)


def full_jitter() -> float:
    return 1.0  # back-off waits its whole ceiling: the steps are exact


# --- retries and timeouts -----------------------------------------------------------------------


def test_per_try_timeout_fires_at_its_deadline_and_the_retry_starts_after_backoff() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=2, per_try_timeout_s=0.5, retry_on=frozenset({RetryOn.RESET}))
    retries = RequestRetries(Timeouts(), retry, clock, full_jitter)

    # t=0: the first try goes out with a deadline half a second away.
    assert retries.begin() == StartAttempt(attempt=1, deadline=0.5)
    # t=0.499: nothing is due yet.
    clock.advance(0.499)
    assert retries.on_timer() is None
    # t=0.5: the per-try timeout fires; reset covers it, so back off 25 ms (base x 2^0).
    clock.advance(0.001)
    assert retries.on_timer() == WaitBackoff(until=0.525)
    assert retries.deadline() == 0.525
    # t=0.525: the second try starts with a fresh per-try deadline.
    clock.advance(0.025)
    assert retries.on_timer() == StartAttempt(attempt=2, deadline=1.025)
    # t=0.6: it answers 200; the response is delivered.
    clock.advance(0.075)
    assert retries.on_outcome(ResponseReceived(200)) == Deliver(200)
    assert retries.attempts_made == 2


def test_attempts_counts_retries_after_the_first_try_then_the_last_answer_is_delivered() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=2, retry_on=frozenset({RetryOn.SERVER_ERROR}))
    retries = RequestRetries(Timeouts(), retry, clock, full_jitter)
    assert retries.begin() == StartAttempt(1, None)
    # try 1 -> 503: retry after 25 ms
    assert retries.on_outcome(ResponseReceived(503)) == WaitBackoff(at(0.025))
    clock.advance(0.025)
    assert retries.on_timer() == StartAttempt(2, None)
    # try 2 -> 500: retry after 50 ms (the ceiling doubles)
    assert retries.on_outcome(ResponseReceived(500)) == WaitBackoff(at(0.075))
    clock.advance(0.05)
    assert retries.on_timer() == StartAttempt(3, None)
    # try 3 -> 502: no retries left, the backend's own 502 goes to the client
    assert retries.on_outcome(ResponseReceived(502)) == Deliver(502)


def test_backoff_ceiling_is_capped_at_the_maximum() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(
        attempts=10, retry_on=frozenset({RetryOn.RESET}), backoff_base_s=0.1, backoff_max_s=0.3
    )
    retries = RequestRetries(Timeouts(), retry, clock, full_jitter)
    retries.begin()
    waits = []
    for _ in range(4):
        decision = retries.on_outcome(Failure.RESET)
        assert isinstance(decision, WaitBackoff)
        waits.append(round(decision.until - clock.now, 9))
        clock.now = decision.until
        retries.on_timer()
    assert waits == [0.1, 0.2, 0.3, 0.3]


def test_jitter_scales_the_backoff() -> None:
    clock = VirtualClock()
    retries = RequestRetries(
        Timeouts(), RetryPolicy(retry_on=frozenset({RetryOn.RESET})), clock, lambda: 0.5
    )
    retries.begin()
    assert retries.on_outcome(Failure.RESET) == WaitBackoff(0.0125)


def test_overall_request_timeout_ends_retries_with_504() -> None:
    clock = VirtualClock()
    retry = RetryPolicy(attempts=5, per_try_timeout_s=0.4, retry_on=frozenset({RetryOn.RESET}))
    retries = RequestRetries(Timeouts(request_s=1.0), retry, clock, full_jitter)
    assert retries.begin() == StartAttempt(1, at(0.4))
    clock.advance(0.4)
    assert retries.on_timer() == WaitBackoff(at(0.425))
    clock.advance(0.025)
    # The second try's deadline is its per-try timeout, still inside the request timeout.
    assert retries.on_timer() == StartAttempt(2, at(0.825))
    clock.advance(0.4)
    assert retries.on_timer() == WaitBackoff(at(0.875))
    clock.advance(0.05)
    # Third try: the request deadline (1.0) comes before its per-try deadline (1.275).
    assert retries.on_timer() == StartAttempt(3, at(1.0))
    clock.advance(0.124)
    assert retries.on_timer() is None
    clock.advance(0.001)
    assert retries.on_timer() == GiveUp(504, None)
    assert retries.deadline() is None


def test_per_try_timeout_without_retries_is_504() -> None:
    clock = VirtualClock()
    retries = RequestRetries(Timeouts(backend_request_s=0.2), None, clock, full_jitter)
    assert retries.begin() == StartAttempt(1, 0.2)
    clock.advance(0.2)
    assert retries.on_timer() == GiveUp(504, Failure.PER_TRY_TIMEOUT)


def test_connect_failure_is_retried_by_default_and_then_503() -> None:
    clock = VirtualClock()
    retries = RequestRetries(Timeouts(), RetryPolicy(attempts=1), clock, full_jitter)
    retries.begin()
    assert isinstance(retries.on_outcome(Failure.CONNECT_FAILURE), WaitBackoff)
    clock.advance(1)
    retries.on_timer()
    assert retries.on_outcome(Failure.CONNECT_FAILURE) == GiveUp(503, Failure.CONNECT_FAILURE)


def test_retriable_status_codes_retry_only_the_listed_codes() -> None:
    retry = RetryPolicy(
        attempts=3,
        retry_on=frozenset({RetryOn.RETRIABLE_STATUS_CODES}),
        retriable_status_codes=frozenset({409}),
    )
    for status, retried in ((409, True), (503, False), (500, False)):
        retries = RequestRetries(Timeouts(), retry, VirtualClock(), full_jitter)
        retries.begin()
        assert isinstance(retries.on_outcome(ResponseReceived(status)), WaitBackoff) is retried


def test_5xx_condition_does_not_retry_4xx() -> None:
    retry = RetryPolicy(attempts=3, retry_on=frozenset({RetryOn.SERVER_ERROR}))
    retries = RequestRetries(Timeouts(), retry, VirtualClock(), full_jitter)
    retries.begin()
    assert retries.on_outcome(ResponseReceived(429)) == Deliver(429)


def test_reset_condition_does_not_retry_a_503_response() -> None:
    retry = RetryPolicy(attempts=3, retry_on=frozenset({RetryOn.RESET}))
    retries = RequestRetries(Timeouts(), retry, VirtualClock(), full_jitter)
    retries.begin()
    assert retries.on_outcome(ResponseReceived(503)) == Deliver(503)


def test_request_body_above_the_buffer_limit_is_not_retried() -> None:
    retry = RetryPolicy(attempts=3, retry_on=frozenset({RetryOn.SERVER_ERROR}))
    retries = RequestRetries(Timeouts(), retry, VirtualClock(), full_jitter, body_buffer_limit=1024)
    retries.begin()
    retries.note_body_bytes(1024)
    assert retries.body_retained
    retries.note_body_bytes(1025)
    assert not retries.body_retained
    assert retries.on_outcome(ResponseReceived(503)) == Deliver(503)


def test_outcome_without_an_attempt_in_flight_is_a_programming_error() -> None:
    retries = RequestRetries(Timeouts(), None, VirtualClock(), full_jitter)
    with pytest.raises(RuntimeError, match="no attempt in flight"):
        retries.on_outcome(ResponseReceived(200))


# --- circuit breaking ---------------------------------------------------------------------------


def test_pool_reuses_an_idle_connection_to_the_same_endpoint() -> None:
    pool = UpstreamPool(ConnectionPool())
    first = pool.acquire("10.0.0.1:80")
    assert isinstance(first, OpenConnection)
    pool.release(first.connection, reusable=True)
    again = pool.acquire("10.0.0.1:80")
    assert again == UseConnection(first.connection, close_after=False)
    assert pool.open_connections == 1


def test_requests_beyond_connections_wait_then_overflow_with_the_limit_named() -> None:
    pool = UpstreamPool(ConnectionPool(max_connections=1, max_pending_requests=1))
    busy = pool.acquire("a")
    assert isinstance(busy, OpenConnection)
    waiting = pool.acquire("a")
    assert isinstance(waiting, Queued)
    assert pool.acquire("a") == Overflow("http.http1MaxPendingRequests")
    # The busy request finishes: the waiter gets its connection.
    grants = pool.release(busy.connection, reusable=True)
    assert grants == [(waiting.ticket, UseConnection(busy.connection, close_after=False))]
    assert pool.pending_requests == 0


def test_zero_pending_requests_overflows_at_once() -> None:
    pool = UpstreamPool(ConnectionPool(max_connections=1, max_pending_requests=0))
    pool.acquire("a")
    assert isinstance(pool.acquire("a"), Overflow)


def test_connection_is_closed_after_max_requests_per_connection() -> None:
    pool = UpstreamPool(ConnectionPool(max_requests_per_connection=2))
    first = pool.acquire("a")
    assert isinstance(first, OpenConnection)
    assert first.close_after is False
    pool.release(first.connection, reusable=True)
    second = pool.acquire("a")
    assert second == UseConnection(first.connection, close_after=True)
    pool.release(first.connection, reusable=True)
    assert pool.open_connections == 0
    assert isinstance(pool.acquire("a"), OpenConnection)


def test_failed_connection_frees_its_slot_for_a_waiter() -> None:
    pool = UpstreamPool(ConnectionPool(max_connections=1, max_pending_requests=5))
    opening = pool.acquire("a")
    assert isinstance(opening, OpenConnection)
    waiting = pool.acquire("b")
    assert isinstance(waiting, Queued)
    ((ticket, grant),) = pool.connection_failed(opening.connection)
    assert ticket == waiting.ticket
    assert isinstance(grant, OpenConnection)
    assert grant.connection.endpoint == "b"


def test_idle_connection_to_another_endpoint_is_traded_at_the_limit() -> None:
    pool = UpstreamPool(ConnectionPool(max_connections=1))
    to_a = pool.acquire("a")
    assert isinstance(to_a, OpenConnection)
    pool.release(to_a.connection, reusable=True)
    to_b = pool.acquire("b")
    assert isinstance(to_b, OpenConnection)
    assert pool.closed_idle == [to_a.connection]


def test_cancelled_waiter_is_not_granted() -> None:
    pool = UpstreamPool(ConnectionPool(max_connections=1, max_pending_requests=5))
    busy = pool.acquire("a")
    assert isinstance(busy, OpenConnection)
    waiting = pool.acquire("a")
    assert isinstance(waiting, Queued)
    pool.cancel(waiting.ticket)
    assert pool.release(busy.connection, reusable=True) == []


# --- outlier detection --------------------------------------------------------------------------

ENDPOINTS = [f"10.0.0.{i}:80" for i in range(1, 11)]


def detector(clock: VirtualClock, **policy: float) -> OutlierDetector:
    outliers = OutlierDetector(
        OutlierDetection(consecutive_5xx_errors=3, base_ejection_time_s=30, **policy),  # type: ignore[arg-type]
        clock,
    )
    outliers.set_endpoints(ENDPOINTS)
    return outliers


def test_consecutive_5xx_eject_an_endpoint_which_returns_after_the_ejection_time() -> None:
    clock = VirtualClock()
    outliers = detector(clock)
    bad = ENDPOINTS[0]
    assert outliers.record(bad, 503) is False
    assert outliers.record(bad, None) is False  # a local failure counts as a 5xx
    assert outliers.record(bad, 500) is True
    assert bad not in outliers.available(ENDPOINTS)
    clock.advance(29.9)
    assert outliers.is_ejected(bad)
    clock.advance(0.1)
    assert not outliers.is_ejected(bad)


def test_a_success_resets_the_consecutive_count() -> None:
    outliers = detector(VirtualClock())
    for status in (503, 503, 200, 503, 503):
        assert outliers.record(ENDPOINTS[0], status) is False


def test_second_ejection_lasts_twice_the_base_time() -> None:
    clock = VirtualClock()
    outliers = detector(clock)
    for _ in range(3):
        outliers.record(ENDPOINTS[0], 503)
    clock.advance(30)
    for _ in range(3):
        outliers.record(ENDPOINTS[0], 503)
    clock.advance(59.9)
    assert outliers.is_ejected(ENDPOINTS[0])
    clock.advance(0.1)
    assert not outliers.is_ejected(ENDPOINTS[0])


def test_max_ejection_percent_caps_ejections_but_one_is_always_allowed() -> None:
    outliers = detector(VirtualClock(), max_ejection_percent=20)  # 2 of 10
    for endpoint in ENDPOINTS[:3]:
        for _ in range(3):
            outliers.record(endpoint, 503)
    assert len(outliers.available(ENDPOINTS)) == 8
    few = detector(VirtualClock(), max_ejection_percent=5)  # 0.5 of 10: still one
    for endpoint in ENDPOINTS[:2]:
        for _ in range(3):
            few.record(endpoint, 503)
    assert len(few.available(ENDPOINTS)) == 9


# --- load balancing -----------------------------------------------------------------------------


def test_round_robin_cycles_through_endpoints() -> None:
    balancer = RoundRobin()
    assert [balancer.pick(["a", "b", "c"], ()) for _ in range(4)] == ["a", "b", "c", "a"]


def test_no_endpoints_picks_nothing() -> None:
    for balancer in (RoundRobin(), RandomChoice(random.random), LeastRequest(random.random)):
        assert balancer.pick([], ()) is None


def test_least_request_prefers_the_less_busy_of_two_draws() -> None:
    draws = iter([0.0, 0.5])  # draws "a" then "b"
    balancer = LeastRequest(lambda: next(draws))
    balancer.started("a")
    assert balancer.pick(["a", "b"], ()) == "b"


def test_least_request_spreads_load_towards_idle_endpoints() -> None:
    source = random.Random(3)
    balancer = LeastRequest(source.random)
    picks = Counter()
    for _ in range(300):
        chosen = balancer.pick(["a", "b", "c"], ())
        assert chosen is not None
        balancer.started(chosen)  # never finished: in-flight counts keep growing
        picks[chosen] += 1
    assert max(picks.values()) - min(picks.values()) <= 3


def test_random_covers_every_endpoint() -> None:
    balancer = RandomChoice(random.Random(1).random)
    assert {balancer.pick(["a", "b", "c"], ()) for _ in range(100)} == {"a", "b", "c"}


def test_consistent_hash_sends_the_same_key_to_the_same_endpoint() -> None:
    balancer = ConsistentHash("x-user", random.random)
    endpoints = ENDPOINTS[:5]
    first = balancer.pick(endpoints, (("x-user", "alice"),))
    assert all(balancer.pick(endpoints, (("x-user", "alice"),)) == first for _ in range(20))


def test_consistent_hash_moves_only_keys_of_a_removed_endpoint() -> None:
    balancer = ConsistentHash("x-user", random.random)
    keys = [f"user-{n}" for n in range(500)]
    before = {k: balancer.pick(ENDPOINTS, (("x-user", k),)) for k in keys}
    removed = ENDPOINTS[3]
    remaining = [e for e in ENDPOINTS if e != removed]
    after = {k: balancer.pick(remaining, (("x-user", k),)) for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert moved
    assert all(before[k] == removed for k in moved)
    assert 10 <= Counter(before.values())[removed] <= 100  # roughly a tenth of the keys


def test_make_balancer_follows_the_destination_rule() -> None:
    hashed = make_balancer(
        LoadBalancer(LoadBalancerPolicy.CONSISTENT_HASH, hash_header="X-User"), random.random
    )
    assert isinstance(hashed, ConsistentHash)
    assert hashed.header == "x-user"
    assert isinstance(make_balancer(LoadBalancer(), random.random), LeastRequest)


# --- local rate limit ---------------------------------------------------------------------------


def test_token_bucket_refuses_when_empty_and_refills_each_interval() -> None:
    clock = VirtualClock()
    bucket = TokenBucket(RateLimit(max_tokens=3, fill_interval_s=1.0, tokens_per_fill=1), clock)
    assert [bucket.try_take() for _ in range(4)] == [True, True, True, False]
    clock.advance(0.999)
    assert bucket.try_take() is False
    clock.advance(0.001)
    assert bucket.try_take() is True
    assert bucket.try_take() is False
    clock.advance(10)
    assert bucket.tokens == 3  # never above max_tokens


# --- fault injection ----------------------------------------------------------------------------


def test_fault_percentages_follow_the_random_source() -> None:
    fault = FaultInjection(
        delay=FaultDelay(fixed_delay_s=2.0, percentage=50), abort=FaultAbort(503, percentage=10)
    )
    draws = iter([0.49, 0.09])
    assert decide_fault(fault, lambda: next(draws)).delay_s == 2.0
    draws = iter([0.5, 0.1])
    decision = decide_fault(fault, lambda: next(draws))
    assert (decision.delay_s, decision.abort_status) == (0.0, None)


def test_abort_share_over_many_requests_matches_the_percentage() -> None:
    fault = FaultInjection(abort=FaultAbort(500, percentage=25))
    source = random.Random(11)
    aborted = sum(decide_fault(fault, source.random).abort_status == 500 for _ in range(2000))
    assert 450 <= aborted <= 550


def test_drop_idle_forgets_idle_connections_to_removed_endpoints_only() -> None:
    pool = UpstreamPool(ConnectionPool())
    kept, removed, busy = pool.acquire("a"), pool.acquire("b"), pool.acquire("b")
    assert isinstance(kept, OpenConnection)
    assert isinstance(removed, OpenConnection)
    assert isinstance(busy, OpenConnection)
    pool.release(kept.connection, reusable=True)
    pool.release(removed.connection, reusable=True)
    assert pool.drop_idle(frozenset({"a"})) == [removed.connection]
    assert pool.open_connections == 2  # "a" idle, and the busy "b" finishing its request
