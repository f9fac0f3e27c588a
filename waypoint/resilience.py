"""Resilience as pure state machines: retries and timeouts, circuit breaking, outlier detection,
load balancing, local rate limiting and fault injection.

Nothing here sleeps, reads the clock by itself or draws its own random numbers: a `Clock` and a
`RandomSource` are injected, so every timeout and retry is tested in virtual time, and the asyncio
shell only arms the timer each machine asks for. Semantics follow Envoy, which is what Istio
operators' configuration means: `attempts` counts retries, `5xx` includes resets and connect
failures, an ejection lasts baseEjectionTime x the number of ejections, and so on.
"""

from __future__ import annotations

import hashlib
import itertools
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum

from waypoint.config import (
    ConnectionPool,
    FaultInjection,
    LoadBalancer,
    LoadBalancerPolicy,
    OutlierDetection,
    RateLimit,
    RetryOn,
    RetryPolicy,
    Timeouts,
)

Clock = Callable[[], float]  # monotonic seconds
RandomSource = Callable[[], float]  # uniform in [0, 1)
Headers = tuple[tuple[str, str], ...]
TIMER_SLACK_S = 1e-6


# --- retries and timeouts ---------------------------------------------------------------------


class Failure(Enum):
    """How an attempt ended without a response."""

    CONNECT_FAILURE = "connection failure"
    RESET = "connection termination"
    PER_TRY_TIMEOUT = "per-try timeout"


@dataclass(frozen=True)
class ResponseReceived:
    """The backend answered with response headers carrying `status`; for a gRPC response of
    which nothing was relayed yet, `grpc_status` is its grpc-status (None: not known yet)."""

    status: int
    grpc_status: int | None = None


AttemptOutcome = ResponseReceived | Failure


@dataclass(frozen=True)
class StartAttempt:
    """Send the request now; `attempt` counts from 1; give up on this try at `deadline`."""

    attempt: int
    deadline: float | None


@dataclass(frozen=True)
class WaitBackoff:
    """Wait until `until`, then call `on_timer()` to start the next attempt."""

    until: float


@dataclass(frozen=True)
class Deliver:
    """Pass the backend's response on to the client; the exchange is settled."""

    status: int


@dataclass(frozen=True)
class GiveUp:
    """Answer the client locally: 504 for a timeout, 503 for a connect failure or reset."""

    status: int
    failure: Failure | None  # None when the overall request timeout fired


RetryDecision = StartAttempt | WaitBackoff | Deliver | GiveUp


def _retried(policy: RetryPolicy, outcome: AttemptOutcome) -> bool:
    """Whether `retry_on` covers this outcome (Envoy's x-envoy-retry-on meanings)."""
    retry_on = policy.retry_on
    if isinstance(outcome, ResponseReceived):
        status = outcome.status
        return (
            (RetryOn.SERVER_ERROR in retry_on and status >= 500)
            or (RetryOn.GATEWAY_ERROR in retry_on and status in GATEWAY_ERRORS)
            or (
                RetryOn.RETRIABLE_STATUS_CODES in retry_on
                and status in policy.retriable_status_codes
            )
            or (outcome.grpc_status is not None and outcome.grpc_status in policy.grpc_statuses)
        )
    if outcome is Failure.CONNECT_FAILURE:
        return bool(retry_on & _ON_CONNECT_FAILURE)
    # A reset or a per-try timeout: the backend did not respond at all.
    return bool(retry_on & _ON_RESET)


GATEWAY_ERRORS = frozenset({502, 503, 504})
_ON_RESET = frozenset({RetryOn.SERVER_ERROR, RetryOn.GATEWAY_ERROR, RetryOn.RESET})
_ON_CONNECT_FAILURE = _ON_RESET | {RetryOn.CONNECT_FAILURE}


class _Phase(Enum):
    IDLE = "idle"
    ATTEMPTING = "attempting"
    BACKING_OFF = "backing off"
    SETTLED = "settled"


_NO_RETRY = RetryPolicy(attempts=0)  # built once: config objects validate on construction


