"""One asynchronous gRPC connection to an orchestrator, with its credentials.

Failures leave as `Refused` (the orchestrator answered with an error: e.g. INVALID_ARGUMENT
naming the field), as `Unreachable` when the two ends disagree about TLS (its message names
the likely cause and the flag), or as grpc's own error for other transport trouble; kopf
retries all but the first.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

from api import tls as api_tls
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


class Unreachable(Exception):
    """The orchestrator could not be reached, for a reason a flag would fix (plaintext at
    one end, TLS at the other; an untrusted certificate): the message says which."""


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
    #: Plaintext (--insecure); otherwise TLS, always.
    insecure: bool = False
    #: The CA bundle that signed the orchestrator's certificate (None: gRPC's default roots),
    #: and a client certificate and key for mutual TLS.
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    #: The name to expect in the orchestrator's certificate instead of `server`'s host.
    tls_server_name: str = ""

    @property
    def tls(self) -> api_tls.ClientFiles | None:
        """The TLS files, or None for plaintext (only with `insecure`)."""
        if self.insecure:
            return None
        return api_tls.ClientFiles(
            ca=self.tls_ca, cert=self.tls_cert, key=self.tls_key, server_name=self.tls_server_name
        )


class Client:
    def __init__(self, target: Target) -> None:
        self.server = target.server
        self._tls = not target.insecure
        self._ca_given = target.tls_ca is not None
        self._metadata = (("authorization", f"Bearer {target.token}"),) if target.token else ()
        tls = target.tls
        if tls is not None:
            # TlsError (naming the flag and path) for a missing or invalid file.
            self.channel = grpc.aio.secure_channel(
                target.server, tls.credentials(), options=tls.options()
            )
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
            details = exc.details() or exc.code().name
            hint = api_tls.describe_failure(
                exc.code(), details, tls=self._tls, ca_given=self._ca_given
            )
            if hint is not None:
                raise Unreachable(f"orchestrator {self.server}: {hint} ({details})") from None
            raise
