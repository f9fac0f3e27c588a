"""Configuration files of the peer proxies (stunnel, haproxy), rendered from the bench layout."""

from __future__ import annotations

from collections.abc import Mapping

from bench.pki import SERVER_NAME, PeerPki

# TLS 1.3 only, certificates both ways, Nagle off on both sockets (what an operator tuning for
# latency sets; without it small request/response exchanges can stall on delayed ACKs).
_STUNNEL_COMMON = """\
foreground = yes
pid =
syslog = no
debug = warning
socket = l:TCP_NODELAY=1
socket = r:TCP_NODELAY=1
"""


def stunnel_client_config(pki: PeerPki, routes: Mapping[str, tuple[str, int, str, int]]) -> str:
    """The client node's side: plaintext in, mTLS out.

    routes: service -> (listen host, listen port, connect host, connect port).
    """
    out = [_STUNNEL_COMMON]
    for service, (listen_host, listen_port, to_host, to_port) in routes.items():
        out.append(
            f"""
[{service}]
client = yes
accept = {listen_host}:{listen_port}
connect = {to_host}:{to_port}
sslVersionMin = TLSv1.3
cert = {pki.client_cert}
key = {pki.client_key}
CAfile = {pki.ca_cert}
verifyChain = yes
checkHost = {SERVER_NAME}
"""
        )
    return "".join(out)


def stunnel_server_config(pki: PeerPki, routes: Mapping[str, tuple[str, int, str, int]]) -> str:
    """The server node's side: mTLS in (client certificate required), plaintext to the server."""
    out = [_STUNNEL_COMMON]
    for service, (listen_host, listen_port, to_host, to_port) in routes.items():
        out.append(
            f"""
[{service}]
accept = {listen_host}:{listen_port}
connect = {to_host}:{to_port}
sslVersionMin = TLSv1.3
cert = {pki.server_cert}
key = {pki.server_key}
CAfile = {pki.ca_cert}
verifyChain = yes
requireCert = yes
"""
        )
    return "".join(out)


def haproxy_config(listen_host: str, http: tuple[int, str, int], grpc: tuple[int, str, int]) -> str:
    """One HTTP hop: HTTP/1.1 keep-alive to the HTTP server, h2c (gRPC) to the gRPC server.

    http and grpc are (listen port, server host, server port). Everything else is haproxy's
    defaults, as a user would start.
    """
    http_port, http_host, http_server_port = http
    grpc_port, grpc_host, grpc_server_port = grpc
    return f"""\
global
    maxconn 4000

defaults
    mode http
    timeout connect 5s
    timeout client 30s
    timeout server 30s

frontend http_in
    bind {listen_host}:{http_port}
    default_backend http_servers

backend http_servers
    server http1 {http_host}:{http_server_port}

frontend grpc_in
    bind {listen_host}:{grpc_port} proto h2
    default_backend grpc_servers

backend grpc_servers
    server grpc1 {grpc_host}:{grpc_server_port} proto h2
"""
