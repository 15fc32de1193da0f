"""The agent's VNodeService: the hosted VNode instances and the gRPC face of their protocol.

The listener is mutual TLS (`agent.keys`): a client certificate from the identity CA says
who sends, before anything is parsed. Every request is also signed by its sender (SIGNED
REQUESTS in common.proto; `api.signed`), and the service is registered with a generic
handler that hands over the raw bytes, kept with the signature and certificate as the
evidence a report needs. The signature must be there, by the connection's certificate
(`signed.sender`), and is verified only when the message is about to become evidence
(`_prove`: a failed check, a quorum finding); one that fails then is refused and not
reported, so this PNode never accuses on evidence the orchestrator would refuse. In
plaintext (`serve --data-plane-insecure`) nothing else authenticates the sender, so the
signature and certificate are verified against the identity CA on receipt. No
certificate, a bad signature, one the CA never issued or an expired one is
UNAUTHENTICATED (counted by the verifier's reason). Restore, Checkpoint and DescribeData,
and every message sent as `__driver__`, are accepted only from the orchestrator identity
(the job's driver); a Forward or Backward from a VNode only from the PNode that hosts the
sending slot at the epoch it claims, by resolution (`_check_sender`): PERMISSION_DENIED
(NotDriver, NotSender) otherwise. Nothing refused here is checked, voted on or reported.

Then each message is refused as early as possible, in this order: malformed fields
(INVALID_ARGUMENT), target not hosted here (NOT_FOUND), the sender check above, tensor too
large (RESOURCE_EXHAUSTED), malformed tensor (INVALID_ARGUMENT), checksum (DATA_LOSS);
then, under the instance's lock, `agent.vnode` applies epoch, attempt and duplicate rules
and computes. Refusals carry an ErrorDetails reason in
trailing metadata (common.proto rule 8), which `agent.peers` reads to decide whether a
retry can help. A VNode whose kind fails to compute (`vnode.ComputeFailed`: an input width
that differs from its trained weights, a plugin kind's error) is refused to its sender like
that, and is also told to the job's driver at the message's reply_to (a message with
`compute_failure` set, vnode.proto), once per position: the sender is usually another
agent, which could only log it. Sends happen after the lock is released, each on its own
task with retries (`agent.peers`), so a handler answers once the message is recorded and
computed on, never after the whole network has reacted to it.

Results are checked before anyone uses them (`api.checks`): a received activation against
the kind of the VNode that sent it (the assignment names its neighbours' kinds), a gradient
for dtype, shape and finiteness. A failure is refused INVALID_ARGUMENT, reason CheckFailed,
naming the check, and reported to the orchestrator (`Reporter`, ValidationService), which
strikes the producing PNode and rolls the job back. Results that pass are compared with those
of the producer's other replicas (`agent.vnode`); losers and disputes are reported too
(`agent.reports`, check "quorum"), and the message is accepted either way.

Instances follow the agent's assignment set level-based (`reconcile`): one per assigned
(network, vnode, replica) at its epoch, rebuilt when the epoch or definition changes,
dropped (with its in-flight sends cancelled) when no longer assigned.

Where compute runs was measured, not guessed: for a small network (tests/agent/
test_dataplane.py, 9 messages per training step on loopback) a step took ~6.8 ms with compute
on the event loop and ~9.6 ms with every call in a worker thread — the thread hop costs
~0.3 ms a message, more than the math of a small layer. So compute runs on the loop, except
for instances that may block or are slow: VNodes with a data source use a thread until
their data is in memory (the first batch may download a data set; after it, picking a
batch's rows is a small call, and two thread hops of every step were on its critical path:
issue 17's profile), and an instance whose last call took more than
`SLOW_CALL` seconds of CPU uses one for the next, so the loop keeps answering other VNodes
and the heartbeat. CPU time of the computing thread, not wall time: on a shared machine a
call on the loop is often descheduled for milliseconds, and with wall time one such pause
sent a 30-microsecond relu to a thread for good (the profile of issue 17: 3-4 % of every
agent's loop in thread hand-offs). An instance in a thread comes back to the loop once a
call takes under half of SLOW_CALL. `compute_in_thread=True` forces threads. The
per-instance lock keeps one call at a time either way.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import datetime as dt
import functools
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, Protocol, TypeVar

import grpc
import numpy as np
from google.protobuf import message as pb_message
from grpc import aio

from agent import blobs, keys, peers, reports, vnode
from agent.runtime import data, kinds, state
from api import checks, identity, messages, signed, tensors
from api.dcnr.v1 import (
    common_pb2,
    pnode_pb2,
    resolve_pb2,
    validation_pb2,
    vnode_pb2,
)

log = logging.getLogger("dcnr.agent.dataplane")

DEFAULT_MAX_MESSAGE_BYTES = 64 << 20
MAX_CHECKPOINT_BYTES = 4 << 30
DETAILS_KEY = "dcnr-error-details-bin"
SLOW_CALL = 0.002
#: Compute failures remembered so each is told to the driver once.
REMEMBERED_FAILURES = 1024
Context = aio.ServicerContext[Any, Any]

_CODES = {
    "StaleEpoch": grpc.StatusCode.FAILED_PRECONDITION,
    "StaleAttempt": grpc.StatusCode.FAILED_PRECONDITION,
    "SenderSuperseded": grpc.StatusCode.FAILED_PRECONDITION,
    "NoForward": grpc.StatusCode.FAILED_PRECONDITION,
    "NotReady": grpc.StatusCode.FAILED_PRECONDITION,
    "VNodeFailed": grpc.StatusCode.FAILED_PRECONDITION,
    "Invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "CheckFailed": grpc.StatusCode.INVALID_ARGUMENT,
    "NotHosted": grpc.StatusCode.NOT_FOUND,
    "TooLarge": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "Checksum": grpc.StatusCode.DATA_LOSS,
    "BlobStore": grpc.StatusCode.UNAVAILABLE,
    "DataError": grpc.StatusCode.INVALID_ARGUMENT,
    **dict.fromkeys(identity.VERIFY_REASONS, grpc.StatusCode.UNAUTHENTICATED),
    "NotSender": grpc.StatusCode.PERMISSION_DENIED,
    "NotDriver": grpc.StatusCode.PERMISSION_DENIED,
    #: No certificate yet (not registered): nothing to verify with; the sender retries.
    "NoIdentity": grpc.StatusCode.UNAVAILABLE,
    #: Resolution cannot say who hosts the sending slot at that epoch (yet): retried.
    "SenderUnresolved": grpc.StatusCode.UNAVAILABLE,
}
#: Every reason a message or call is refused with (`agent.metrics` counts refusals by it).
REFUSAL_REASONS = tuple(_CODES)


class Sender(Protocol):
    """What the data plane needs of `agent.peers.Peers`."""

    async def send_forward(
        self, request: vnode_pb2.ForwardRequest, array: np.ndarray | None = None
    ) -> bool: ...
    async def send_backward(
        self, request: vnode_pb2.BackwardRequest, array: np.ndarray | None = None
    ) -> bool: ...
    async def resolve(
        self, network: str, vnode: str, replica: int, *, min_epoch: int = 0
    ) -> resolve_pb2.Endpoint | None: ...


class Reporter(Protocol):
    """Sends a ValidationService report with this PNode's identity and credential."""

    async def report(self, request: validation_pb2.ReportResultRequest) -> None: ...


