"""Where the data plane answers the driver: the inbox of `__driver__`.

The orchestrator replica that drives a run is, to the agents, one more VNode named
`__driver__` at the run's `reply_to` address: sinks Forward their outputs to it and sources
send it an (empty) Backward once a step's backward pass has reached them. This module
receives those messages (from `controller.services.driver_inbox_service`, the VNodeService
that hosts only `__driver__`, which has verified the sender's signature, or over mutual TLS
its client certificate, leaving the signature to `prove`) and hands them to
the run waiting for them, by (job, attempt, position). Before any decoding, check or strike
(`Receiver`): the signer must be the PNode that hosts the sending slot at the epoch it
claims (PERMISSION_DENIED, reason NotSender, otherwise), and a run must wait for the (job,
attempt, position); so a stranger, or a PNode speaking for a slot it does not hold, can
neither strike anyone nor cost more than a signature check. Then it checks every message as
an agent would (tensor size and checksum), so a stale or corrupted delivery is refused here,
never counted by the driver. Refusals are `controller.errors`.

It waits for every replica of each sink (and, training, of each source). A sink's
replicas' outputs are compared (`api.quorum`): the majority's is the sink's output, each
PNode outside it is struck (check "quorum"), and no majority fails the position as a
dispute, for which the run requests a tiebreaker replica (`controller.trust.tiebreak`).
Agents decide the same way on what they receive and report to ValidationService, which
tells the inbox (`strike`, `fail(disputed=...)`), so a run knows of every disagreement.

Sink outputs also pass the result checks of their kind (`api.checks`) here, the one place
they run on trusted ground: a failed check is refused InvalidArgument (reason CheckFailed,
naming the check), struck against the PNode that produced it (`controller.trust.book`), and the
waiting run rolls back at once (`Mailbox.failed`) — unless the sink has replicas at this
position: then it is one result that agrees with no other, and the comparison decides.
Agents' reports of checks failed on what they received fail the position too
(`controller.services.validation_service` calls `Inbox.fail`).

A VNode of the network that cannot compute a position (its kind raised: an input width
that differs from its trained weights, a plugin kind's error) says so with a message whose
`compute_failure` is set (vnode.proto), from any VNode, sink or not. Its sender slot is
checked like any other's, and it fails the position at once with the agent's message
(`Mailbox.compute_failed`): a training step rolls back with that reason, an inference ends
with it, instead of either waiting out its deadline.

A message nobody waits for is answered by what it is: a repeat of one a finished step
already took is a duplicate (the sender's retry after a lost response); anything else
belongs to a run that is over, superseded or elsewhere, and is refused FailedPrecondition
with reason StaleAttempt, which agents take as final (retrying cannot make a run wait).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import numpy as np

from api import checks, identity, messages, quorum, tensors
from api.dcnr.v1 import vnode_pb2
from api.resources import allocation
from controller import errors as faults
from controller.jobs import driver_mailbox
from controller.runtime import clock as clock_mod
from controller.runtime import signal as signal_mod
from controller.state import view as view_mod
from controller.trust import book as trust

DRIVER = "__driver__"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 2**20
#: The reasons a result is refused for the work it claims (`Receiver`): exported as 0 from the
#: start by `dcnr_driver_results_refused_total`, so an alert sees a series before the first.
#: Malformed messages are refused with their error class's own reason as well; messages that
#: prove no identity with the verifier's (`api.identity.VERIFY_REASONS`), and those signed
#: by another PNode than the sending slot's with NotSender.
REFUSALS = ("StaleEpoch", "StaleAttempt", "CheckFailed", "NotSender", *identity.VERIFY_REASONS)

Position = driver_mailbox.Position
Key = tuple[str, int, Position]


Result = driver_mailbox.Result
Mailbox = driver_mailbox.Mailbox
comparable = driver_mailbox.comparable


def _counts(names: Iterable[str] | Mapping[str, int]) -> dict[str, int]:
    if isinstance(names, Mapping):
        return {name: int(n) for name, n in names.items()}
    return dict.fromkeys(names, 1)


class Inbox:
    """The routing table between the VNodeService handlers and the runs on this replica."""

    def __init__(
        self,
        *,
        clock: clock_mod.Clock,
        book: trust.TrustBook | None = None,
        on_disagreed: Callable[[int], None] | None = None,
    ) -> None:
        self._clock = clock
        self._boxes: dict[Key, Mailbox] = {}
        #: job → the newest attempt a run of it opened a mailbox for.
        self._attempts: dict[str, int] = {}
        #: job → (attempt, last step closed), to recognise late duplicates.
        self._closed: dict[str, tuple[int, int]] = {}
        #: job → disagreements seen (struck replicas, disputes), to know whether a checkpoint
        #: interval was clean (see `disagreements`).
        self._disagreements: dict[str, int] = {}
        #: Where losers of a comparison are struck (None: trust is not tracked).
        self.book = book
        #: Called with the number of results that disagreed (metrics).
        self.on_disagreed = on_disagreed

    def open(
        self,
        *,
        job: str,
        network: str,
        attempt: int,
        position: Position,
        sinks: Iterable[str] | Mapping[str, int],
        sources: Iterable[str] | Mapping[str, int] = (),
        changed: signal_mod.Signal | None = None,
    ) -> Mailbox:
        """Open before sending anything for the position, so no reply can arrive first.
        `sinks`/`sources`: names (one replica each) or name → replicas to wait for.
        `sources` empty: an inference, which has no backward pass. `changed`: the signal
        bumped on every arrival (the parts of one step share one); None: a new one."""
        box = Mailbox(
            job,
            network,
            attempt,
            position,
            _counts(sinks),
            _counts(sources),
            changed=changed or signal_mod.Signal(self._clock),
        )
        self._boxes[(job, attempt, position)] = box
        self._attempts[job] = max(attempt, self._attempts.get(job, attempt))
        return box

    def close(self, box: Mailbox) -> None:
        self._boxes.pop((box.job, box.attempt, box.position), None)
        step = _step_of(box.position)
        if step is not None and box.complete:
            self._closed[box.job] = (box.attempt, step)

    def forget(self, job: str) -> None:
        """The run of `job` on this replica ended."""
        for key in [k for k in self._boxes if k[0] == job]:
            del self._boxes[key]
        self._attempts.pop(job, None)
        self._closed.pop(job, None)
        self._disagreements.pop(job, None)

    def fail(self, job: str, position: Position, why: str, *, disputed: str | None = None) -> bool:
        """Mark the open mailbox of `job` at `position` (any attempt) failed; False if none.
        `disputed`: the VNode whose replicas disagreed with no majority (an agent's report),
        so the run knows a tiebreaker was requested. A step (int) names every part of it."""
        found = False
        for (j, _, p), box in list(self._boxes.items()):
            if j == job and _within(p, position) and box.failed is None:
                box.fail(why, disputed=disputed)
                found = True
        if found and disputed is not None:
            self.disagreed(job)
        return found

    def strike(self, job: str, position: Position, pnode: str) -> bool:
        """An agent reported that `pnode`'s result at `position` lost a comparison (it is
        struck elsewhere): the run gives it no credit for the position, and the checkpoint
        interval is not clean. False if no mailbox of the job is open there. A step (int)
        names every part of it."""
        found = False
        for (j, _, p), box in list(self._boxes.items()):
            if j == job and _within(p, position):
                box.struck.add(pnode)
                found = True
        self.disagreed(job)
        return found

    def disagreed(self, job: str, count: int = 1) -> None:
        if job in self._attempts:  # a run lives here (late reports of a finished one: no)
            self._disagreements[job] = self._disagreements.get(job, 0) + count

    def refuse(self, request: vnode_pb2.ForwardRequest, producer: str, why: str) -> None:
        """A sink's output failed its checks (its PNode is struck already). Alone at its
        sink, it fails the position; among replicas it is filed as a result that agrees
        with nothing, so the others' majority still decides (or a tiebreaker is needed)."""
        position = _position(request)
        box = self._boxes.get((request.job, request.attempt, position))
        sender, replica = request.sender_vnode, request.sender_replica
        if box is None or box.sinks.get(sender, 0) < 2 or replica >= box.sinks[sender]:
            self.fail(request.job, position, why)
            return
        refused = Result(producer, request.tensor, np.zeros(0), refused=True)
        if self._file(box, sender, replica, refused):
            self.disagreed(box.job)
            box.changed.bump()

    def disagreements(self, job: str) -> int:
        """Disagreements seen for `job` so far (monotonic while its run lives)."""
        return self._disagreements.get(job, 0)

    def deliver(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        forward: bool,
        producer: str = "",
        array: np.ndarray[Any, Any] | None = None,
    ) -> bool:
        """File a checked message (`array`: its decoded tensor; `producer`: the PNode of its
        sender's slot); True when it is a duplicate. Raises `controller.errors`."""
        position, box = self._box_of(request)
        if box is None:
            return self._unexpected(request, position)
        sender, replica = request.sender_vnode, request.sender_replica
        expected = box.sinks if forward else box.sources
        if sender not in expected:
            if forward:
                raise faults.FieldInvalid(
                    "sender_vnode",
                    sender,
                    f"Forward to {DRIVER} comes from a sink: {_names(box.sinks)}",
                )
            raise faults.FieldInvalid(
                "sender_vnode",
                sender,
                f"Backward to {DRIVER} comes from a source of a training step: "
                f"{_names(box.sources)}",
            )
        if replica >= expected[sender]:
            raise faults.FieldInvalid(
                "sender_replica",
                replica,
                f"{sender} takes part with replicas 0..{expected[sender] - 1} at this position",
            )
        if forward:
            if replica in box.results.get(sender, {}):
                return True
            value = array if array is not None else tensors.decode(request.tensor)
            filed = Result(producer, request.tensor, value, epoch=request.sender_epoch)
            self._file(box, sender, replica, filed)
        else:
            if (sender, replica) in box.done:
                return True
            box.done.add((sender, replica))
        box.changed.bump()
        return False

    def replicated(self, request: vnode_pb2.ForwardRequest) -> bool:
        """Whether the run waiting for this sink output compares it with other replicas'."""
        _position, box = self._box_of(request)
        return box is not None and box.sinks.get(request.sender_vnode, 0) > 1

    def expecting(self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest) -> bool:
        """Whether a run waits for this message: True, or False for a late duplicate of one
        a closed step took (answer it so, with no more work); raises `controller.errors` as
        `deliver` would for a message nobody waits for. Cheap: no decoding."""
        position, box = self._box_of(request)
        if box is None:
            return not self._unexpected(request, position)
        return True

    def _box_of(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest
    ) -> tuple[Position, Mailbox | None]:
        """The message's position and the mailbox open for it (None: nobody waits there);
        raises `controller.errors` for a message that names no position or another
        network than the run's."""
        if request.WhichOneof("position") is None:
            raise faults.FieldInvalid("position", None, "one of step or request_id must be set")
        position = _position(request)
        box = self._boxes.get((request.job, request.attempt, position))
        if box is not None and request.network != box.network:
            raise faults.FieldInvalid(
                "network", request.network, f"job {box.job!r} runs {box.network!r}"
            )
        return position, box

    def compute_failed(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, *, producer: str
    ) -> bool:
        """File a VNode's report that it could not compute the position (`producer`: the
        PNode of its sender slot, checked current); True when the position had one already.
        Raises `controller.errors` for a position nobody waits for, as `deliver` does."""
        position, box = self._box_of(request)
        if box is None:
            return self._unexpected(request, position)
        why = (
            f"vnode {request.sender_vnode!r} replica {request.sender_replica} on pnode "
            f"{producer!r}: {messages.clip(request.compute_failure)}"
        )
        return not box.compute_fail(why)

    def _file(self, box: Mailbox, sink: str, replica: int, result: Result) -> bool:
        """File a replica's output of a sink (False: one was there already), and decide
        once every replica's has arrived."""
        arrived = box.results.setdefault(sink, {})
        if replica in arrived:
            return False
        arrived[replica] = result
        if len(arrived) == box.sinks[sink]:
            self._decided(box, sink, box.decide(sink))
        return True

    def _decided(self, box: Mailbox, sink: str, decision: quorum.Decision) -> None:
        if decision.verdict is quorum.Verdict.DISPUTED:
            self.disagreed(box.job)
            if self.on_disagreed is not None:
                self.on_disagreed(len(box.results[sink]))
            return
        if not decision.losers:
            return
        self.disagreed(box.job, len(decision.losers))
        if self.on_disagreed is not None:
            self.on_disagreed(len(decision.losers))
        if self.book is None:
            return
        for loser in decision.losers:
            result = box.results[sink][driver_mailbox.index(loser)]
            self.book.record(
                result.pnode,
                trust.Outcome(
                    valid=False,
                    job=box.job,
                    vnode=sink,
                    check="quorum",
                    message=f"output of {sink} replica {loser} at {box.position!r} "
                    f"disagrees with the majority of {box.sinks[sink]} replicas",
                ),
            )

    def _unexpected(
        self, request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest, position: Position
    ) -> bool:
        current = self._attempts.get(request.job)
        if current is not None and request.attempt < current:
            raise faults.FailedPrecondition(
                f"attempt: {request.attempt} is stale; job {request.job!r} runs attempt {current}",
                reason="StaleAttempt",
            )
        closed = self._closed.get(request.job)
        asked = _step_of(position)
        if closed is not None and asked is not None:
            attempt, step = closed
            if request.attempt == attempt and asked <= step:
                return True
        raise faults.FailedPrecondition(
            f"no run on this orchestrator waits for job {request.job!r} position {position!r} "
            f"attempt {request.attempt} (it ended, or moved to another replica)",
            reason="StaleAttempt",
        )


