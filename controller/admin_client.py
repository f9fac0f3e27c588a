"""The blocking AdminService client behind `weft apply|get|delete|namespace|status`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from weft.api.convert import (
    documents_to_proto,
    key_from_proto,
    key_to_proto,
    resource_from_proto,
    status_from_proto,
)
from weft.api.v1 import admin_pb2, admin_pb2_grpc
from weft.controller_client import CHANNEL_OPTIONS, Credentials, unavailable
from weft.errors import UsageError
from weft.model import ControllerStatus, Kind, ResourceKey
from weft.resources import Document


@dataclass(frozen=True)
class AppliedBatch:
    revision: int
    created: tuple[ResourceKey, ...]
    configured: tuple[ResourceKey, ...]
    unchanged: tuple[ResourceKey, ...]


class AdminClient:
    def __init__(self, address: str, credentials: Credentials, timeout: float = 30) -> None:
        self.address = address
        self.timeout = timeout
        self._channel = grpc.secure_channel(
            address, credentials.channel_credentials(), options=CHANNEL_OPTIONS
        )
        self._stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> AdminClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: Any, request: Any) -> Any:
        try:
            return method(request, timeout=self.timeout)
        except grpc.RpcError as err:
            code = err.code() if isinstance(err, grpc.Call) else None
            if code == grpc.StatusCode.INVALID_ARGUMENT:
                raise UsageError(str(err.details()) if isinstance(err, grpc.Call) else "") from err
            raise unavailable(self.address, err) from err

    def apply(self, documents: Sequence[Document], dry_run: bool = False) -> AppliedBatch:
        reply = self._call(
            self._stub.Apply,
            admin_pb2.ApplyRequest(documents=documents_to_proto(documents), dry_run=dry_run),
        )
        return AppliedBatch(
            reply.revision,
            tuple(key_from_proto(k) for k in reply.created),
            tuple(key_from_proto(k) for k in reply.configured),
            tuple(key_from_proto(k) for k in reply.unchanged),
        )

    def get(
        self, kind: Kind | None = None, namespace: str = "", name: str = ""
    ) -> list[tuple[ResourceKey, dict[str, Any], int]]:
        """(key, normalized document, revision) of each matching resource."""
        reply = self._call(
            self._stub.Get,
            admin_pb2.GetRequest(kind=kind.value if kind else "", namespace=namespace, name=name),
        )
        out = []
        for message in reply.resources:
            received = resource_from_proto(message)
            out.append((received.parsed.key, dict(received.parsed.document), received.revision))
        return out

    def delete(self, keys: Sequence[ResourceKey]) -> tuple[int, tuple[ResourceKey, ...]]:
        reply = self._call(
            self._stub.Delete, admin_pb2.DeleteRequest(keys=[key_to_proto(k) for k in keys])
        )
        return reply.revision, tuple(key_from_proto(k) for k in reply.deleted)

    def status(self) -> ControllerStatus:
        return status_from_proto(self._call(self._stub.Status, admin_pb2.StatusRequest()))