Slot = tuple[str, str, int]  # (network, vnode, replica)
KindFactory = Callable[[pnode_pb2.Assignment], kinds.Kind]


@dataclass
class _Hosted:
    instance: vnode.Instance
    signature: tuple[Any, ...]
    #: What it was built from: a job's data (Restore, DescribeData, inference) rebuilds
    #: its kind from it with that data instead of the assignment's.
    assignment: pnode_pb2.Assignment
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    tasks: set[asyncio.Task[bool]] = field(default_factory=set)
    #: Compute in a worker thread (see the module docstring): always (`compute_in_thread`;
    #: a data source until its data is read), or for the next call.
    pinned_thread: bool = False
    in_thread: bool = False
    #: Neighbour VNode → (kind, params) from the assignment, for the result checks.
    neighbours: dict[str, tuple[str, dict[str, Any]]] = field(default_factory=dict)


#: Messages of one Deliver stream handled at once (`_deliver_stream`); a sender keeps at
#: most as many unanswered (`api.streams.DEFAULT_LIMIT`).
STREAM_WINDOW = 64


class _Refusal(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def signature(a: pnode_pb2.Assignment) -> tuple[Any, ...]:
    """What makes an assignment a different VNode instance (not e.g. its resources)."""
    return (a.epoch, a.kind, a.params_json, tuple(a.inputs), tuple(a.outputs), a.data.url)


class DataPlane:
    def __init__(
        self,
        *,
        sender: Sender,
        keeper: keys.Keeper,
        blob_store: blobs.BlobStore,
        kind_factory: KindFactory,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        compute_in_thread: bool = False,
        now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        """`keeper`: this PNode's identity, whose CA bundle verifies every request; `now`:
        the clock certificates are checked against."""
        self._sender = sender
        self._keys = keeper
        self._now = now
        self._blobs = blob_store
        self._make_kind = kind_factory
        self._max_bytes = max_message_bytes
        self._in_thread = compute_in_thread
        self._hosted: dict[Slot, _Hosted] = {}
        #: Set by the agent once registered; None: failed checks are refused, not reported.
        self.reporter: Reporter | None = None
        #: `on_message(forward, refused_reason)`: each Forward/Backward message, handled
        #: (reason None) or refused (for `agent.metrics`).
        self.on_message: Callable[[bool, str | None], None] = lambda _forward, _reason: None
        #: `on_spot(result)`: each spot check this agent ran as a checker (`agent.metrics`).
        self.on_spot: Callable[[str], None] = lambda _result: None
        self._reports: set[asyncio.Task[None]] = set()
        #: Assignments whose kind could not be built: (signature, why), reported as FAILED.
        self._failed: dict[Slot, tuple[tuple[Any, ...], str]] = {}
        #: Compute failures already told to a driver (`_tell_driver`), oldest first.
        self._told: collections.OrderedDict[tuple[Any, ...], None] = collections.OrderedDict()

    # -- hosting ----------------------------------------------------------------------------

    def reconcile(self, assignments: Sequence[pnode_pb2.Assignment]) -> None:
        desired = {(a.network, a.vnode, a.replica): a for a in assignments}
        for slot in list(self._hosted):
            wanted = desired.get(slot)
            if wanted is None or signature(wanted) != self._hosted[slot].signature:
                self._drop(slot)
        self._failed = {s: f for s, f in self._failed.items() if s in desired}
        for slot, a in desired.items():
            sig = signature(a)
            if slot in self._hosted:  # checks and replica counts only: no rebuild
                self._hosted[slot].neighbours = _neighbours(a)
                self._hosted[slot].assignment = a
                self._hosted[slot].instance.neighbour_replicas = dict(a.neighbour_replicas)
                continue
            if self._failed.get(slot, ((),))[0] == sig:
                continue
            try:
                kind = self._make_kind(a)
                kind.check_input_count(max(1, len(a.inputs)))
            except (kinds.KindError, ValueError) as exc:
                log.warning("%s/%s replica %d: cannot host: %s", *slot, exc)
                self._failed[slot] = (sig, str(exc))
                continue
            self._failed.pop(slot, None)
            instance = vnode.Instance(
                network=a.network,
                vnode=a.vnode,
                replica=a.replica,
                epoch=a.epoch,
                kind=kind,
                parents=list(a.inputs),
                children=list(a.outputs),
                neighbour_replicas=dict(a.neighbour_replicas),
            )
            self._hosted[slot] = _Hosted(
                instance,
                sig,
                a,
                pinned_thread=self._in_thread or kind.data is not None,
                in_thread=self._in_thread or kind.data is not None,
                neighbours=_neighbours(a),
            )
            log.info("%s/%s replica %d: hosting at epoch %d", *slot, a.epoch)

    def drop_all(self) -> None:
        for slot in list(self._hosted):
            self._drop(slot)
        self._failed.clear()

    def _drop(self, slot: Slot) -> None:
        hosted = self._hosted.pop(slot)
        for task in hosted.tasks:
            task.cancel()
        log.info("%s/%s replica %d: dropped (epoch %d)", *slot, hosted.instance.epoch)

    def instance(self, network: str, name: str, replica: int = 0) -> vnode.Instance | None:
        hosted = self._hosted.get((network, name, replica))
        return hosted.instance if hosted is not None else None

    def hosted(self) -> dict[Slot, int]:
        """(network, vnode, replica) → epoch of every hosted instance."""
        return {slot: h.instance.epoch for slot, h in self._hosted.items()}

    def statuses(self) -> list[pnode_pb2.AssignmentStatus]:
        running = [
            pnode_pb2.AssignmentStatus(
                network=n, vnode=v, replica=r, epoch=h.instance.epoch,
                state=pnode_pb2.ASSIGNMENT_STATE_RUNNING,
            )
            for (n, v, r), h in self._hosted.items()
        ]  # fmt: skip
        failed = [
            pnode_pb2.AssignmentStatus(
                network=n, vnode=v, replica=r, epoch=sig[0],
                state=pnode_pb2.ASSIGNMENT_STATE_FAILED, message=why[:1024],
            )
            for (n, v, r), (sig, why) in self._failed.items()
        ]  # fmt: skip
        return running + failed

    async def close(self) -> None:
        tasks = [t for h in self._hosted.values() for t in h.tasks]
        self.drop_all()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- VNodeService -----------------------------------------------------------------------

    def add_to_server(self, server: aio.Server) -> None:
        """Serve VNodeService on `server`, each behaviour given the request's raw bytes."""
        behaviours = {name: functools.partial(self._raw, name) for name in signed.METHODS}
        server.add_generic_rpc_handlers(
            (signed.raw_handler(behaviours, deliver=self._deliver_stream),)
        )

    async def _raw(self, name: str, body: bytes, context: Context) -> pb_message.Message:
        """Verify who signed the bytes, then parse them; only then anything else."""
        evidence = signed.received(signed.full_method(name), body, context)
        if name in ("Forward", "Backward"):
            forward = name == "Forward"
            try:
                duplicate = await self._received(evidence, context, forward=forward)
            except (_Refusal, vnode.Refused) as exc:
                await _abort(context, exc)
            if forward:
                return vnode_pb2.ForwardResponse(duplicate=duplicate)
            return vnode_pb2.BackwardResponse(duplicate=duplicate)
        try:
            who, _proven = self._sender_of(evidence, context)
            request = _parsed(body, signed.METHODS[name][0])
            if who.kind != "orchestrator":
                raise _Refusal(
                    "NotDriver",
                    f"{name} is accepted only from the job's driver (the orchestrator "
                    f"identity), not from {who.uri}",
                )
        except _Refusal as exc:
            await _abort(context, exc)
        if isinstance(request, vnode_pb2.CheckpointRequest):
            return await self.Checkpoint(request, context)
        if isinstance(request, vnode_pb2.RestoreRequest):
            return await self.Restore(request, context)
        assert isinstance(request, vnode_pb2.DescribeDataRequest)
        return await self.DescribeData(request, context)

    def _sender_of(
        self, evidence: common_pb2.SignedMessage, context: Context, peer: bytes | None = None
    ) -> tuple[identity.Identity, bool]:
        """Who sent the request, and whether its signature is verified yet: over mutual TLS
        the client certificate says who, and the signature is verified only once the
        message is about to become evidence (`signed.sender`, `_prove`). Plaintext (`serve
        --data-plane-insecure`): nothing else authenticates the sender, so every request's
        signature is verified here. `peer`: the connection's client certificate when the
        caller has it already (a Deliver stream reads it once: one stream, one connection,
        one handshake); otherwise it is read from the call."""
        verifier = self._keys.verifier
        if verifier is None:
            raise _Refusal("NoIdentity", "this agent is not registered yet; retry shortly")
        try:
            if self._keys.plaintext:
                return signed.verify(verifier, evidence, self._now()), True
            if peer is None:
                peer = signed.peer_certificate(context)
            return signed.sender(verifier, evidence, peer, self._now())
        except identity.IdentityError as exc:
            raise _Refusal(
                exc.reason,
                f"{exc}; every VNodeService request must be signed by its sender's identity "
                "(SIGNED REQUESTS in common.proto)",
            ) from None

    def _prove(self, evidence: common_pb2.SignedMessage | None) -> None:
        """Before a message becomes evidence: its signature must verify (lazily, over mutual
        TLS), or it is refused and NOT reported: a report whose evidence does not verify
        would cost this PNode a false-accusation strike."""
        verifier = self._keys.verifier
        if evidence is None or verifier is None:
            raise _Refusal("Unsigned", "the request's signature was not kept; not reported")
        try:
            signed.verify(verifier, evidence, self._now())
        except identity.IdentityError as exc:
            raise _Refusal(
                exc.reason,
                f"{exc}; the request failed a check but proves nothing, so it is refused "
                "and not reported",
            ) from None

    def _provable(self, finding: vnode.Finding) -> bool:
        """Whether every result a quorum finding carries verifies (`_prove`); a finding that
        does not is logged and not reported."""
        if self._keys.plaintext:
            return True  # plaintext: every one was verified on receipt
        try:
            for evidence in finding.evidence:
                self._prove(evidence)
        except _Refusal as exc:
            log.warning(
                "%s/%s replica %d: quorum finding at %r not reported: %s",
                finding.job, finding.subject_vnode, finding.subject_replica,
                finding.position, exc,
            )  # fmt: skip
            return False
        return True

    async def _deliver_stream(
        self, requests: AsyncIterator[bytes], context: Context
    ) -> AsyncIterator[vnode_pb2.DeliverResponse]:
        """Deliver (STREAMED DELIVERY in vnode.proto): each message handled as its unary
        call (`_received`) and answered in order with that call's code and reason; a
        refusal ends the message, never the stream.

        Handled concurrently, as the unary calls a stream replaces were: a message that
        waits (for resolution to attribute its sender, for its VNode's lock) must not hold
        back the messages behind it on the edge, which in-order handling did, up to the
        sender's deadline. At most `STREAM_WINDOW` messages of one stream are in hand at
        once; past that the stream is not read until the oldest is answered."""
        answers: asyncio.Queue[asyncio.Task[vnode_pb2.DeliverResponse] | None] = asyncio.Queue()
        window = asyncio.Semaphore(STREAM_WINDOW)
        # The client certificate of the stream's connection, read once (not per message:
        # reading a call's auth context builds it anew each time).
        peer = signed.peer_certificate(context)

        async def read() -> None:
            try:
                async for raw in requests:
                    await window.acquire()  # released once its answer is sent
                    await answers.put(asyncio.ensure_future(self._answer(raw, context, peer)))
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (answer := await answers.get()) is not None:
                reply = await answer
                window.release()
                yield reply
        finally:
            reader.cancel()
            while not answers.empty():
                left = answers.get_nowait()
                if left is not None:
                    left.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    async def _answer(self, raw: bytes, context: Context, peer: bytes) -> vnode_pb2.DeliverResponse:
        sequence = 0
        try:
            request = _parsed(raw, vnode_pb2.DeliverRequest)
            sequence = request.sequence
            found = signed.streamed(request)
            if found is None:
                raise _Refusal("Invalid", "body: set forward or backward (a serialized request)")
            name, evidence = found
            duplicate = await self._received(
                evidence, context, forward=name == "Forward", peer=peer
            )
        except (_Refusal, vnode.Refused) as exc:
            return vnode_pb2.DeliverResponse(
                sequence=sequence,
                code=_code(exc.reason).value[0],
                details=common_pb2.ErrorDetails(reason=exc.reason),
                message=str(exc),
            )
        except Exception as exc:  # what a unary call's handler bug is answered with: UNKNOWN
            log.exception("Deliver: message %d failed", sequence)
            return vnode_pb2.DeliverResponse(
                sequence=sequence,
                code=grpc.StatusCode.UNKNOWN.value[0],
                message=f"Unexpected {type(exc).__name__}: {exc}",
            )
        return vnode_pb2.DeliverResponse(sequence=sequence, duplicate=duplicate)

    async def Checkpoint(
        self, request: vnode_pb2.CheckpointRequest, context: Context
    ) -> vnode_pb2.CheckpointResponse:
        try:
            hosted = self._lookup(request.network, request.vnode, request.replica)
            key = blobs.checkpoint_key(request.job, request.vnode, request.replica, request.step)
            if not request.destination.startswith(("file://", "s3://")):
                raise _Refusal(
                    "Invalid",
                    f"destination: {request.destination!r} must start with file:// or s3://",
                )
            async with hosted.lock:
                snap = hosted.instance.snapshot(
                    request.job, request.step, request.epoch, request.attempt
                )
            if snap is None:
                return vnode_pb2.CheckpointResponse(blob=common_pb2.BlobRef())
            content = await asyncio.to_thread(
                state.to_bytes, snap.params, snap.optimizer_state, step=snap.step
            )
            ref = await self._blobs.put(request.destination, key, content)
        except (_Refusal, vnode.Refused, blobs.BlobError) as exc:
            await _abort(context, exc)
        return vnode_pb2.CheckpointResponse(blob=ref)

    async def Restore(
        self, request: vnode_pb2.RestoreRequest, context: Context
    ) -> vnode_pb2.RestoreResponse:
        try:
            hosted = self._lookup(request.network, request.vnode, request.replica)
            job_kind = self._kind_reading(hosted, request.data) if request.data.url else None
            if job_kind is not None and job_kind.data is not None:
                # The first batch may read (or download) the data.
                hosted.pinned_thread = hosted.in_thread = True
            loaded = None
            if request.HasField("blob") and request.blob.url:
                content = await self._blobs.get(request.blob, max_bytes=MAX_CHECKPOINT_BYTES)
                try:
                    params, optimizer_state, step = await asyncio.to_thread(
                        state.from_bytes, content
                    )
                except ValueError as exc:
                    raise _Refusal("Invalid", f"blob {request.blob.url}: {exc}") from None
                loaded = vnode.Snapshot(params, optimizer_state, step)
            async with hosted.lock:
                try:
                    step = hosted.instance.restore(
                        job=request.job,
                        epoch=request.epoch,
                        attempt=request.attempt,
                        step=request.step,
                        seed=request.seed,
                        optimizer=request.optimizer or "sgd",
                        learning_rate=request.learning_rate or 0.01,
                        loaded=loaded,
                        neighbour_replicas=dict(request.neighbour_replicas),
                        kind=job_kind,
                    )
                except ValueError as exc:  # unknown optimizer, bad learning rate or state
                    raise _Refusal("Invalid", str(exc)) from None
        except (_Refusal, vnode.Refused, blobs.BlobError) as exc:
            await _abort(context, exc)
        return vnode_pb2.RestoreResponse(step=step)

    async def DescribeData(
        self, request: vnode_pb2.DescribeDataRequest, context: Context
    ) -> vnode_pb2.DescribeDataResponse:
        """What the VNode's data (or the request's) holds; the driver's only way to learn a
        data set's length, since the orchestrator never reads data."""
        try:
            hosted = self._lookup(request.network, request.vnode, request.replica)
            if request.epoch != hosted.instance.epoch:
                raise _Refusal(
                    "StaleEpoch",
                    f"epoch: {request.epoch} is not the epoch of {request.network}/"
                    f"{request.vnode} replica {request.replica} here, which is "
                    f"{hosted.instance.epoch}",
                )
            kind = self._kind_reading(hosted, request.data)
            source = kind.data
            if source is None:
                raise _Refusal(
                    "DataError",
                    f"data: {request.network}/{request.vnode} has no data ref and none was "
                    "given (a source needs the network's data ref or the job's --data)",
                )
            try:
                found = await asyncio.to_thread(source.describe, _field(kind))
            except kinds.KindError as exc:  # DataError is one
                raise _Refusal("DataError", str(exc)) from None
        except (_Refusal, vnode.Refused) as exc:
            await _abort(context, exc)
        return vnode_pb2.DescribeDataResponse(
            has_field=found.shape is not None,
            shape=list(found.shape or ()),
            dtype=found.dtype,
            fields=list(found.fields),
            resolved_url=found.where,
        )

    def _kind_reading(self, hosted: _Hosted, ref: common_pb2.DataRef) -> kinds.Kind:
        """The VNode's kind reading `ref` (a job's or a request's data) instead of its
        assignment's; the assignment's own kind when `ref` is empty."""
        if not ref.url:
            return hosted.instance.kind
        rebuilt = pnode_pb2.Assignment()
        rebuilt.CopyFrom(hosted.assignment)
        rebuilt.data.CopyFrom(ref)
        try:
            return self._make_kind(rebuilt)
        except (kinds.KindError, ValueError) as exc:  # DataError is a KindError
            raise _Refusal("DataError", str(exc)) from None

    async def _read_input(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        message: vnode.Message,
    ) -> vnode.Message:
        """An inference input the driver named by data reference: this source's array of
        it, read here (ForwardRequest.data in vnode.proto)."""
        if not isinstance(request, vnode_pb2.ForwardRequest) or not request.data.url:
            return message
        if message.sender_vnode != vnode.DRIVER or message.position[0] != "request":
            raise _Refusal(
                "Invalid", "data: only the driver's inference input may name data, not a tensor"
            )
        kind = self._kind_reading(hosted, request.data)
        if kind.data is None:
            raise _Refusal("DataError", f"data: {request.data.url!r} gave {kind.name!r} no data")
        try:
            array = await asyncio.to_thread(kind.data.array, _field(kind))
        except kinds.KindError as exc:
            raise _Refusal("DataError", str(exc)) from None
        return dataclasses.replace(message, array=array, empty=False)

    # -- messages ---------------------------------------------------------------------------

    async def _received(
        self,
        evidence: common_pb2.SignedMessage,
        context: Context,
        *,
        forward: bool,
        peer: bytes | None = None,
    ) -> bool:
        """A Forward or Backward, from a unary call or a Deliver stream alike: who signed
        the bytes (`_sender_of`, against the connection's certificate: per message), then
        parse them, then every check in the module docstring's order, then `_apply`.
        Whether a duplicate; a refusal (`_Refusal`, `vnode.Refused`) is counted and raised
        for the caller to answer as its RPC answers."""
        try:
            sender, proven = self._sender_of(evidence, context, peer)
            request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest = (
                _parsed(evidence.body, vnode_pb2.ForwardRequest)
                if forward
                else _parsed(evidence.body, vnode_pb2.BackwardRequest)
            )
            return await self._message(request, sender, evidence, forward=forward, proven=proven)
        except (_Refusal, vnode.Refused) as exc:
            self.on_message(forward, exc.reason)
            raise

    async def _message(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        sender: identity.Identity,
        evidence: common_pb2.SignedMessage,
        *,
        forward: bool,
        proven: bool,
    ) -> bool:
        """A parsed message from `sender`: the checks, then `_apply`; raises refusals."""
        _check_fields(request)
        hosted = self._lookup(request.network, request.target_vnode, request.target_replica)
        await self._check_sender(hosted, request, sender, forward=forward)
        message = self._decode(request, forward=forward, evidence=evidence)
        message = await self._read_input(hosted, request, message)
        self._check(hosted, request, message, proven=proven)
        return await self._apply(hosted, request, message, forward=forward)

    # -- in-process delivery ----------------------------------------------------------------

    def is_self(self, pnode: str) -> bool:
        """Whether `pnode` is this agent's PNode (by its current identity certificate)."""
        me = self._me()
        return me is not None and me.name == pnode

    def _me(self) -> identity.Identity | None:
        verifier, signer = self._keys.verifier, self._keys.signer
        if verifier is None or not signer.ready:
            return None
        try:
            return verifier.identify(signer.certificate, self._now())
        except identity.IdentityError:
            return None  # expired: remote receivers would refuse it too; so will we

    async def deliver_local(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        array: np.ndarray | None,
        *,
        forward: bool,
    ) -> bool:
        """A message from a VNode hosted here to another hosted here (`agent.peers`, "in
        process"): `request` without its tensor, and the sender's `array` (None: the empty
        marker), handed over without gRPC, encoding or copy. The receiver gets a read-only
        view of it, as it gets a read-only view of a remote tensor's bytes, so neither side
        can change what the other holds.

        Everything else is what `_raw` and `_message` do to a remote message, in the same
        order and with the same refusals (`peers.LocalRefused` carries the status code and
        reason a remote receiver would have answered): the sender is this PNode's identity,
        as its certificate proves it (NoIdentity until registered, Expired once it
        expires); the fields, the target, the sender's attribution by resolution, the size,
        the dtype, the result checks, then epoch, attempt and duplicates under the
        instance's lock. Evidence is built only when it may be needed (the request encoded
        and signed by this PNode, exactly as it would have been sent): at once when the
        sending VNode has several replicas (their results are compared, and a finding
        carries every replica's signed result), else only when the result fails a check
        and is about to be reported. Returns whether the message was a duplicate."""
        try:
            who = self._me()
            if who is None:
                raise _Refusal("NoIdentity", "this agent has no valid identity; retry shortly")
            _check_fields(request)
            hosted = self._lookup(request.network, request.target_vnode, request.target_replica)
            await self._check_sender(hosted, request, who, forward=forward)
            message = self._local_message(hosted, request, array, forward=forward)
            self._check(hosted, request, message, proven=False, sign=self._signed)
            return await self._apply(hosted, request, message, forward=forward)
        except (_Refusal, vnode.Refused) as exc:
            self.on_message(forward, exc.reason)
            raise peers.LocalRefused(_code(exc.reason), exc.reason, str(exc)) from None
        except Exception as exc:  # what gRPC answers a handler's bug with: UNKNOWN
            log.exception(
                "%s/%s: in-process delivery failed", request.network, request.target_vnode
            )
            raise peers.LocalRefused(
                grpc.StatusCode.UNKNOWN, "", f"Unexpected {type(exc).__name__}: {exc}"
            ) from None

    def _local_message(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        array: np.ndarray | None,
        *,
        forward: bool,
    ) -> vnode.Message:
        empty = array is None
        if array is None:
            array = _EMPTY
        elif array.dtype.name not in tensors.DTYPES:
            raise _Refusal(
                "Invalid", f"tensor.dtype: {array.dtype.name!r} is not one of "
                f"{', '.join(tensors.DTYPES)}",
            )  # fmt: skip
        if array.nbytes > self._max_bytes:
            raise _Refusal(
                "TooLarge",
                f"tensor.data: {array.nbytes} bytes exceeds the limit of {self._max_bytes}",
            )
        view = np.ascontiguousarray(array).view()  # a copy only if not contiguous already
        view.flags.writeable = False
        sender = request.sender_vnode
        several = hosted.instance.replicas_of(request.job, sender) > 1
        return vnode.Message(
            forward=forward,
            job=request.job,
            position=_position(request),
            sender_vnode=sender,
            sender_replica=request.sender_replica,
            target_epoch=request.target_epoch,
            attempt=request.attempt,
            reply_to=request.reply_to,
            array=view,
            empty=empty,
            sender_epoch=request.sender_epoch,
            adaptive=request.adaptive,
            double_check=tuple(request.double_check),
            spot_check=_spot_check(request),
            evidence=self._signed(request, view, empty, forward=forward) if several else None,
            micro_batches=max(1, request.micro_batches),
        )

    def _signed(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        array: np.ndarray,
        empty: bool,
        *,
        forward: bool,
    ) -> common_pb2.SignedMessage:
        """The request as this PNode would have sent it, signed: evidence like a remote
        one's. Sets the request's tensor (the same bytes any later remote attempt sends)."""
        if not request.HasField("tensor"):
            request.tensor.CopyFrom(tensors.empty() if empty else tensors.encode(array))
        method = signed.full_method("Forward" if forward else "Backward")
        body = request.SerializeToString()
        metadata = dict(self._keys.signer.metadata(method, body))
        return common_pb2.SignedMessage(
            method=method,
            body=body,
            certificate=metadata.get(identity.CERTIFICATE_METADATA, b""),
            signature=metadata.get(identity.SIGNATURE_METADATA, b""),
        )

    async def _apply(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        message: vnode.Message,
        *,
        forward: bool,
    ) -> bool:
        """Epoch, attempt and duplicate rules and the compute, under the instance's lock;
        then what they found reported and what they produced sent. Whether a duplicate."""
        async with hosted.lock:
            try:
                if hosted.in_thread:
                    received, cpu = await asyncio.to_thread(_timed, hosted.instance, message)
                else:
                    received, cpu = _timed(hosted.instance, message)
                if hosted.pinned_thread and not self._in_thread:
                    hosted.pinned_thread = not _data_read(hosted.instance.kind)
                hosted.in_thread = in_thread_next(
                    pinned=hosted.pinned_thread, in_thread=hosted.in_thread, cpu=cpu
                )
            except vnode.ComputeFailed as failed:
                self._tell_driver(hosted, request, failed)
                raise
        self.on_message(forward, None)
        if received.spot:
            self.on_spot(received.spot)
            if received.spot == "failed":
                log.warning(
                    "%s/%s replica %d: spot check of replica 0's output at %s %s failed; "
                    "sent this replica's own result for the children to compare",
                    *_slot(hosted.instance), *message.position,
                )  # fmt: skip
        for why in received.dropped:  # held gradients this message released, unusable
            log.warning("%s/%s replica %d: %s", *_slot(hosted.instance), why)
        for finding in received.findings:
            if self._provable(finding):
                self._report(reports.quorum(hosted.instance, finding))
        for outgoing in received.outgoing:
            self._spawn(hosted, outgoing)
        return received.duplicate

    async def _check_sender(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        who: identity.Identity,
        *,
        forward: bool,
    ) -> None:
        """Only the slot's own PNode may speak for it: refuse a message whose signer is not
        the PNode that hosts the sending slot at the epoch it claims (`NotSender`), or, sent
        as `__driver__`, not the orchestrator (`NotDriver`); and a result from a replica
        whose slot has moved on (`SenderSuperseded`).

        A PNode keeps hosting a slot for a moment after it moved (until its assignment set
        arrives), and a sender with a stale cache may still feed it; its results would be
        votes of a replica that no longer exists, and since one vote per replica index is
        kept, they could shut out the current replica's. So the sender's epoch and PNode are
        checked against resolution (cached; asked again when the sender claims an epoch the
        cache does not know). One epoch of a slot is one allocation on one PNode, so a
        signer that differs at the cached epoch is refused without asking again. When
        resolution cannot answer, the message is refused UNAVAILABLE and its sender retries:
        a result nobody can attribute is never taken."""
        name, replica, epoch = request.sender_vnode, request.sender_replica, request.sender_epoch
        if name == vnode.DRIVER:
            if who.kind != "orchestrator":
                raise _Refusal(
                    "NotDriver",
                    f"sender_vnode: {vnode.DRIVER} messages are accepted only from the job's "
                    f"driver (the orchestrator identity), not from {who.uri}",
                )
            return
        neighbours = hosted.instance.parents if forward else hosted.instance.children
        if forward and name == hosted.instance.vnode and name in _spot_check(request):
            neighbours = [name]  # replica 0's output to its checker (`vnode.Instance`)
        if name not in neighbours:
            relation = "parent" if forward else "child"
            raise _Refusal(
                "Invalid",
                f"sender_vnode: {name!r} is not a {relation} of {hosted.instance.vnode!r} "
                f"({relation}s: {', '.join(dict.fromkeys(neighbours)) or 'none'})",
            )
        if who.kind != "pnode":
            raise _Refusal("NotSender", f"{who.uri} sends only as {vnode.DRIVER}")
        try:
            current = await self._sender.resolve(request.network, name, replica)
            if current is None or epoch > current.epoch:
                current = await self._sender.resolve(
                    request.network, name, replica, min_epoch=epoch
                )
        except grpc.RpcError as exc:
            raise _Refusal(
                "SenderUnresolved",
                f"sender: cannot resolve {request.network}/{name} replica {replica} to check "
                f"who hosts it ({exc.code() if isinstance(exc, aio.AioRpcError) else exc}); "
                "retry",
            ) from None
        if current is None or epoch > current.epoch:
            known = "no live replica" if current is None else f"epoch {current.epoch}"
            raise _Refusal(
                "SenderUnresolved",
                f"sender_epoch: {epoch} of {request.network}/{name} replica {replica} is not "
                f"known to resolution yet ({known}); retry",
            )
        if epoch < current.epoch:
            raise _Refusal(
                "SenderSuperseded",
                f"sender_epoch: {epoch} of {request.network}/{name} replica "
                f"{replica} is superseded by epoch {current.epoch}; the sender no longer holds "
                "that slot",
            )
        if current.pnode_id != who.name:
            raise _Refusal(
                "NotSender",
                f"signer: {who.uri} does not host {request.network}/{name} replica {replica} "
                f"at epoch {epoch}; only its PNode may send its results",
            )

    def _decode(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        forward: bool,
        evidence: common_pb2.SignedMessage | None = None,
    ) -> vnode.Message:
        size = len(request.tensor.data)
        if size > self._max_bytes:
            raise _Refusal(
                "TooLarge", f"tensor.data: {size} bytes exceeds the limit of {self._max_bytes}"
            )
        try:
            array = tensors.decode(request.tensor, max_bytes=self._max_bytes, view=True)
        except tensors.TensorError as exc:
            reason = "Checksum" if exc.reason == "checksum" else "Invalid"
            raise _Refusal(reason, str(exc)) from None
        return vnode.Message(
            forward=forward,
            job=request.job,
            position=_position(request),
            sender_vnode=request.sender_vnode,
            sender_replica=request.sender_replica,
            target_epoch=request.target_epoch,
            attempt=request.attempt,
            reply_to=request.reply_to,
            array=array,
            empty=tensors.is_empty(request.tensor),
            sender_epoch=request.sender_epoch,
            adaptive=request.adaptive,
            double_check=tuple(request.double_check),
            spot_check=_spot_check(request),
            evidence=evidence,
            micro_batches=max(1, request.micro_batches),
        )

    def _check(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        message: vnode.Message,
        *,
        proven: bool,
        sign: Callable[..., common_pb2.SignedMessage] | None = None,
    ) -> None:
        """The result checks; a failure is refused and reported (module docstring), once its
        signature verifies (`_prove`, unless `proven` already). `sign`: how an in-process
        message without evidence gets it (`_signed`), made only now that it is needed."""
        if message.sender_vnode == vnode.DRIVER:
            return  # batch indices or the caller's tensor: not a VNode's result
        if message.sender_vnode == hosted.instance.vnode:
            # A spot check's claim (`vnode.Instance`): the check itself judges it (a claim
            # failing the result checks fails it too, and the checker recomputes); this
            # replica is no neighbour of its own VNode, so a report from it would prove
            # nothing. Replica 0's children check and report the same result themselves.
            return
        try:
            if message.forward:
                kind, params = hosted.neighbours.get(message.sender_vnode, ("", {}))
                training = message.position[0] == "step"
                checks.check_forward(kind, params, message.array, training=training)
            else:
                checks.check_gradient(message.array)
        except checks.CheckFailed as failed:
            evidence = message.evidence
            if evidence is None and sign is not None:
                evidence = sign(request, message.array, message.empty, forward=message.forward)
            if not proven:
                self._prove(evidence)
            self._report(reports.check_failed(request, failed, evidence=evidence))
            raise _Refusal(
                "CheckFailed",
                f"tensor: result of {message.sender_vnode!r} replica {message.sender_replica} "
                f"refused: {failed}",
            ) from None

    def _report(self, report: validation_pb2.ReportResultRequest) -> None:
        """Send on a task of its own: the message is answered without waiting for it."""
        if self.reporter is None:
            return
        task = asyncio.get_running_loop().create_task(self.reporter.report(report))
        self._reports.add(task)
        task.add_done_callback(self._reports.discard)

    def _lookup(self, network: str, name: str, replica: int) -> _Hosted:
        slot = (network, name, replica)
        hosted = self._hosted.get(slot)
        if hosted is not None:
            return hosted
        failed = self._failed.get(slot)
        if failed is not None:
            raise _Refusal("VNodeFailed", f"{network}/{name} replica {replica}: {failed[1]}")
        raise _Refusal(
            "NotHosted",
            f"target: {network}/{name} replica {replica} is not hosted here "
            f"(this agent hosts {len(self._hosted)} VNode replicas); resolve it again",
        )

    def _tell_driver(
        self,
        hosted: _Hosted,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        failed: vnode.ComputeFailed,
    ) -> None:
        """Report a compute failure to the job's driver at the message's reply_to (the
        refusal reaches only the sender, usually another agent), on a task of its own so the
        refusal does not wait for it; best effort, once per (job, attempt, position) of this
        replica, since every replica of every parent (and their retries) may provoke it."""
        instance = hosted.instance
        position = request.WhichOneof("position")
        key = (
            instance.network, instance.vnode, instance.replica, request.job, request.attempt,
            str(position), str(getattr(request, position or "step")), str(request.micro),
        )  # fmt: skip
        if not request.reply_to or key in self._told:
            return
        self._told[key] = None
        while len(self._told) > REMEMBERED_FAILURES:
            self._told.popitem(last=False)
        fields: dict[str, Any] = {
            "header": common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="dcnr-agent"),
            "job": request.job,
            "network": instance.network,
            "sender_vnode": instance.vnode,
            "sender_replica": instance.replica,
            "sender_epoch": instance.epoch,
            "target_vnode": vnode.DRIVER,
            "tensor": tensors.empty(),
            "reply_to": request.reply_to,
            "attempt": request.attempt,
            "compute_failure": messages.clip(str(failed)),
        }
        if position == "step":
            fields["step"] = request.step
            fields["micro"] = request.micro
            fields["micro_batches"] = request.micro_batches
        else:
            fields["request_id"] = request.request_id
        log.warning(
            "%s/%s replica %d: could not compute (told the driver at %s): %s",
            instance.network, instance.vnode, instance.replica, request.reply_to, failed,
        )  # fmt: skip
        sent = (
            self._sender.send_forward(vnode_pb2.ForwardRequest(**fields))
            if failed.forward
            else self._sender.send_backward(vnode_pb2.BackwardRequest(**fields))
        )
        task = asyncio.get_running_loop().create_task(sent)
        hosted.tasks.add(task)
        task.add_done_callback(hosted.tasks.discard)

    def _spawn(self, hosted: _Hosted, outgoing: vnode.Outgoing) -> None:
        task = asyncio.create_task(self._send(hosted.instance, outgoing))
        hosted.tasks.add(task)
        task.add_done_callback(hosted.tasks.discard)

    async def _send(self, instance: vnode.Instance, o: vnode.Outgoing) -> bool:
        fields: dict[str, Any] = {
            "header": common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="dcnr-agent"),
            "job": o.job,
            "network": instance.network,
            "sender_vnode": instance.vnode,
            "sender_replica": instance.replica,
            "sender_epoch": instance.epoch,
            "target_vnode": o.target,
            "target_replica": o.target_replica,
            "reply_to": o.reply_to,
            "attempt": o.attempt,
            "adaptive": o.adaptive,
            "double_check": o.double_check,
        }
        if o.forward:
            fields["spot_check"] = o.spot_check
        fields["step" if o.position[0] == "step" else "request_id"] = o.position[1]
        if o.micro_batches > 1:
            fields["micro"] = vnode.part(o.position)
            fields["micro_batches"] = o.micro_batches
        # The tensor is left to the sender: encoded only if it leaves this process.
        if o.forward:
            return await self._sender.send_forward(vnode_pb2.ForwardRequest(**fields), o.array)
        return await self._sender.send_backward(vnode_pb2.BackwardRequest(**fields), o.array)