class RequestRetries:
    """The life of one request against its backend: tries, per-try timeouts, back-off, the
    overall request timeout. Call `begin()`, then `on_outcome()` for each try's result and
    `on_timer()` whenever `deadline()` passes; each returns what to do next."""

    def __init__(
        self,
        timeouts: Timeouts,
        retry: RetryPolicy | None,
        clock: Clock,
        jitter: RandomSource,
        body_buffer_limit: int = 64 * 1024,
    ) -> None:
        self._retry = retry or _NO_RETRY
        self._clock = clock
        self._jitter = jitter
        self._body_buffer_limit = body_buffer_limit
        self._per_try_s = self._retry.per_try_timeout_s or timeouts.backend_request_s
        self._request_deadline: float | None = None
        if timeouts.request_s is not None:
            self._request_deadline = clock() + timeouts.request_s
        self._phase = _Phase.IDLE
        self._attempt = 0
        self._try_deadline: float | None = None
        self._backoff_until = 0.0
        self.body_retained = True  # False once the body outgrew the buffer: it cannot be replayed

    @property
    def attempts_made(self) -> int:
        return self._attempt

    @property
    def request_deadline(self) -> float | None:
        """When the route's request timeout fires (None: no timeout)."""
        return self._request_deadline

    def begin(self) -> RetryDecision:
        return self._start()

    def note_body_bytes(self, total: int) -> None:
        """The request body sent so far; above the buffer limit it was streamed, not kept."""
        if total > self._body_buffer_limit:
            self.body_retained = False

    def deadline(self) -> float | None:
        """When `on_timer()` must be called next, or None if no timer is needed."""
        if self._phase is _Phase.ATTEMPTING:
            candidates = (self._try_deadline, self._request_deadline)
        elif self._phase is _Phase.BACKING_OFF:
            candidates = (self._backoff_until, self._request_deadline)
        else:
            return None
        present = [c for c in candidates if c is not None]
        return min(present) if present else None

    def on_timer(self) -> RetryDecision | None:
        """A deadline passed: the overall timeout, a per-try timeout or the end of a back-off."""
        # asyncio runs a timer up to its clock resolution early, and float sums are inexact:
        # a deadline within a microsecond counts as reached.
        now = self._clock() + TIMER_SLACK_S
        if self._phase is _Phase.SETTLED or self._phase is _Phase.IDLE:
            return None
        if self._request_deadline is not None and now >= self._request_deadline:
            self._phase = _Phase.SETTLED
            return GiveUp(504, None)
        if self._phase is _Phase.BACKING_OFF:
            return self._start() if now >= self._backoff_until else None
        if self._try_deadline is not None and now >= self._try_deadline:
            return self.on_outcome(Failure.PER_TRY_TIMEOUT)
        return None

    def on_outcome(self, outcome: AttemptOutcome) -> RetryDecision:
        """The current try ended with a response or a failure."""
        if self._phase is not _Phase.ATTEMPTING:
            raise RuntimeError(f"no attempt in flight (phase: {self._phase.value})")
        if self._can_retry() and _retried(self._retry, outcome):
            retry_number = self._attempt  # 1 for the first retry
            ceiling = min(
                self._retry.backoff_max_s, self._retry.backoff_base_s * 2 ** (retry_number - 1)
            )
            self._backoff_until = self._clock() + self._jitter() * ceiling
            self._phase = _Phase.BACKING_OFF
            return WaitBackoff(self._backoff_until)
        self._phase = _Phase.SETTLED
        if isinstance(outcome, ResponseReceived):
            return Deliver(outcome.status)
        status = 504 if outcome is Failure.PER_TRY_TIMEOUT else 503
        return GiveUp(status, outcome)

    def _can_retry(self) -> bool:
        return self.body_retained and self._attempt <= self._retry.attempts

    def _start(self) -> StartAttempt:
        self._attempt += 1
        self._phase = _Phase.ATTEMPTING
        now = self._clock()
        self._try_deadline = None if self._per_try_s is None else now + self._per_try_s
        return StartAttempt(self._attempt, self.deadline())


# --- circuit breaking: the connection pool of one concrete backend ----------------------------


@dataclass
class UpstreamConnection:
    """A pooled HTTP/1.1 connection to one endpoint; it carries one request at a time."""

    id: int
    endpoint: str
    requests: int = 0
    busy: bool = False


@dataclass(frozen=True)
class UseConnection:
    """Send on this (already open) connection; close it afterwards if `close_after`."""

    connection: UpstreamConnection
    close_after: bool


