"""The HTTP/1.1 fast path: common requests relayed from protocol callbacks, no task per request.

Most requests a waypoint sees are keep-alive HTTP/1.1 with no body or a Content-Length one, to
a route that changes nothing (no filter, retry, timeout, fault or authorization). For those, the
client connection's `data_received` recognises the head with one regular expression over its
bytes, picks the route from tables computed once per configuration, writes the head to a pooled
backend connection with the request id and `traceparent` appended (the other bytes as they
came), and the backend connection's `data_received` passes the response head and body back,
hop-by-hop fields removed. Telemetry is three additions to a series and an access-log line
formatted later. Nothing here decides what is valid HTTP: a head the expression does not accept
whole (smuggling shapes, oversized or split heads, obs-fold, other methods, HTTP/1.0, HTTP/2, an
Upgrade or Expect, a Transfer-Encoding), a service or route with anything to apply, or an
injected `connect` with no `fast_dial` to match it hands the connection to proxy.py's general
path, whose strict codec (http1.py) answers it, and the connection stays there.

In the mesh the same protocols run over HBONE, each over a StreamTransport (an asyncio
transport over a weft.hbone stream): FastFront serves a tunnel in (its destination picks the
service, its peer's SVID fills the source labels), FastUpstream a tunnel out to the endpoint's
node agent (`fast_dial`); the split rule is the same.

One job a module: `heads` recognises request and response heads; `plan` keeps what a
configuration lets through (services, routes, decisions per Host, method and path); `pool`
holds the keep-alive backend connections; `front` serves the client connection and `backend`
relays each response to it; `records` is their telemetry.
"""

from waypoint.fastpath.front import FastFront
from waypoint.fastpath.heads import recognize_request
from waypoint.fastpath.plan import FastPlan

__all__ = ["FastFront", "FastPlan", "recognize_request"]
