"""One connection to an orchestrator: channel, stubs, request header and credentials.

Synchronous gRPC on purpose: a CLI does one thing at a time, and the blocking API gives
Ctrl-C (KeyboardInterrupt) a single obvious place to land, in the middle of a watch too.
Every failed call leaves through `errors.from_rpc`, so no grpc exception reaches `main`.
"""

from __future__ import annotations

import pathlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from api import tls as api_tls
from api import version
from api.dcnr.v1 import (
    common_pb2,
    job_pb2_grpc,
    network_pb2_grpc,
    pnode_pb2_grpc,
)
from api.resources import meta
from dcnctl import config, errors

Resp = TypeVar("Resp")

#: Seconds a unary call may take unless --request-timeout says otherwise.
DEFAULT_TIMEOUT = 30.0


class Client:
    def __init__(self, ctx: config.Context, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.server = ctx.server
        self.timeout: float | None = timeout or None  # 0: no deadline, as kubectl's "0"
        self._metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {ctx.token}"),) if ctx.token else ()
        )
        options = [("grpc.max_receive_message_length", 256 * 2**20),
                   ("grpc.max_send_message_length", 256 * 2**20)]  # fmt: skip
        #: Whether this connection is TLS, and against a CA of the context's or gRPC's
        #: default roots (for a hint when the server disagrees).
        self.tls = ctx.tls
        self.ca_given = bool(ctx.tls_ca)
        if ctx.tls:
            files = api_tls.ClientFiles(
                ca=_path(ctx.tls_ca),
                cert=_path(ctx.tls_cert),
                key=_path(ctx.tls_key),
                server_name=ctx.tls_server_name,
                flags=api_tls.Flags(cert="tls-cert", key="tls-key", ca="tls-ca"),
            )
            try:
                creds = files.credentials()
            except api_tls.TlsError as exc:
                raise errors.local(str(exc)) from None
            self.channel = grpc.secure_channel(
                ctx.server, creds, options=[*options, *files.options()]
            )
        else:
            self.channel = grpc.insecure_channel(ctx.server, options=options)
        self.networks = network_pb2_grpc.NetworkServiceStub(self.channel)
        self.pnodes = pnode_pb2_grpc.PNodeServiceStub(self.channel)
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)

    def close(self) -> None:
        self.channel.close()

    def header(self) -> common_pb2.RequestHeader:
        """A fresh header; its request_id makes a retried mutation apply once."""
        return common_pb2.RequestHeader(
            api_version=meta.API_VERSION,
            client_name="dcnctl",
            client_version=version.current(),
            request_id=uuid.uuid4().hex,
        )

    def call(
        self, method: Callable[..., Resp], request: Any, *, timeout: float | None = -1.0
    ) -> Resp:
        """A unary call; every failure becomes a CliError."""
        seconds = self.timeout if timeout == -1.0 else timeout
        try:
            return method(request, timeout=seconds, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise errors.from_rpc(exc, self.server, tls=self.tls, ca_given=self.ca_given) from None

    def stream(
        self, method: grpc.UnaryStreamMultiCallable[Any, Resp], request: Any
    ) -> Iterator[Resp]:
        """A server stream with no deadline (watches run until Ctrl-C). Errors surface as
        grpc.RpcError from iteration; callers that reconnect want to see them raw."""
        return iter(method(request, metadata=self._metadata))


def _path(value: str) -> pathlib.Path | None:
    return pathlib.Path(value).expanduser() if value else None
