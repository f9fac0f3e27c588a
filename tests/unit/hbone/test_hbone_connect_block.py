"""The cached CONNECT header block: stateless HPACK that h2 on the other end decodes every time."""

from __future__ import annotations

import hpack
import pytest

from weft.hbone.connect_block import header_block
from weft.hbone.connection import (
    ClientConnection,
    HboneConnection,
    ServerConnection,
    TunnelSettings,
)
from weft.hbone.errors import StreamClosedError
from weft.hbone.events import Event, TunnelEstablished, TunnelRequested


def pump(sender: HboneConnection, receiver: HboneConnection) -> list[Event]:
    return receiver.receive_data(sender.data_to_send())


def test_the_block_decodes_to_the_connect_request_with_a_fresh_decoder() -> None:
    headers = (("forwarded", "for=10.0.0.5"), ("baggage", "k8s.namespace.name=shop"))
    block = header_block("10.0.0.7:9080", headers)
    assert hpack.Decoder().decode(block) == [
        (":method", "CONNECT"),
        (":authority", "10.0.0.7:9080"),
        *headers,
    ]
    assert header_block("10.0.0.7:9080", headers) is block  # remembered


def test_many_cached_connects_on_one_connection_reach_the_server_intact() -> None:
    """The block never refers to the dynamic table, so its bytes stay valid whatever the
    connection's HPACK state is: the server decodes every repetition the same."""
    client, server = ClientConnection(), ServerConnection()
    pump(client, server)
    pump(server, client)
    pump(client, server)
    for number in range(1, 40):
        authority = f"10.0.0.{number % 3}:{9000 + number % 2}"
        headers = (("forwarded", f"for=10.0.1.{number % 5}"), ("baggage", "k8s.pod.name=a"))
        stream_id = client.open_tunnel(authority, headers)
        [requested] = pump(client, server)
        assert requested == TunnelRequested(stream_id, authority, headers)
        server.accept(stream_id)
        assert pump(server, client) == [TunnelEstablished(stream_id)]


@pytest.mark.parametrize(
    "header",
    [("forwarded", "for=1\r\nx: y"), ("Forwarded", "for=1"), ("connection", "close"), ("", "x")],
)
def test_a_header_h2_would_refuse_is_refused(header: tuple[str, str]) -> None:
    client = ClientConnection()
    with pytest.raises(StreamClosedError):
        client.open_tunnel("10.0.0.7:9080", [header])


def test_the_peers_stream_limit_still_refuses_one_more_tunnel() -> None:
    client, server = ClientConnection(), ServerConnection(TunnelSettings(max_concurrent_streams=2))
    pump(client, server)
    pump(server, client)
    pump(client, server)
    client.open_tunnel("10.0.0.7:9080")
    client.open_tunnel("10.0.0.7:9080")
    with pytest.raises(StreamClosedError):
        client.open_tunnel("10.0.0.7:9080")


def test_the_constant_200_is_the_frame_h2_would_send_and_a_reset_stream_refuses_it() -> None:
    sent = []
    for use_h2 in (True, False):
        client, server = ClientConnection(), ServerConnection()
        pump(client, server)
        pump(server, client)
        pump(client, server)
        stream_id = client.open_tunnel("10.0.0.7:9080")
        pump(client, server)
        if use_h2:
            server._h2.send_headers(stream_id, [(b":status", b"200")])
        else:
            server.accept(stream_id)
        sent.append(server.data_to_send())
        assert client.receive_data(sent[-1]) == [TunnelEstablished(stream_id)]
    assert sent[0] == sent[1]
    client, server = ClientConnection(), ServerConnection()
    pump(client, server)
    pump(server, client)
    stream_id = client.open_tunnel("10.0.0.7:9080")
    pump(client, server)
    client.reset_stream(stream_id)
    pump(client, server)
    with pytest.raises(StreamClosedError):
        server.accept(stream_id)
