"""Where the data plane answers the driver: a VNodeService hosting only `__driver__`.

The orchestrator replica that drives a run is, to the agents, one more VNode named
`__driver__` at the run's `reply_to` address: sinks Forward their outputs to it and sources
send it an (empty) Backward once a step's backward pass has reached them. This module
receives those messages and hands them to the run waiting for them, by (job, attempt,
position). It checks every message as an agent would (tensor size and checksum, the
sender's allocation epoch), so a stale or corrupted delivery is refused here, never
counted by the driver.

Sink outputs also pass the result checks of their kind (`api.checks`) here, the one place
they run on trusted ground: a failed check is refused INVALID_ARGUMENT (reason CheckFailed,
naming the check), struck against the PNode that produced it (`controller.trust`), and the
waiting run rolls back at once (`Mailbox.failed`). So do agents' reports of checks failed
on what they received (`controller.validation_service` calls `Inbox.fail`).

A message nobody waits for is answered by what it is: a repeat of one a finished step
already took is a duplicate (the sender's retry after a lost response); anything else
belongs to a run that is over, superseded or elsewhere, and is refused FAILED_PRECONDITION
with reason StaleAttempt, which agents take as final (retrying cannot make a run wait).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import grpc
from grpc import aio

from api import checks, tensors
from api.dcnr.v1 import common_pb2, vnode_pb2, vnode_pb2_grpc
from api.resources import allocation
from controller import clock as clock_mod
from controller import rpc, trust
from controller import view as view_mod

DRIVER = "__driver__"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20

Position = int | str
Key = tuple[str, int, Position]


@dataclasses.dataclass(eq=False)
class Mailbox:
    """What one position of one run waits for: every sink's Forward and, when training,
    every source's Backward."""

    job: str
    network: str
    attempt: int
    position: Position
    sinks: frozenset[str]
    sources: frozenset[str]
    outputs: dict[str, common_pb2.Tensor] = dataclasses.field(default_factory=dict)
    done: set[str] = dataclasses.field(default_factory=set)
    #: Why the position cannot complete (a result failed a check): the run rolls back.
    failed: str | None = None
    changed: view_mod.Signal = dataclasses.field(default_factory=view_mod.Signal)

    @property
    def complete(self) -> bool:
        return len(self.outputs) == len(self.sinks) and len(self.done) == len(self.sources)

    def missing(self) -> list[str]:
        """What has not arrived, for timeout messages: "loss (forward)", "x (backward)"."""
        return [f"{s} (forward)" for s in sorted(self.sinks - self.outputs.keys())] + [
            f"{s} (backward)" for s in sorted(self.sources - self.done)
        ]


class Inbox:
    """The routing table between the VNodeService handlers and the runs on this replica."""

    def __init__(self) -> None:
        self._boxes: dict[Key, Mailbox] = {}
        #: job → the newest attempt a run of it opened a mailbox for.
        self._attempts: dict[str, int] = {}
        #: job → (attempt, last step closed), to recognise late duplicates.
        self._closed: dict[str, tuple[int, int]] = {}

    def open(
        self,
        *,
        job: str,
        network: str,
        attempt: int,
        position: Position,
        sinks: Iterable[str],
        sources: Iterable[str] = (),
    ) -> Mailbox:
        """Open before sending anything for the position, so no reply can arrive first.
        `sources` empty: an inference, which has no backward pass."""
        box = Mailbox(job, network, attempt, position, frozenset(sinks), frozenset(sources))
        self._boxes[(job, attempt, position)] = box
        self._attempts[job] = max(attempt, self._attempts.get(job, attempt))
        return box

    def close(self, box: Mailbox) -> None:
        self._boxes.pop((box.job, box.attempt, box.position), None)
        if isinstance(box.position, int) and box.complete:
            self._closed[box.job] = (box.attempt, box.position)

    def forget(self, job: str) -> None:
        """The run of `job` on this replica ended."""
        for key in [k for k in self._boxes if k[0] == job]:
            del self._boxes[key]
        self._attempts.pop(job, None)
        self._closed.pop(job, None)

    def fail(self, job: str, position: Position, why: str) -> bool:
        """Mark the open mailbox of `job` at `position` (any attempt) failed; False if none."""
        found = False
        for (j, _, p), box in list(self._boxes.items()):
            if j == job and p == position and box.failed is None:
                box.failed = why
                box.changed.bump()
                found = True
        return found

    def deliver(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        forward: bool,
    ) -> bool:
        """File a checked message; True when it is a duplicate. Raises RpcFailure."""
        which = request.WhichOneof("position")
        if which is None:
            raise rpc.invalid("position", None, "one of step or request_id must be set")
        position: Position = request.step if which == "step" else request.request_id
        box = self._boxes.get((request.job, request.attempt, position))
        if box is None:
            return self._unexpected(request, position)
        if request.network != box.network:
            raise rpc.invalid("network", request.network, f"job {box.job!r} runs {box.network!r}")
        sender = request.sender_vnode
        if forward:
            if sender not in box.sinks:
                raise rpc.invalid(
                    "sender_vnode",
                    sender,
                    f"Forward to {DRIVER} comes from a sink: {_names(box.sinks)}",
                )
            if sender in box.outputs:
                return True
            box.outputs[sender] = request.tensor
        else:
            if sender not in box.sources:
                raise rpc.invalid(
                    "sender_vnode",
                    sender,
                    f"Backward to {DRIVER} comes from a source of a training step: "
                    f"{_names(box.sources)}",
                )
            if sender in box.done:
                return True
            box.done.add(sender)
        box.changed.bump()
        return False

    def _unexpected(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, position: Position
    ) -> bool:
        current = self._attempts.get(request.job)
        if current is not None and request.attempt < current:
            raise rpc.RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"attempt: {request.attempt} is stale; job {request.job!r} runs attempt {current}",
                reason="StaleAttempt",
            )
        closed = self._closed.get(request.job)
        if closed is not None and isinstance(position, int):
            attempt, step = closed
            if request.attempt == attempt and position <= step:
                return True
        raise rpc.RpcFailure(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"no run on this orchestrator waits for job {request.job!r} position {position!r} "
            f"attempt {request.attempt} (it ended, or moved to another replica)",
            reason="StaleAttempt",
        )


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


