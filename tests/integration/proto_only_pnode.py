"""A PNode written as a stranger would write it: from the .proto comments and a CA bundle.

It imports the generated protobuf and gRPC modules (api.dcnr.v1.*_pb2, *_pb2_grpc), grpcio,
cryptography and numpy, and nothing else of this project (tests/integration/
test_proto_only_client.py parses these imports and fails on any other). Everything it does
is what the comments of common.proto (AUTHENTICATION, SIGNED REQUESTS, Tensor), pnode.proto,
vnode.proto and resolve.proto say; where they said too little to write it, the comment was
fixed, not this file.

What it does: generates an ECDSA P-256 identity key and a CSR for it; registers over TLS
(verifying the orchestrator with the CA bundle it is given); heartbeats and watches its
assignments; serves VNodeService at its data-plane address (TLS with its identity
certificate unless RegisterResponse.data_plane_plaintext), verifying every request's
signature before parsing it; computes `relu` on each Forward it is sent and forwards the
result, signed, to the job's driver at the request's reply_to.

Run as a process:

    python tests/integration/proto_only_pnode.py --orchestrator HOST:PORT --ca CA.pem \\
        --name NAME [--cpu-millis N --memory-bytes N] [--forge]

It prints one line, `proto-only-pnode: NAME serving the data plane on HOST:PORT`, once
registered, and runs until SIGTERM. `--forge` signs its results with a key the identity CA
never certified (a self-signed certificate naming itself), as a PNode forging its identity
would: a test expects the driver to refuse them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import signal
import socket
import sys
import uuid
import zlib
from collections.abc import Callable
from typing import Any

import grpc
import numpy as np
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc import aio

from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc, vnode_pb2

API_VERSION = "dcnr.io/v1"
# common.proto, SIGNED REQUESTS.
STATEMENT_PREFIX = b"dcnr.v1 signed request\n"
SIGNATURE_KEY = "dcnr-signature-bin"
CERTIFICATE_KEY = "dcnr-certificate-bin"
# vnode.proto, reply_to: the job's driver, addressed as a VNode of this name.
DRIVER = "__driver__"
# common.proto, SIGNED REQUESTS: the job's driver signs as the orchestrator identity.
ORCHESTRATOR_URI = "spiffe://dcnr/orchestrator"
VNODE_SERVICE = "dcnr.v1.VNodeService"
# common.proto, Tensor.dtype.
DTYPES = {"float64", "float32", "float16", "int64", "int32", "uint8", "bool"}
MAX_DIMS = 8


def header() -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(
        api_version=API_VERSION,
        client_name="proto-only-pnode",
        client_version="0",
        request_id=uuid.uuid4().hex,
    )


# -- identity ---------------------------------------------------------------------------------


def new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def csr_pem(key: ec.EllipticCurvePrivateKey, name: str) -> bytes:
    """A CSR for `key`; the subject is ignored by the orchestrator (pnode.proto, csr)."""
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name or "pnode")])
    request = x509.CertificateSigningRequestBuilder().subject_name(subject)
    return request.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def self_signed(key: ec.EllipticCurvePrivateKey, uri: str) -> bytes:
    """DER of a certificate for `key` that nobody but its holder vouches for."""
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    return certificate.public_bytes(serialization.Encoding.DER)


def statement(method: str, body: bytes) -> bytes:
    return STATEMENT_PREFIX + method.encode() + b"\n" + body


class SignatureRefused(Exception):
    """Why a request's signature or certificate is not accepted."""