@dataclass(frozen=True)
class OpenConnection:
    """Open this new connection, then send on it; call `connection_failed` if it cannot open."""

    connection: UpstreamConnection
    close_after: bool


@dataclass(frozen=True)
class Queued:
    """Every connection is busy and no more may open: wait for `grant` with this ticket."""

    ticket: int


@dataclass(frozen=True)
class Overflow:
    """The circuit is open: answer 503 without sending (Envoy: upstream_rq_pending_overflow)."""

    limit: str  # the connectionPool field that was exceeded


Grant = UseConnection | OpenConnection
Acquired = UseConnection | OpenConnection | Queued | Overflow


@dataclass
class _Waiter:
    ticket: int
    endpoint: str


class UpstreamPool:
    """Connection and request limits for one concrete backend (Istio connectionPool).

    maxConnections bounds open connections to all endpoints together; beyond it requests wait,
    up to http1MaxPendingRequests, and beyond that they overflow with 503; a connection that
    served maxRequestsPerConnection requests is closed instead of reused.
    """

    def __init__(self, limits: ConnectionPool) -> None:
        self.limits = limits
        self._connections: dict[int, UpstreamConnection] = {}
        self._pending: deque[_Waiter] = deque()
        self._ids = itertools.count(1)
        self.closed_idle: list[UpstreamConnection] = []  # idle connections the shell must close

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    @property
    def pending_requests(self) -> int:
        return len(self._pending)

    def acquire(self, endpoint: str) -> Acquired:
        """A request for `endpoint` wants a connection."""
        grant = self._grant_now(endpoint)
        if grant is not None:
            return grant
        if len(self._pending) >= self.limits.max_pending_requests:
            return Overflow("http.http1MaxPendingRequests")
        waiter = _Waiter(next(self._ids), endpoint)
        self._pending.append(waiter)
        return Queued(waiter.ticket)

    def release(self, connection: UpstreamConnection, reusable: bool) -> list[tuple[int, Grant]]:
        """The request on `connection` finished; hand the connection (or its slot) to a waiter.

        Returns (ticket, grant) pairs for queued requests that may now proceed."""
        connection.busy = False
        limit = self.limits.max_requests_per_connection
        if not reusable or (limit and connection.requests >= limit):
            self._connections.pop(connection.id, None)
        return self._serve_waiters()

    def connection_failed(self, connection: UpstreamConnection) -> list[tuple[int, Grant]]:
        """A connection could not be opened or broke: its slot frees up for a waiter."""
        self._connections.pop(connection.id, None)
        return self._serve_waiters()

    def drop_idle(self, keep: frozenset[str] | None = None) -> list[UpstreamConnection]:
        """Forget idle connections (all, or those to endpoints not in `keep`); the caller closes
        them. Busy ones finish their request first."""
        dropped = [
            c
            for c in self._connections.values()
            if not c.busy and (keep is None or c.endpoint not in keep)
        ]
        for connection in dropped:
            del self._connections[connection.id]
        return dropped

    def cancel(self, ticket: int) -> None:
        """A queued request gave up (its client left or its timeout fired)."""
        self._pending = deque(w for w in self._pending if w.ticket != ticket)

    def _serve_waiters(self) -> list[tuple[int, Grant]]:
        grants: list[tuple[int, Grant]] = []
        while self._pending:
            grant = self._grant_now(self._pending[0].endpoint)
            if grant is None:
                break
            grants.append((self._pending.popleft().ticket, grant))
        return grants

    def _grant_now(self, endpoint: str) -> Grant | None:
        for connection in self._connections.values():
            if connection.endpoint == endpoint and not connection.busy:
                return self._use(connection)
        if len(self._connections) < self.limits.max_connections:
            return self._open(endpoint)
        idle = next((c for c in self._connections.values() if not c.busy), None)
        if idle is not None:
            # At the limit with an idle connection to another endpoint: trade it for ours.
            # The caller learns of the close through `closed_idle`.
            del self._connections[idle.id]
            self.closed_idle.append(idle)
            return self._open(endpoint)
        return None

    def _use(self, connection: UpstreamConnection) -> UseConnection:
        connection.busy = True
        connection.requests += 1
        return UseConnection(connection, self._close_after(connection))

    def _open(self, endpoint: str) -> OpenConnection:
        connection = UpstreamConnection(next(self._ids), endpoint, requests=1, busy=True)
        self._connections[connection.id] = connection
        return OpenConnection(connection, self._close_after(connection))

    def _close_after(self, connection: UpstreamConnection) -> bool:
        limit = self.limits.max_requests_per_connection
        return bool(limit) and connection.requests >= limit


