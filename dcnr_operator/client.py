"""One asynchronous gRPC connection to an orchestrator, with its credentials.

Failures leave as `Refused` (the orchestrator answered with an error: e.g. INVALID_ARGUMENT
naming the field) or as grpc's own error for transport trouble, which kopf retries.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from api import version
from api.dcnr.v1 import common_pb2, job_pb2_grpc, network_pb2_grpc
from api.resources import meta

#: Seconds one unary call may take.
TIMEOUT = 30.0
FIELD_MANAGER = "dcnr-operator"

#: The codes that are the orchestrator's answer, not a transport failure.
ANSWERS = frozenset({
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.ABORTED,
})  # fmt: skip


class Refused(Exception):
    """The orchestrator refused a call; `code` and its message (which names the field)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True, kw_only=True)
class Target:
    """Where the orchestrator is and how to prove who we are."""

    server: str
    token: str = ""
    tls_ca: Path | None = None


class Client:
    def __init__(self, target: Target) -> None:
        self.server = target.server
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        if target.tls_ca is not None:
            creds = grpc.ssl_channel_credentials(root_certificates=target.tls_ca.read_bytes())
            self.channel = grpc.aio.secure_channel(target.server, creds)
        else:
            self.channel = grpc.aio.insecure_channel(target.server)
        self.networks = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close(None)

    def header(self) -> common_pb2.RequestHeader:
        return common_pb2.RequestHeader(
            api_version=meta.API_VERSION,
            client_name=FIELD_MANAGER,
            client_version=version.current(),
            request_id=uuid.uuid4().hex,
        )

    async def call(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, timeout=TIMEOUT, metadata=self._metadata)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in ANSWERS:
                raise Refused(exc.code(), exc.details() or exc.code().name) from None
            raise