def verify(ca: list[x509.Certificate], method: str, body: bytes, metadata: Any) -> str:
    """The SPIFFE URI of the verified sender of `body`; SignatureRefused otherwise."""
    found = {key: value for key, value in metadata or ()}
    signature, der = found.get(SIGNATURE_KEY), found.get(CERTIFICATE_KEY)
    if not isinstance(signature, bytes) or not isinstance(der, bytes):
        raise SignatureRefused("unsigned: no dcnr-signature-bin or dcnr-certificate-bin")
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError as exc:
        raise SignatureRefused(f"malformed certificate: {exc}") from None
    for authority in ca:
        try:
            certificate.verify_directly_issued_by(authority)
            break
        except (ValueError, TypeError, InvalidSignature):
            continue
    else:
        raise SignatureRefused("the certificate is not issued by the identity CA")
    now = dt.datetime.now(dt.UTC)
    if not certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        raise SignatureRefused("the certificate is not valid now")
    public = certificate.public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise SignatureRefused("the certificate's key is not ECDSA")
    try:
        public.verify(signature, statement(method, body), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureRefused("the signature is not by the certificate's key") from None
    try:
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        raise SignatureRefused("the certificate names no identity") from None
    uris = names.value.get_values_for_type(x509.UniformResourceIdentifier)
    if len(uris) != 1:
        raise SignatureRefused(f"the certificate names {len(uris)} identities, not one")
    return uris[0]


# -- tensors (common.proto, Tensor) -----------------------------------------------------------


class TensorRefused(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode(tensor: common_pb2.Tensor) -> np.ndarray[Any, Any]:
    if tensor.dtype not in DTYPES:
        raise TensorRefused(grpc.StatusCode.INVALID_ARGUMENT, f"tensor.dtype: {tensor.dtype!r}")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    shape = tuple(int(n) for n in tensor.shape)
    if len(shape) > MAX_DIMS or any(n < 0 for n in shape):
        raise TensorRefused(grpc.StatusCode.INVALID_ARGUMENT, f"tensor.shape: {list(shape)}")
    want = dtype.itemsize * int(np.prod(shape, dtype=np.int64))
    if len(tensor.data) != want:
        raise TensorRefused(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"tensor.data: {len(tensor.data)} bytes, {tensor.dtype}{list(shape)} needs {want}",
        )
    if zlib.crc32(tensor.data) != tensor.crc32:
        raise TensorRefused(grpc.StatusCode.DATA_LOSS, "tensor.crc32: does not match data")
    if tensor.sha256 and hashlib.sha256(tensor.data).digest() != tensor.sha256:
        raise TensorRefused(grpc.StatusCode.DATA_LOSS, "tensor.sha256: does not match data")
    return np.frombuffer(tensor.data, dtype=dtype).reshape(shape)


def encode(array: np.ndarray[Any, Any]) -> common_pb2.Tensor:
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    data = little.tobytes(order="C")
    return common_pb2.Tensor(
        dtype=array.dtype.name,
        shape=list(array.shape),
        data=data,
        crc32=zlib.crc32(data),
        sha256=hashlib.sha256(data).digest(),
    )


# -- the PNode --------------------------------------------------------------------------------


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class ProtoOnlyPNode:
    def __init__(
        self,
        orchestrator: str,
        ca_pem: bytes,
        *,
        name: str,
        cpu_millis: int,
        memory_bytes: int,
        forge: bool = False,
        log: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True),
    ) -> None:
        self.orchestrator = orchestrator
        self.ca_pem = ca_pem
        self.name = name
        self.capacity = common_pb2.Capacity(cpu_millis=cpu_millis, memory_bytes=memory_bytes)
        self.forge = forge
        self.log = log
        self.key = new_key()
        self.channel = aio.secure_channel(orchestrator, grpc.ssl_channel_credentials(ca_pem))
        self.stub = pnode_pb2_grpc.PNodeServiceStub(self.channel)
        self.credential = ""
        self.incarnation = 0
        self.certificate_pem = b""
        self.identity_ca: list[x509.Certificate] = []
        self.plaintext = False
        self.interval = 1.0
        self.version = 0
        #: (network, vnode, replica) → the assignment hosted.
        self.assignments: dict[tuple[str, str, int], pnode_pb2.Assignment] = {}
        self.address = ""
        self.server: aio.Server | None = None
        self._driver_channels: dict[str, aio.Channel] = {}
        self._tasks: set[asyncio.Task[Any]] = set()

    def metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self.credential}"),) if self.credential else ()

    # -- control plane ------------------------------------------------------------------------

    async def register(self, *, with_csr: bool = True) -> pnode_pb2.RegisterResponse:
        request = pnode_pb2.RegisterRequest(
            header=header(),
            name=self.name,
            capacity=self.capacity,
            data_plane_address=self.address,
            agent_version="proto-only-pnode/0",
            csr=csr_pem(self.key, self.name) if with_csr else b"",
        )
        reply: pnode_pb2.RegisterResponse = await self.stub.Register(
            request, metadata=self.metadata(), timeout=10
        )
        self.name = reply.pnode_id
        self.credential = reply.credential
        self.incarnation = reply.incarnation
        self.certificate_pem = reply.certificate
        self.identity_ca = x509.load_pem_x509_certificates(reply.identity_ca)
        self.plaintext = reply.data_plane_plaintext
        self.interval = reply.heartbeat_interval.ToTimedelta().total_seconds() or 1.0
        return reply

    async def heartbeat(self) -> pnode_pb2.HeartbeatResponse:
        statuses = [
            pnode_pb2.AssignmentStatus(
                network=a.network,
                vnode=a.vnode,
                replica=a.replica,
                epoch=a.epoch,
                state=pnode_pb2.ASSIGNMENT_STATE_RUNNING,
            )
            for a in self.assignments.values()
        ]
        request = pnode_pb2.HeartbeatRequest(
            header=header(),
            pnode_id=self.name,
            incarnation=self.incarnation,
            known_assignment_set_version=self.version,
            assignment_statuses=statuses,
        )
        reply: pnode_pb2.HeartbeatResponse = await self.stub.Heartbeat(
            request, metadata=self.metadata(), timeout=10
        )
        if reply.lease_state == pnode_pb2.LEASE_STATE_FENCED:
            raise SystemExit(f"{self.name}: fenced; a real agent would register again")
        if reply.HasField("assignment_set"):
            self.apply(reply.assignment_set)
        if reply.HasField("heartbeat_interval"):
            self.interval = reply.heartbeat_interval.ToTimedelta().total_seconds() or self.interval
        return reply

    def apply(self, assignment_set: pnode_pb2.AssignmentSet) -> None:
        if assignment_set.version <= self.version:
            return
        self.version = assignment_set.version
        self.assignments = {(a.network, a.vnode, a.replica): a for a in assignment_set.assignments}
        hosted = ", ".join(f"{a.network}/{a.vnode}@{a.epoch}" for a in assignment_set.assignments)
        self.log(f"{self.name}: assignment set {self.version}: {hosted or '(none)'}")

    async def heartbeats(self) -> None:
        while True:
            try:
                await self.heartbeat()
            except grpc.RpcError as exc:
                self.log(f"{self.name}: heartbeat failed: {exc}")
            await asyncio.sleep(self.interval)  # the protocol's cadence, not a test's wait

    async def watch(self) -> None:
        while True:
            request = pnode_pb2.WatchAssignmentsRequest(
                header=header(),
                pnode_id=self.name,
                incarnation=self.incarnation,
                known_assignment_set_version=self.version,
            )
            try:
                async for message in self.stub.WatchAssignments(request, metadata=self.metadata()):
                    if message.lease_state == pnode_pb2.LEASE_STATE_FENCED:
                        raise SystemExit(f"{self.name}: fenced")
                    self.apply(message.assignment_set)
            except grpc.RpcError as exc:
                self.log(f"{self.name}: watch ended: {exc}")
            await asyncio.sleep(self.interval)  # reconnect pacing

    # -- data plane: serving ------------------------------------------------------------------

    def hold_port(self, host: str = "127.0.0.1") -> socket.socket:
        """A port for data_plane_address, held (bound, not listening) until the listener,
        which needs the certificate Register returns, takes it."""
        held = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        held.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        held.bind((host, 0))
        self.address = f"{host}:{held.getsockname()[1]}"
        return held

    async def serve(self) -> None:
        server = aio.server()
        handlers = {
            "Forward": grpc.unary_unary_rpc_method_handler(
                self._forward, response_serializer=vnode_pb2.ForwardResponse.SerializeToString
            ),
        }
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(VNODE_SERVICE, handlers),)
        )
        if self.plaintext:
            server.add_insecure_port(self.address)
        else:
            # Mutual TLS, as vnode.proto's listeners are: only holders of an identity
            # certificate (here: the job driver's) get through the handshake.
            bundle = b"".join(
                c.public_bytes(serialization.Encoding.PEM) for c in self.identity_ca
            )
            credentials = grpc.ssl_server_credentials(
                [(key_pem(self.key), self.certificate_pem)],
                root_certificates=bundle,
                require_client_auth=True,
            )
            server.add_secure_port(self.address, credentials)
        await server.start()
        self.server = server

    async def _forward(self, body: bytes, context: Any) -> vnode_pb2.ForwardResponse:
        """Verify who sent it, then parse, check the target and compute."""
        method = f"/{VNODE_SERVICE}/Forward"
        try:
            sender = verify(self.identity_ca, method, body, context.invocation_metadata())
        except SignatureRefused as exc:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
        try:
            request = vnode_pb2.ForwardRequest.FromString(body)
        except Exception as exc:  # hostile bytes
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"not a ForwardRequest: {exc}")
        try:
            result = self._compute(request, sender)
        except (Refusal, TensorRefused) as exc:
            await context.abort(exc.code, str(exc))
        task = asyncio.create_task(self._send_result(request, result))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return vnode_pb2.ForwardResponse(
            header=common_pb2.ResponseHeader(
                api_version=API_VERSION, request_id=request.header.request_id
            )
        )

    def _compute(self, request: vnode_pb2.ForwardRequest, sender: str) -> common_pb2.Tensor:
        if request.sender_vnode != DRIVER or sender != ORCHESTRATOR_URI:
            # This PNode hosts sources only: only the driver sends to them.
            raise Refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{sender} may not send as sender_vnode {request.sender_vnode!r} here",
            )
        key = (request.network, request.target_vnode, request.target_replica)
        assignment = self.assignments.get(key)
        if assignment is None:
            raise Refusal(grpc.StatusCode.NOT_FOUND, f"target_vnode: {key} is not hosted here")
        if request.target_epoch != assignment.epoch:
            raise Refusal(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"target_epoch: {request.target_epoch}, hosted at {assignment.epoch}",
            )
        if assignment.kind != "relu" or list(assignment.outputs):
            raise Refusal(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"only a lone relu VNode is hosted here, not "
                f"{assignment.kind!r} with outputs {list(assignment.outputs)}",
            )
        array = decode(request.tensor)
        return encode(np.maximum(array, np.zeros((), dtype=array.dtype)))

    # -- data plane: sending ------------------------------------------------------------------

    async def _send_result(
        self, request: vnode_pb2.ForwardRequest, tensor: common_pb2.Tensor
    ) -> None:
        """A sink's output, to `__driver__` at reply_to (vnode.proto)."""
        assignment = self.assignments[
            (request.network, request.target_vnode, request.target_replica)
        ]
        result = vnode_pb2.ForwardRequest(
            header=header(),
            job=request.job,
            network=request.network,
            sender_vnode=assignment.vnode,
            sender_replica=assignment.replica,
            sender_epoch=assignment.epoch,
            target_vnode=DRIVER,
            tensor=tensor,
            reply_to=request.reply_to,
            attempt=request.attempt,
            adaptive=request.adaptive,
            double_check=request.double_check,
            spot_check=request.spot_check,
        )
        if request.WhichOneof("position") == "step":
            result.step = request.step
        else:
            result.request_id = request.request_id
        body = result.SerializeToString()
        method = f"/{VNODE_SERVICE}/Forward"
        call = self._driver(request.reply_to).unary_unary(
            method,
            request_serializer=None,  # the bytes signed are the bytes sent
            response_deserializer=vnode_pb2.ForwardResponse.FromString,
        )
        try:
            await call(body, metadata=self._signed(method, body), timeout=10)
            self.log(f"{self.name}: result of {request.job} accepted by the driver")
        except grpc.RpcError as exc:
            self.log(f"{self.name}: result of {request.job} refused by the driver: {exc}")

    def _signed(self, method: str, body: bytes) -> tuple[tuple[str, bytes], ...]:
        if self.forge:
            key = new_key()
            der = self_signed(key, f"spiffe://dcnr/pnode/{self.name}")
        else:
            key = self.key
            der = x509.load_pem_x509_certificate(self.certificate_pem).public_bytes(
                serialization.Encoding.DER
            )
        signature = key.sign(statement(method, body), ec.ECDSA(hashes.SHA256()))
        return ((SIGNATURE_KEY, signature), (CERTIFICATE_KEY, der))

    def _driver(self, reply_to: str) -> aio.Channel:
        """The driver listens on the orchestrator's own listener: the same TLS as Register."""
        channel = self._driver_channels.get(reply_to)
        if channel is None:
            channel = aio.secure_channel(reply_to, grpc.ssl_channel_credentials(self.ca_pem))
            self._driver_channels[reply_to] = channel
        return channel

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.server is not None:
            await self.server.stop(None)
        for channel in (self.channel, *self._driver_channels.values()):
            await channel.close(None)


def arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--orchestrator", required=True, help="HOST:PORT of serve")
    parser.add_argument("--ca", required=True, help="PEM CA bundle that signed serve's cert")
    parser.add_argument("--name", required=True)
    parser.add_argument("--cpu-millis", type=int, default=1000)
    parser.add_argument("--memory-bytes", type=int, default=2**30)
    parser.add_argument("--forge", action="store_true", help="sign results self-signed")
    return parser.parse_args(argv)


async def main(args: argparse.Namespace, ca_pem: bytes) -> int:
    node = ProtoOnlyPNode(
        args.orchestrator,
        ca_pem,
        name=args.name,
        cpu_millis=args.cpu_millis,
        memory_bytes=args.memory_bytes,
        forge=args.forge,
    )
    held = node.hold_port()
    stopped = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    try:
        await node.register()
        await node.serve()
        held.close()
        print(f"proto-only-pnode: {node.name} serving the data plane on {node.address}", flush=True)
        tasks = [asyncio.create_task(node.heartbeats()), asyncio.create_task(node.watch())]
        await stopped.wait()
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, SystemExit):
                await task
    finally:
        held.close()
        await node.close()
    return 0


if __name__ == "__main__":
    parsed = arguments(sys.argv[1:])
    with open(parsed.ca, "rb") as ca_file:
        sys.exit(asyncio.run(main(parsed, ca_file.read())))