def _position(request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest) -> Position:
    if request.WhichOneof("position") != "step":
        return request.request_id
    if request.micro_batches > 1:
        return (request.step, request.micro)
    return request.step


def _step_of(position: Position) -> int | None:
    """The training step of a position (None: an inference request)."""
    if isinstance(position, tuple):
        return position[0]
    return position if isinstance(position, int) else None


def _within(position: Position, named: Position) -> bool:
    """Whether `position` is `named`, or a part of the step `named`."""
    return position == named or (
        isinstance(position, tuple) and isinstance(named, int) and position[0] == named
    )


def _names(names: Iterable[str]) -> str:
    return ", ".join(sorted(names)) or "(none)"


class Receiver:
    """Checks each message sent to `__driver__` as an agent would, then files it in the
    inbox: the target, the tensor's size and checksum, the sender slot's epoch, and a
    sink's output against its kind's checks (a failure strikes its PNode)."""

    def __init__(
        self,
        *,
        inbox: Inbox,
        view: view_mod.View,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        book: trust.TrustBook | None = None,
        on_checked: Callable[[bool], None] | None = None,
        on_refused: Callable[[str], None] | None = None,
    ) -> None:
        """`on_refused(reason)`: every message refused (a stale or unknown sender slot, a
        position nobody waits for, a failed check...), so a flood of results for work the
        sender was never assigned shows in the metrics."""
        self._inbox = inbox
        self._on_refused = on_refused
        self._view = view
        self._max_bytes = max_message_bytes
        self._book = book
        self._on_checked = on_checked

    def receive(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        forward: bool,
        sender: identity.Identity,
        prove: Callable[[], None] | None = None,
    ) -> bool:
        """True when the message is a duplicate; raises `controller.errors` to refuse it.
        `sender`: the identity that sent it (its signature verified by the service, or its
        client certificate proven by mutual TLS). `prove`: verifies the signature not
        verified yet (None: it was), raising `controller.errors.Unauthenticated`; called
        before the message can become evidence (a strike, a comparison of replicas)."""
        try:
            return self._receive_checked(request, forward=forward, sender=sender, prove=prove)
        except faults.ControllerError as refused:
            if self._on_refused is not None:
                self._on_refused(refused.reason)
            raise

    def _receive_checked(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        *,
        forward: bool,
        sender: identity.Identity,
        prove: Callable[[], None] | None,
    ) -> bool:
        if request.target_vnode != DRIVER:
            raise not_hosted(request.target_vnode)
        current = self._sender_slot(request, sender)
        if not self._inbox.expecting(request):
            return True  # a late duplicate: nothing to check or file
        if request.compute_failure:  # no result: nothing to decode or check
            return self._inbox.compute_failed(request, producer=current.spec.pnode)
        size = len(request.tensor.data)
        if size > self._max_bytes:
            raise faults.ResourceExhausted(
                f"tensor.data: {size} bytes exceeds the limit of {self._max_bytes}"
            )
        try:
            array = tensors.decode(request.tensor, max_bytes=self._max_bytes)
        except tensors.TensorError as exc:
            if exc.reason == "checksum":
                raise faults.DataLoss(f"tensor checksum mismatch: {exc}") from None
            raise faults.InvalidArgument(str(exc)) from None
        if isinstance(request, vnode_pb2.ForwardRequest):
            if prove is not None and self._inbox.replicated(request):
                prove()  # it will be compared: a loser is struck on its own signed words
            self._check(request, array, current.spec.pnode, prove)
        return self._inbox.deliver(
            request, forward=forward, producer=current.spec.pnode, array=array
        )

    def _sender_slot(
        self,
        request: vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest,
        sender: identity.Identity,
    ) -> allocation.Allocation:
        """The sender's allocation, if it holds the slot at the epoch it claims (only the
        replica currently in a slot may speak for it) and `sender` is its PNode."""
        slot = allocation.slot_name(request.network, request.sender_vnode, request.sender_replica)
        current = self._view.allocations.get(slot)
        if current is None or current.spec.epoch != request.sender_epoch:
            held = "no allocation" if current is None else f"epoch {current.spec.epoch}"
            raise faults.FailedPrecondition(
                f"sender_epoch: {request.sender_epoch} is not the current epoch of slot "
                f"{slot!r} ({held})",
                reason="StaleEpoch",
            )
        if sender.kind != "pnode" or sender.name != current.spec.pnode:
            raise faults.PermissionDenied(
                f"signer: {sender.uri} does not host slot {slot!r} at epoch "
                f"{request.sender_epoch}; only its PNode may send its results",
                reason="NotSender",
            )
        return current

    def _check(
        self,
        request: vnode_pb2.ForwardRequest,
        array: Any,
        producer: str,
        prove: Callable[[], None] | None = None,
    ) -> None:
        """A sink's output must pass its kind's checks; a failure strikes its PNode, once
        its signature verifies (`prove`: refused Unauthenticated otherwise, no strike)."""
        net = self._view.networks.get(request.network)
        spec = net.vnode(request.sender_vnode) if net is not None else None
        if spec is None:
            return  # deliver() refuses a sender that is not a sink
        training = request.WhichOneof("position") == "step"
        try:
            checks.check_forward(spec.kind, spec.params, array, training=training)
        except checks.CheckFailed as failed:
            if prove is not None:
                prove()
            if self._on_checked is not None:
                self._on_checked(False)
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
            self._inbox.refuse(request, producer, why)
            raise faults.InvalidArgument(
                f"tensor: output of {request.sender_vnode!r} refused: {failed}",
                reason="CheckFailed",
            ) from None
        if self._on_checked is not None:
            self._on_checked(True)


def not_hosted(vnode: str) -> faults.NotFound:
    return faults.NotFound(
        f"target_vnode: {vnode!r} is not hosted here; this orchestrator only hosts {DRIVER}"
    )


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