class DriverInboxService(vnode_pb2_grpc.VNodeServiceServicer):
    """VNodeService as the orchestrator serves it: for `__driver__` only."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        view: view_mod.View,
        replica_id: str,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        book: trust.TrustBook | None = None,
        on_checked: Callable[[bool], None] | None = None,
    ) -> None:
        self._inbox = inbox
        self._view = view
        self._replica_id = replica_id
        self._max_bytes = max_message_bytes
        self._book = book
        self._on_checked = on_checked

    @rpc.handler
    async def Forward(
        self, request: vnode_pb2.ForwardRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.ForwardResponse:
        duplicate = self._receive(request, forward=True)
        return vnode_pb2.ForwardResponse(
            header=rpc.response_header(request.header, self._replica_id), duplicate=duplicate
        )

    @rpc.handler
    async def Backward(
        self, request: vnode_pb2.BackwardRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.BackwardResponse:
        duplicate = self._receive(request, forward=False)
        return vnode_pb2.BackwardResponse(
            header=rpc.response_header(request.header, self._replica_id), duplicate=duplicate
        )

    @rpc.handler
    async def Checkpoint(
        self, request: vnode_pb2.CheckpointRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.CheckpointResponse:
        raise _stateless(request.vnode)

    @rpc.handler
    async def Restore(
        self, request: vnode_pb2.RestoreRequest, context: aio.ServicerContext[Any, Any]
    ) -> vnode_pb2.RestoreResponse:
        raise _stateless(request.vnode)

    def _receive(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, *, forward: bool
    ) -> bool:
        if request.target_vnode != DRIVER:
            raise _not_hosted(request.target_vnode)
        size = len(request.tensor.data)
        if size > self._max_bytes:
            raise rpc.RpcFailure(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"tensor.data: {size} bytes exceeds the limit of {self._max_bytes}",
                reason="TooLarge",
            )
        try:
            array = tensors.decode(request.tensor, max_bytes=self._max_bytes)
        except tensors.TensorError as exc:
            if exc.reason == "checksum":
                raise rpc.RpcFailure(
                    grpc.StatusCode.DATA_LOSS, f"tensor checksum mismatch: {exc}", reason="Checksum"
                ) from None
            raise rpc.RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT, str(exc), reason="FieldInvalid"
            ) from None
        slot = allocation.slot_name(request.network, request.sender_vnode, request.sender_replica)
        current = self._view.allocations.get(slot)
        if current is None or current.spec.epoch != request.sender_epoch:
            held = "no allocation" if current is None else f"epoch {current.spec.epoch}"
            raise rpc.RpcFailure(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"sender_epoch: {request.sender_epoch} is not the current epoch of slot "
                f"{slot!r} ({held})",
                reason="StaleEpoch",
            )
        if isinstance(request, vnode_pb2.ForwardRequest):
            self._check(request, array, current.spec.pnode)
        return self._inbox.deliver(request, forward=forward)

    def _check(self, request: vnode_pb2.ForwardRequest, array: Any, producer: str) -> None:
        """A sink's output must pass its kind's checks; a failure strikes its PNode."""
        net = self._view.networks.get(request.network)
        spec = net.vnode(request.sender_vnode) if net is not None else None
        if spec is None:
            return  # deliver() refuses a sender that is not a sink
        training = request.WhichOneof("position") == "step"
        try:
            checks.check_forward(spec.kind, spec.params, array, training=training)
        except checks.CheckFailed as failed:
            if self._on_checked is not None:
                self._on_checked(False)
            position: Position = request.step if training else request.request_id
            why = f"{request.sender_vnode} on {producer}: {failed}"
            if self._book is not None:
                self._book.record(
                    producer,
                    trust.Outcome(
                        valid=False,
                        job=request.job,
                        vnode=request.sender_vnode,
                        check=failed.check,
                        message=failed.message,
                    ),
                )
            self._inbox.fail(request.job, position, why)
            raise rpc.RpcFailure(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"tensor: output of {request.sender_vnode!r} refused: {failed}",
                reason="CheckFailed",
            ) from None
        if self._on_checked is not None:
            self._on_checked(True)


def _not_hosted(vnode: str) -> rpc.RpcFailure:
    return rpc.RpcFailure(
        grpc.StatusCode.NOT_FOUND,
        f"target_vnode: {vnode!r} is not hosted here; this orchestrator only hosts {DRIVER}",
        reason="NotFound",
    )


def _stateless(vnode: str) -> rpc.RpcFailure:
    if vnode != DRIVER:
        return _not_hosted(vnode)
    return rpc.invalid("vnode", vnode, f"{DRIVER} holds no training state to checkpoint or restore")


async def first_of(
    clock: clock_mod.Clock, waits: Iterable[Awaitable[Any]], *, seconds: float
) -> None:
    """Return when any of `waits` finishes or `seconds` pass on `clock`; cancel the rest."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    tasks.append(asyncio.ensure_future(clock.sleep(max(0.0, seconds))))
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