def in_thread_next(*, pinned: bool, in_thread: bool, cpu: float) -> bool:
    """Whether an instance's next call computes in a worker thread, after a call that took
    `cpu` seconds of CPU (module docstring): pinned ones always; past SLOW_CALL to a thread;
    back to the loop only under half of it, so a borderline VNode does not flap."""
    return pinned or cpu > (SLOW_CALL / 2 if in_thread else SLOW_CALL)


def _data_read(kind: kinds.Kind) -> bool:
    """Whether a source's data is in memory, so its calls need no thread for reading it."""
    return kind.data is not None and kind.data.loaded()


def _timed(instance: vnode.Instance, message: vnode.Message) -> tuple[vnode.Received, float]:
    """`instance.receive(message)` and the CPU seconds the calling thread spent on it."""
    started = time.thread_time()
    received = instance.receive(message)
    return received, time.thread_time() - started


#: The empty marker an in-process message carries for "no gradient" / "no input".
_EMPTY = np.zeros((0,), dtype=np.float32)
_EMPTY.flags.writeable = False


def _spot_check(request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest) -> tuple[str, ...]:
    """The VNodes spot-checked at this position (a Forward's; a Backward names none)."""
    return tuple(request.spot_check) if isinstance(request, vnode_pb2.ForwardRequest) else ()