# --- outlier detection ------------------------------------------------------------------------


@dataclass
class _EndpointHealth:
    consecutive_5xx: int = 0
    ejections: int = 0
    ejected_until: float | None = None


class OutlierDetector:
    """Passive health checking of one concrete backend's endpoints (Istio outlierDetection).

    consecutive5xxErrors 5xx responses or local failures in a row eject an endpoint for
    baseEjectionTime x the number of times it has been ejected; at most maxEjectionPercent of
    the endpoints are ejected at once, but at least one may be (as Envoy does). An endpoint
    returns as soon as its ejection time has passed.
    """

    def __init__(self, policy: OutlierDetection, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._health: dict[str, _EndpointHealth] = {}

    def set_endpoints(self, endpoints: Sequence[str]) -> None:
        self._health = {e: self._health.get(e, _EndpointHealth()) for e in endpoints}

    def record(self, endpoint: str, status: int | None) -> bool:
        """A request to `endpoint` ended with `status` (None: no response). True if ejected."""
        health = self._health.setdefault(endpoint, _EndpointHealth())
        self._return_expired()
        if status is not None and status < 500:
            health.consecutive_5xx = 0
            return False
        health.consecutive_5xx += 1
        if health.ejected_until is not None:
            return False
        if health.consecutive_5xx < self.policy.consecutive_5xx_errors:
            return False
        if not self._may_eject():
            return False
        health.ejections += 1
        health.consecutive_5xx = 0
        health.ejected_until = self._clock() + self.policy.base_ejection_time_s * health.ejections
        return True

    def is_ejected(self, endpoint: str) -> bool:
        self._return_expired()
        health = self._health.get(endpoint)
        return health is not None and health.ejected_until is not None

    def available(self, endpoints: Sequence[str]) -> list[str]:
        """The endpoints that are not ejected, in the given order."""
        self._return_expired()
        return [e for e in endpoints if not self.is_ejected(e)]

    def _may_eject(self) -> bool:
        if self.policy.max_ejection_percent == 0:
            return False
        ejected = sum(h.ejected_until is not None for h in self._health.values())
        limit = len(self._health) * self.policy.max_ejection_percent / 100
        return ejected == 0 or ejected + 1 <= limit

    def _return_expired(self) -> None:
        now = self._clock()
        for health in self._health.values():
            if health.ejected_until is not None and now >= health.ejected_until:
                health.ejected_until = None


# --- load balancing: concrete backend -> endpoint ----------------------------------------------


class Balancer:
    """Chooses an endpoint among the available ones; subclasses implement Istio's policies."""

    def pick(self, endpoints: Sequence[str], headers: Headers) -> str | None:
        raise NotImplementedError

    def started(self, endpoint: str) -> None:
        """A request to `endpoint` began (only least-request cares)."""

    def finished(self, endpoint: str) -> None:
        """A request to `endpoint` ended."""


class RoundRobin(Balancer):
    def __init__(self) -> None:
        self._next = 0

    def pick(self, endpoints: Sequence[str], headers: Headers) -> str | None:
        if not endpoints:
            return None
        chosen = endpoints[self._next % len(endpoints)]
        self._next += 1
        return chosen


class RandomChoice(Balancer):
    def __init__(self, random: RandomSource) -> None:
        self._random = random

    def pick(self, endpoints: Sequence[str], headers: Headers) -> str | None:
        if not endpoints:
            return None
        return endpoints[min(int(self._random() * len(endpoints)), len(endpoints) - 1)]


class LeastRequest(Balancer):
    """Envoy's least request: of two endpoints drawn at random, the one with fewer in flight."""

    def __init__(self, random: RandomSource) -> None:
        self._random = random
        self.active: dict[str, int] = {}

    def pick(self, endpoints: Sequence[str], headers: Headers) -> str | None:
        if not endpoints:
            return None
        count = len(endpoints)
        first = endpoints[min(int(self._random() * count), count - 1)]
        second = endpoints[min(int(self._random() * count), count - 1)]
        return second if self.active.get(second, 0) < self.active.get(first, 0) else first

    def started(self, endpoint: str) -> None:
        self.active[endpoint] = self.active.get(endpoint, 0) + 1

    def finished(self, endpoint: str) -> None:
        self.active[endpoint] = max(0, self.active.get(endpoint, 0) - 1)


def _ring_hash(text: str) -> int:
    # A stable hash: Python's hash() is salted per process, and every waypoint replica must
    # send the same key to the same endpoint.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


class ConsistentHash(Balancer):
    """A hash ring on one request header (consistentHash.httpHeaderName): the same value goes
    to the same endpoint, and removing an endpoint moves only the keys that were on it."""

    VIRTUAL_NODES = 160

    def __init__(self, header: str, random: RandomSource) -> None:
        self.header = header.lower()
        self._random = random
        self._ring_for: tuple[str, ...] = ()
        self._points: list[int] = []
        self._owners: list[str] = []

    def pick(self, endpoints: Sequence[str], headers: Headers) -> str | None:
        if not endpoints:
            return None
        key = next((value for name, value in headers if name == self.header), None)
        if key is None:  # no hash key: Envoy picks at random
            return endpoints[min(int(self._random() * len(endpoints)), len(endpoints) - 1)]
        if tuple(endpoints) != self._ring_for:
            self._build(tuple(endpoints))
        index = bisect_left(self._points, _ring_hash(key)) % len(self._points)
        return self._owners[index]

    def _build(self, endpoints: tuple[str, ...]) -> None:
        ring = sorted(
            (_ring_hash(f"{endpoint}#{replica}"), endpoint)
            for endpoint in endpoints
            for replica in range(self.VIRTUAL_NODES)
        )
        self._ring_for = endpoints
        self._points = [point for point, _ in ring]
        self._owners = [owner for _, owner in ring]


def make_balancer(config: LoadBalancer, random: RandomSource) -> Balancer:
    """The balancer a DestinationRule's loadBalancer asks for."""
    if config.policy is LoadBalancerPolicy.ROUND_ROBIN:
        return RoundRobin()
    if config.policy is LoadBalancerPolicy.RANDOM:
        return RandomChoice(random)
    if config.policy is LoadBalancerPolicy.CONSISTENT_HASH:
        return ConsistentHash(config.hash_header or "", random)
    return LeastRequest(random)


# --- local rate limiting ------------------------------------------------------------------------


class TokenBucket:
    """Envoy's local rate limit: `refill` tokens every fill interval, up to max_tokens; a request
    takes one token or is answered 429."""

    def __init__(self, limit: RateLimit, clock: Clock) -> None:
        self.limit = limit
        self._clock = clock
        self._tokens = limit.max_tokens
        self._last_fill = clock()

    @property
    def tokens(self) -> int:
        self._refill()
        return self._tokens

    def try_take(self) -> bool:
        self._refill()
        if self._tokens == 0:
            return False
        self._tokens -= 1
        return True

    def _refill(self) -> None:
        intervals = math.floor((self._clock() - self._last_fill) / self.limit.fill_interval_s)
        if intervals > 0:
            self._tokens = min(self.limit.max_tokens, self._tokens + intervals * self.limit.refill)
            self._last_fill += intervals * self.limit.fill_interval_s


# --- fault injection ----------------------------------------------------------------------------


@dataclass(frozen=True)
class FaultDecision:
    delay_s: float = 0.0
    abort_status: int | None = None


NO_FAULT = FaultDecision()


def decide_fault(fault: FaultInjection, random: RandomSource) -> FaultDecision:
    """Draw whether this request is delayed and/or aborted; each is an independent draw."""
    delay_s = 0.0
    if fault.delay is not None and random() * 100 < fault.delay.percentage:
        delay_s = fault.delay.fixed_delay_s
    abort_status = None
    if fault.abort is not None and random() * 100 < fault.abort.percentage:
        abort_status = fault.abort.http_status
    return FaultDecision(delay_s, abort_status)


@dataclass
class RouteGuards:
    """The per-route state the proxy keeps: one token bucket per rate-limited route."""

    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    def bucket(self, route_name: str, limit: RateLimit, clock: Clock) -> TokenBucket:
        bucket = self.buckets.get(route_name)
        if bucket is None or bucket.limit != limit:
            bucket = self.buckets[route_name] = TokenBucket(limit, clock)
        return bucket
