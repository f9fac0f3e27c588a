"""DiscoveryService.Watch: the gRPC stream around a DiscoveryHub watcher (see discovery.proto)."""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import grpc

from controller.callers import Caller, require_certificate
from controller.discovery import DiscoveryHub, Watcher
from controller.metrics import ControllerMetrics
from controller.waypoints import (
    WaypointRefusedError,
    authorize_waypoint_caller,
    parse_reference,
    token_subject,
)
from weft.api.v1 import discovery_pb2

LOG = logging.getLogger("weft.controller.discovery")
POLL_SECONDS = 0.5  # how often an idle stream checks that its client is still there


class DiscoveryServicer:
    """Yields encoded WatchUpdates; registered by `handler()` with a pass-through serializer."""

    def __init__(self, hub: DiscoveryHub, trust_domain: str, metrics: ControllerMetrics) -> None:
        self.hub = hub
        self.trust_domain = trust_domain
        self.metrics = metrics

    def Watch(  # noqa: N802 - gRPC method name
        self,
        request_iterator: Iterator[discovery_pb2.WatchRequest],
        context: grpc.ServicerContext,
    ) -> Iterator[bytes]:
        caller = require_certificate(context, self.trust_domain)
        first = next(request_iterator, None)
        if first is None or not first.HasField("subscribe") or not first.subscribe.node:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be subscribe")
        node = first.subscribe.node
        waypoint: tuple[str, str] | None = None
        if first.subscribe.waypoint:
            waypoint = self._authorize_waypoint(context, caller, first.subscribe.waypoint)
            node = token_subject(*waypoint)  # how `weft status` lists it
        elif caller.node is None and not caller.admin:
            context.abort(grpc.StatusCode.PERMISSION_DENIED, f"{caller.uri} is not a node")
        elif not caller.admin and caller.node != node:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"node {caller.node!r} may not watch the configuration of node {node!r}",
            )
        watcher = self.hub.subscribe(node, waypoint=waypoint)
        self.metrics.connected_agents.inc()
        LOG.info("agent connected: node=%s version=%d", node, watcher.state.sent_version)
        reader = threading.Thread(
            target=self._read_acks, args=(watcher, request_iterator), daemon=True
        )
        reader.start()
        try:
            while context.is_active():
                try:
                    update = watcher.updates.get(timeout=POLL_SECONDS)
                except queue.Empty:
                    continue
                if update is None:  # the client closed its side, or the controller is stopping
                    break
                yield update
        finally:
            self.hub.unsubscribe(watcher)
            self.metrics.connected_agents.dec()
            LOG.info("agent disconnected: node=%s", node)

    def _authorize_waypoint(
        self, context: grpc.ServicerContext, caller: Caller, reference: str
    ) -> tuple[str, str]:
        """(namespace, name) of the waypoint the caller may watch: its own, or any for admin."""
        try:
            namespace, name = parse_reference(reference)
        except ValueError as err:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"subscribe.waypoint: {err}")
        if caller.admin:
            return namespace, name
        try:
            with self.hub.lock:
                authorize_waypoint_caller(
                    self.hub.catalog, caller.uri, namespace, name, self.trust_domain
                )
        except WaypointRefusedError as err:
            LOG.warning("waypoint watch refused: caller=%s reason=%s", caller.uri, err)
            context.abort(grpc.StatusCode.PERMISSION_DENIED, str(err))
        return namespace, name

    def handler(self) -> grpc.GenericRpcHandler[discovery_pb2.WatchRequest, bytes]:
        """The DiscoveryService handler: requests decoded as usual, responses sent as encoded."""
        watch = grpc.stream_stream_rpc_method_handler(
            self.Watch,
            request_deserializer=discovery_pb2.WatchRequest.FromString,
            response_serializer=bytes,
        )
        return grpc.method_handlers_generic_handler(
            "weft.api.v1.DiscoveryService", {"Watch": watch}
        )

    def _read_acks(self, watcher: Watcher, requests: Iterator[discovery_pb2.WatchRequest]) -> None:
        try:
            for request in requests:
                if request.HasField("ack"):
                    ack = request.ack
                    self.hub.acknowledge(watcher, ack.version, ack.error)
                    if ack.error:
                        self.metrics.nacks.labels(watcher.node).inc()
                        LOG.warning(
                            "NACK: node=%s version=%d error=%s",
                            watcher.node,
                            ack.version,
                            ack.error,
                        )
        except grpc.RpcError:
            pass  # the stream ended; the writer side notices through context.is_active()
        finally:
            watcher.updates.put(None)