def _position(request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest) -> vnode.Position:
    """The message's position; a part of a step cut into micro-batches is a position of its
    own (`agent.vnode`, "Micro-batches")."""
    if request.WhichOneof("position") != "step":
        return ("request", request.request_id)
    if request.micro_batches > 1:
        return ("step", request.step, request.micro)
    return ("step", request.step)


def micro_problem(*, training: bool, micro: int, micro_batches: int) -> str | None:
    """Why a message's micro-batch fields are invalid (vnode.proto), or None."""
    if micro_batches > vnode.MAX_MICRO_BATCHES:
        return f"micro_batches: {micro_batches} is over the limit of {vnode.MAX_MICRO_BATCHES}"
    if micro_batches > 1 and not training:
        return "micro_batches: an inference request (request_id) is not cut into parts"
    if micro >= max(1, micro_batches):
        return f"micro: {micro} is not a part of a step cut into {max(1, micro_batches)}"
    return None


def _slot(instance: vnode.Instance) -> Slot:
    return (instance.network, instance.vnode, instance.replica)


def _check_fields(request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest) -> None:
    which = request.WhichOneof("position")
    if which is None or (which == "request_id" and not request.request_id):
        raise _Refusal("Invalid", "position: set step (training) or request_id (inference)")
    problem = micro_problem(
        training=which == "step", micro=request.micro, micro_batches=request.micro_batches
    )
    if problem is not None:
        raise _Refusal("Invalid", problem)
    for name in ("network", "target_vnode", "sender_vnode"):
        if not getattr(request, name):
            raise _Refusal("Invalid", f"{name}: required")


M = TypeVar("M", bound=pb_message.Message)


def _parsed(body: bytes, kind: type[M]) -> M:
    try:
        return kind.FromString(body)
    except Exception as exc:  # DecodeError, recursion limits, bad UTF-8: hostile bytes
        raise _Refusal(
            "Invalid", f"request is not a valid {kind.DESCRIPTOR.full_name}: {exc}"
        ) from None


def _neighbours(a: pnode_pb2.Assignment) -> dict[str, tuple[str, dict[str, Any]]]:
    found: dict[str, tuple[str, dict[str, Any]]] = {}
    for name, kind in a.neighbour_kinds.items():
        try:
            params = json.loads(a.neighbour_params_json.get(name, b"{}") or b"{}")
        except ValueError:
            params = {}
        found[name] = (kind, params if isinstance(params, dict) else {})
    return found


async def _abort(context: Context, exc: Exception) -> NoReturn:
    if isinstance(exc, blobs.BlobError):
        reason = {"integrity": "Checksum", "invalid": "Invalid"}.get(exc.kind, "BlobStore")
    else:
        reason = getattr(exc, "reason", "Invalid")
    details = common_pb2.ErrorDetails(reason=reason).SerializeToString()
    context.set_trailing_metadata(((DETAILS_KEY, details),))
    await context.abort(_code(reason), str(exc))
    raise AssertionError("unreachable: abort raises")


def _code(reason: str) -> grpc.StatusCode:
    """The status code a refusal of `reason` is answered with, unary or streamed."""
    return _CODES.get(reason, grpc.StatusCode.INVALID_ARGUMENT)


def _field(kind: kinds.Kind) -> str:
    """The array a source reads from its data (its params.field; "" for a .npy)."""
    field = kind.params.get("field")
    return field if isinstance(field, str) else ""


def runtime_kinds(
    *, workdir: Path, cache_dir: Path | None, datasets: dict[str, str]
) -> KindFactory:
    """Build kinds with `agent.runtime`; data refs resolve through one `data.Sources` (a data
    set this machine declared with `--dataset NAME=URL` reads the local copy instead of the
    ref's URL; relative file:// URLs resolve against `workdir`), so the VNodes, jobs and
    descriptions reading one data set share one read of it."""
    sources = data.Sources(workdir=workdir, cache_dir=cache_dir, datasets=datasets)

    def make(a: pnode_pb2.Assignment) -> kinds.Kind:
        try:
            params = json.loads(a.params_json or b"{}")
        except ValueError as exc:
            raise kinds.KindError(f"params: not JSON: {exc}") from None
        if not isinstance(params, dict):
            raise kinds.KindError(f"params: {params!r} must be a JSON object")
        source = sources.get(a.data.url, a.data.dataset) if a.data.url else None
        return kinds.kind_class(a.kind)(params, data=source)

    return make
