"""One hosted VNode replica: the forward/backward state machine of the data plane.

Pure bookkeeping and math, no I/O: `receive` takes one decoded message and returns what to
send because of it (`Outgoing`), or raises `Refused`. `agent.dataplane` decodes, serializes
calls per instance with a lock, and sends outside it. So the rules of the protocol
(/tmp/dataplane.md, kept in vnode.proto) are all here and testable without a socket.

Expectations are local: for a position, wait for Forward from every parent (a source's only
parent is the driver), compute, send to every child (a sink to the driver); in training,
wait for one Backward from every child (a sink starts at once), sum the non-empty
gradients, update own params, send one Backward to every parent (empty where no gradient
flows; a source's goes to the driver and means "source done").

Redundancy: every replica of a VNode computes. "From every parent" means from every replica
of it: the results of one parent's replicas are compared (`agent.quorum_inputs`, with
`api.quorum`) and only the accepted one is consumed; computing waits until every parent has
one, and what the comparison found (losers, disputes) is returned for the agent to report.
Outputs go to every replica of each child, gradients to every replica of each parent (the
driver counts as one VNode with one replica). The counts come from the assignment
(`neighbour_replicas`), overridden per job by its last Restore. Under adaptive validation
(inference) a VNode not named in the message's double_check runs on replica 0 alone: it is
sent to, and expected from, replica 0 only. A VNode named in its spot_check is sent to and
expected from every replica too, but only replica 0 computes: it also sends its output to
replica 1, the checker, which proves it against the inputs it received by the kind's
cheaper proof (`Kind.spot_check`, dense: Freivalds') and sends it on as its own result; if
the proof fails, or the kind has none, it sends its own full recomputation instead, so the
children's comparison finds the lie as it would a double check's (a dispute, settled by a
tiebreaker). A position is forgotten once every expected
replica has answered (a result after the majority decided is still compared), or when
`REMEMBERED_REQUESTS` newer ones (or disputed ones) are waiting likewise.

Gradients ahead of their forward pass: with three replicas of a VNode, a child accepts a
step's input once two agree, computes, and sends its gradient to all three, so the third
may get the gradient before it has computed that step itself (its input is on the way, or
it is slow). Such a gradient is held in the position's bookkeeping and applied the moment
the forward pass completes, exactly as if it had come after it. It was authenticated,
attributed and checked on arrival like any other (`agent.dataplane` does that before
`receive`; its signature, as any, is verified when a finding makes it evidence); the
checks that need the forward pass (the gradient's shape against the output) run when it
is applied, and a held gradient that fails them is dropped and returned in
`Received.dropped`, since its sender has long had its answer. Holding is bounded per
instance: at most `MAX_HELD` messages and `MAX_HELD_BYTES` of tensors at once (past
either, the gradient is refused "NoForward" as before, and the step times out into a
rollback), each for at most `HOLD_SECONDS`, and never across attempts (a newer attempt or a
Restore drops them with everything else in flight).

Micro-batches (GPipe-style pipelining, the job's `micro_batches`): the driver cuts a step's
batch into N equal parts, each a position of its own, ("step", s, micro), so a part's forward
may run here while another's backward does, and replicas' results are compared part by
part. A loss (a sink) weighs its part 1/N: it differentiates its mean over the part's rows
with the gradient [1/N, 0] (the losses' chain rule through the loss value), which is the
whole batch's mean loss restricted to those rows, so every gradient on the wire is the one
the whole batch gives those rows (its scale (1/N)/rows is 1/rows of the batch, up to one
rounding), in float32 as in float64. Every part's backward computes its input gradients
with the step's parameters as they were and adds its parameter gradients to the step's sum
(`_Step`); the last of the N applies the optimizer once, to the sum: the whole batch's
gradient, so the weights equal an unpipelined run's to floating-point tolerance (for kinds
whose rows do not interact, which every built-in is; a batch statistic would see the part,
not the batch). The state's step moves only then, so a checkpoint never sees half a step.
A message whose N differs from the step's first is refused "Invalid"; a finished part's
late duplicates are recognised until the step applies. No weight travels in a message: a
liar cannot rescale a loss by editing a copied field, only cut the step otherwise, which
stalls the step into a rollback rather than changing a weight.

Attempts are tracked per job: the attempt of job A says nothing about job B (an inference
request under another job id must not be refused because a training run is at attempt 7).

Parameters are initialized lazily, right before the first forward after a fresh Restore
(or after creation, for inference without any Restore), because `init_params` needs the
input shapes and those are known only when the parents' first tensors arrive. The seed is
the last Restore's (0 if none); without a Restore the optimizer is sgd at 0.01.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np

from agent import quorum_inputs
from agent.runtime import kinds, optim, state
from api.dcnr.v1 import common_pb2

DRIVER = "__driver__"
DEFAULT_OPTIMIZER = ("sgd", 0.01)
#: Finished inference requests remembered to recognise duplicates (training steps need no
#: list: a step at or before the state's step is old by definition).
REMEMBERED_REQUESTS = 1024
#: The replica that checks replica 0's output of a spot-checked VNode (module docstring).
CHECKER = 1
#: Most parts a step may be cut into (the job's micro_batches; vnode.proto).
MAX_MICRO_BATCHES = 64
#: Gradients held for a forward pass still to come (module docstring), per instance: at
#: most this many messages, this many bytes of tensors, each for at most this long.
MAX_HELD = 64
MAX_HELD_BYTES = 32 * 1024 * 1024
HOLD_SECONDS = 60.0

Position = quorum_inputs.Position  # ("step", 5), ("request", "r-1") or ("step", 5, 2)
Finding = quorum_inputs.Finding


class Refused(Exception):
    """A message the instance will not take. `reason` is the ErrorDetails reason:
    StaleEpoch, StaleAttempt, Invalid, NoForward, NotReady."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ComputeFailed(Refused):
    """The kind raised while computing the position (a forward pass, or `forward` False: a
    backward pass). Refused "Invalid" to the sender as before, and unlike the other
    refusals also told to the job's driver (`agent.dataplane`): it is the one error that
    only the agent can find (an input width that differs from the trained weights, a
    plugin kind's error), and the sender is usually another agent, which can only log it."""

    def __init__(self, message: str, *, forward: bool) -> None:
        super().__init__("Invalid", message)
        self.forward = forward


@dataclass(frozen=True)
class Message:
    forward: bool
    job: str
    position: Position
    sender_vnode: str
    sender_replica: int
    target_epoch: int
    attempt: int
    reply_to: str
    array: np.ndarray
    #: The "no gradient" / "no input" marker (shape [0]).
    empty: bool = False
    sender_epoch: int = 0
    adaptive: bool = False
    double_check: tuple[str, ...] = ()
    spot_check: tuple[str, ...] = ()
    #: The request as received with its sender's signature: what a report of it carries.
    evidence: common_pb2.SignedMessage | None = None
    #: Parts the step is cut into (1: none); the part itself is the position's third item.
    micro_batches: int = 1


@dataclass(frozen=True)
class Outgoing:
    forward: bool
    target: str
    job: str
    position: Position
    reply_to: str
    attempt: int
    #: None: the empty tensor.
    array: np.ndarray | None
    target_replica: int = 0
    adaptive: bool = False
    double_check: tuple[str, ...] = ()
    spot_check: tuple[str, ...] = ()
    micro_batches: int = 1


class Received(NamedTuple):
    duplicate: bool
    outgoing: list[Outgoing]
    #: What comparing the replicas' results found, to report (losers, disputes).
    findings: list[Finding]
    #: Why held gradients applied because of this message were dropped instead (to log).
    dropped: tuple[str, ...] = ()
    #: The checker's spot check this message completed: "passed", "failed" (its own
    #: recomputation was sent instead), "recomputed" (the kind has no cheaper proof); "".
    spot: str = ""


@dataclass
class _Pending:
    reply_to: str
    inputs: quorum_inputs.Inputs
    grads: quorum_inputs.Inputs
    adaptive: bool = False
    double_check: tuple[str, ...] = ()
    spot_check: tuple[str, ...] = ()
    seen: set[tuple[bool, str, int]] = field(default_factory=set)
    computed: bool = False
    #: A spot-checked VNode's checker: replica 0's output, to prove (module docstring).
    claim: np.ndarray | None = None
    spot: str = ""
    cache: Any = None
    output_shape: tuple[int, ...] = ()
    awaiting_backward: bool = False
    #: Gradients that came before the forward pass, with when they came (module docstring).
    held: list[tuple[float, Message]] = field(default_factory=list)
    #: Parts of the step (module docstring, "Micro-batches"); 1: the step is one batch.
    micro_batches: int = 1


@dataclass
class _Step:
    """A step cut into parts: the parameter gradients summed so far, and the parts done."""

    parts: int
    grads: dict[str, np.ndarray] = field(default_factory=dict)
    done: set[int] = field(default_factory=set)


@dataclass
class Snapshot:
    params: dict[str, np.ndarray]
    optimizer_state: dict[str, np.ndarray]
    step: int


class Instance:
    def __init__(
        self,
        *,
        network: str,
        vnode: str,
        replica: int,
        epoch: int,
        kind: kinds.Kind,
        parents: list[str],
        children: list[str],
        neighbour_replicas: Mapping[str, int] | None = None,
        clock: Callable[[], float] = time.monotonic,
        spot_rng: Callable[[], np.random.Generator] | None = None,
    ) -> None:
        """`clock`: monotonic seconds, how long a held gradient has waited. `spot_rng`: the
        random vectors of a spot check, drawn when the claim is checked (default: fresh OS
        entropy each time, so a producer cannot predict them)."""
        self.network = network
        self.vnode = vnode
        self.replica = replica
        self.epoch = epoch
        self.kind = kind
        #: Inputs in spec order; a source's single input is what the driver sends.
        self.parents = list(parents) or [DRIVER]
        self._unique_parents = list(dict.fromkeys(self.parents))
        self.children = list(dict.fromkeys(children))
        #: Replica count of each parent and child (the assignment's; absent: 1).
        self.neighbour_replicas: dict[str, int] = dict(neighbour_replicas or {})
        #: Per job: the counts its last Restore named, over `neighbour_replicas`.
        self._job_replicas: dict[str, dict[str, int]] = {}
        #: Per job: the kind its last Restore gave, reading the job's own data (a source
        #: under `train --data`); a job not named computes with `kind`, the assignment's.
        self._job_kinds: dict[str, kinds.Kind] = {}
        self.params: dict[str, np.ndarray] | None = None
        self.optimizer: optim.Optimizer | None = None
        self.seed = 0
        #: The training step the parameters correspond to.
        self.step = 0
        self._attempts: dict[str, int] = {}
        self._pending: dict[tuple[str, Position], _Pending] = {}
        self._finished_requests: collections.OrderedDict[tuple[str, Position], None] = (
            collections.OrderedDict()
        )
        #: Computed positions still expecting late replicas' results, oldest first.
        self._lingering: collections.OrderedDict[tuple[str, Position], None] = (
            collections.OrderedDict()
        )
        self._clock = clock
        self._spot_rng = spot_rng or (lambda: np.random.default_rng(secrets.randbits(128)))
        #: Positions holding gradients for their forward pass, oldest first.
        self._holding: collections.OrderedDict[tuple[str, Position], None] = (
            collections.OrderedDict()
        )
        #: (job, step) → the step's parts' summed gradients, while it is cut into parts.
        self._steps: dict[tuple[str, int], _Step] = {}

    def replicas_of(self, job: str, name: str) -> int:
        """How many replicas of neighbour `name` take part in `job`."""
        if name == DRIVER:
            return 1
        return self._job_replicas.get(job, {}).get(name) or self.neighbour_replicas.get(name) or 1

    def kind_of(self, job: str) -> kinds.Kind:
        """The kind that computes `job`'s positions: its Restore's, else the assignment's."""
        return self._job_kinds.get(job, self.kind)

    def _expected(self, pending: _Pending, job: str, name: str) -> int:
        if pending.adaptive and name not in (*pending.double_check, *pending.spot_check):
            return 1
        return self.replicas_of(job, name)

    def _targets(self, pending: _Pending, job: str, name: str, *, forward: bool) -> range:
        """Gradients go to every replica: training is never adaptive."""
        return range(self._expected(pending, job, name) if forward else self.replicas_of(job, name))

    # -- messages ---------------------------------------------------------------------------

    def receive(self, m: Message) -> Received:
        """What to send and report because of `m`. Raises Refused, changing nothing (but
        the expiry of held gradients, which depends only on the clock)."""
        self._check(m.job, m.target_epoch, m.attempt, "target_epoch")
        self._expire_held()
        training = m.position[0] == "step"
        key = (m.job, m.position)
        pending = self._pending.get(key)
        seen = (m.forward, m.sender_vnode, m.sender_replica)
        if pending is not None and seen in pending.seen:
            return Received(True, [], [])
        if pending is None and (
            (training and int(m.position[1]) <= self.step) or key in self._finished_requests
        ):
            return Received(True, [], [])  # an old position, finished (or rolled back) long ago
        if training:
            self._check_parts(m, pending)
            if pending is None and self._part_done(m):
                return Received(True, [], [])  # a part whose backward is in the step's sum
        if m.forward and m.sender_vnode == self.vnode:
            return self._claimed(key, pending, m)
        if m.forward:
            if m.sender_vnode not in self._unique_parents:
                raise Refused(
                    "Invalid",
                    f"sender_vnode: {m.sender_vnode!r} is not a parent of {self.vnode!r} "
                    f"(parents: {', '.join(self._unique_parents)})",
                )
            if pending is None:
                pending = self._open(key, m)
            out, found = self._forward(pending, m, training)
            dropped = self._release(pending, out, found) if pending.computed else ()
        else:
            if not training:
                raise Refused("Invalid", "position: inference (request_id) has no backward pass")
            if m.sender_vnode not in self.children:
                raise Refused(
                    "Invalid",
                    f"sender_vnode: {m.sender_vnode!r} is not a child of {self.vnode!r} "
                    f"(children: {', '.join(self.children) or 'none'})",
                )
            if pending is None or not pending.computed:
                self._hold(key, pending, m)
                return Received(False, [], [])
            out, found = self._receive_gradient(pending, m)
            dropped = ()
        pending.seen.add(seen)
        if pending.computed and not pending.awaiting_backward:
            self._settle(key, pending, training)
        elif any(f.disputed for f in found):  # may never settle: the driver retries anew
            self._linger(key)
        return Received(False, out, found, dropped, spot=pending.spot if out else "")

    def _open(self, key: tuple[str, Position], m: Message) -> _Pending:
        """A position's state, opened by its first forward message (which names its
        validation: adaptive, double and spot checks)."""
        pending = self._pending[key] = _Pending(
            reply_to=m.reply_to,
            inputs=quorum_inputs.Inputs(m.job, m.position, forward=True),
            grads=quorum_inputs.Inputs(m.job, m.position, forward=False),
            adaptive=m.adaptive,
            double_check=m.double_check,
            spot_check=m.spot_check,
            micro_batches=m.micro_batches,
        )
        return pending

    def _checking(self, pending: _Pending) -> bool:
        """Whether this replica checks replica 0's output at this position instead of
        computing its own (module docstring)."""
        return self.replica == CHECKER and self.vnode in pending.spot_check

    def _claimed(self, key: tuple[str, Position], pending: _Pending | None, m: Message) -> Received:
        """Replica 0's output of a spot-checked request, sent to this checker: proven (and
        passed on) once the inputs are here too."""
        if self.vnode not in m.spot_check or m.sender_replica != 0 or self.replica != CHECKER:
            raise Refused(
                "Invalid",
                f"sender_vnode: {m.sender_vnode!r} is {self.vnode!r} itself; a VNode sends its "
                f"own output only from replica 0 to its checker, replica {CHECKER}, of a "
                "request naming it in spot_check",
            )
        if m.position[0] != "request":
            raise Refused("Invalid", "position: spot checks are for inference requests only")
        if pending is None:
            pending = self._open(key, m)
        pending.claim = m.array
        out: list[Outgoing] = []
        if not pending.computed and pending.inputs.complete(self._unique_parents):
            try:
                out = self._compute(pending, m, training=False)
            except ComputeFailed:
                pending.claim = None
                raise
        pending.seen.add((m.forward, m.sender_vnode, m.sender_replica))
        if pending.computed:
            self._settle(key, pending, False)
        return Received(False, out, [], spot=pending.spot if out else "")

    # -- gradients ahead of their forward pass ---------------------------------------------

    def _hold(self, key: tuple[str, Position], pending: _Pending | None, m: Message) -> None:
        """Keep `m` until the position's forward pass (module docstring), within the caps;
        refused "NoForward" past them."""
        held = [h for k in self._holding for _, h in self._pending[k].held]
        size = sum(h.array.nbytes for h in held) + m.array.nbytes
        if len(held) >= MAX_HELD or size > MAX_HELD_BYTES:
            raise Refused(
                "NoForward",
                f"step {m.position[1]}: {self.vnode!r} has not computed the forward pass of "
                f"that step and already holds {len(held)} early gradients "
                f"(limits: {MAX_HELD} messages, {MAX_HELD_BYTES} bytes); the driver will "
                "roll back",
            )
        if pending is None:
            pending = self._pending[key] = _Pending(
                reply_to=m.reply_to,
                inputs=quorum_inputs.Inputs(m.job, m.position, forward=True),
                grads=quorum_inputs.Inputs(m.job, m.position, forward=False),
                micro_batches=m.micro_batches,
            )
        pending.held.append((self._clock(), m))
        pending.seen.add((m.forward, m.sender_vnode, m.sender_replica))
        self._holding[key] = None

    def _release(
        self, pending: _Pending, out: list[Outgoing], found: list[Finding]
    ) -> tuple[str, ...]:
        """Apply the gradients held for the forward pass just computed, in arrival order,
        adding what they cause to `out` and `found`; returns why any was dropped."""
        if not pending.held:
            return ()
        held, pending.held = pending.held, []
        self._holding.pop((held[0][1].job, held[0][1].position), None)
        dropped = []
        for _, m in held:
            try:
                more, seen = self._receive_gradient(pending, m)
            except Refused as exc:
                dropped.append(
                    f"held gradient of {m.sender_vnode!r} replica {m.sender_replica} for step "
                    f"{m.position[1]} dropped: {exc}"
                )
                continue
            out += more
            found += seen
        return tuple(dropped)

    def _expire_held(self) -> None:
        """Drop gradients held longer than HOLD_SECONDS: their forward pass is not coming
        (the step has long timed out), and a retry of them may be held again."""
        if not self._holding:
            return
        deadline = self._clock() - HOLD_SECONDS
        for key in list(self._holding):
            pending = self._pending[key]
            for _, m in [h for h in pending.held if h[0] <= deadline]:
                pending.seen.discard((m.forward, m.sender_vnode, m.sender_replica))
            pending.held = [h for h in pending.held if h[0] > deadline]
            if not pending.held:
                del self._holding[key]
                if not pending.seen:  # nothing but the expired gradients was ever here
                    del self._pending[key]

    def _forward(
        self, pending: _Pending, m: Message, training: bool
    ) -> tuple[list[Outgoing], list[Finding]]:
        # The inputs as they were, to put back if the compute this result completes fails.
        saved = None if pending.computed else pending.inputs.save(m.sender_vnode)
        expected = self._expected(pending, m.job, m.sender_vnode)
        found = pending.inputs.add(
            m.sender_vnode,
            m.sender_replica,
            m.sender_epoch,
            m.array,
            expected=expected,
            evidence=m.evidence,
        )
        if pending.computed or not pending.inputs.complete(self._unique_parents):
            return [], found
        if self._checking(pending) and pending.claim is None:
            return [], found  # replica 0's output is still on its way
        try:
            return self._compute(pending, m, training=training), found
        except ComputeFailed:
            pending.inputs.load(m.sender_vnode, saved)
            raise

    def _compute(
        self,
        pending: _Pending,
        m: Message,
        *,
        training: bool,
    ) -> list[Outgoing]:
        """The forward pass of a position whose inputs are all here (a checker's: the spot
        check of the claim), and what it sends; raises ComputeFailed, having changed no
        parameter (the caller puts back the inputs it added)."""
        inputs = pending.inputs.arrays(self.parents)
        kind = self.kind_of(m.job)
        try:
            params = self._params(kind, [x.shape for x in inputs])
            output = None
            if self._checking(pending) and pending.claim is not None:
                verdict = kind.spot_check(inputs, params, pending.claim, self._spot_rng())
                passed = verdict is not None and verdict.passed
                pending.spot = "passed" if passed else "recomputed" if verdict is None else "failed"
                output = pending.claim if passed else None
            cache = None
            if output is None:
                output, cache = kind.forward(inputs, params, training=training)
        except (kinds.KindError, ValueError, FloatingPointError) as exc:
            raise ComputeFailed(
                f"kind {kind.name!r} of {self.vnode!r}: {exc}", forward=True
            ) from None
        out = [
            self._outgoing(pending, m, True, child, replica, output)
            for child in self.children or [DRIVER]
            for replica in self._targets(pending, m.job, child, forward=True)
        ]
        if pending.adaptive and self.replica == 0 and self.vnode in pending.spot_check:
            out.append(self._outgoing(pending, m, True, self.vnode, CHECKER, output))
        if training and not self.children:  # a sink: backward starts here
            pending.cache = cache
            # A loss of one part of N weighs 1/N of the step (module docstring).
            parts = pending.micro_batches
            seed = np.array([1.0 / parts, 0.0]) if kind.is_loss and parts > 1 else None
            try:
                out += self._backward(pending, seed, m)
            except ComputeFailed:
                pending.cache = None
                raise
        elif training:
            pending.cache = cache
            pending.awaiting_backward = True
        pending.computed = True
        pending.output_shape = tuple(output.shape)
        return out

    def _receive_gradient(
        self, pending: _Pending, m: Message
    ) -> tuple[list[Outgoing], list[Finding]]:
        grad = None if m.empty else m.array
        if grad is not None and tuple(grad.shape) != pending.output_shape:
            raise Refused(
                "Invalid",
                f"tensor.shape: gradient {list(grad.shape)} from {m.sender_vnode!r} does not "
                f"match {self.vnode!r}'s output {list(pending.output_shape)}",
            )
        saved = pending.grads.save(m.sender_vnode) if pending.awaiting_backward else None
        expected = {c: self.replicas_of(m.job, c) for c in self.children}
        found = pending.grads.add(
            m.sender_vnode,
            m.sender_replica,
            m.sender_epoch,
            quorum_inputs.EMPTY if grad is None else grad,
            expected=expected[m.sender_vnode],
            evidence=m.evidence,
        )
        # Every replica of every child must have answered, not only a majority: a child
        # replica that got no forward (its input went astray while it moved) sends no
        # gradient, and waiting for it stalls the step into a rollback. Updating on the
        # majority would let the step complete with that replica a step behind, to be
        # struck later for an honest result computed on stale state.
        if (
            not pending.awaiting_backward
            or not pending.grads.complete(self.children)
            or not pending.grads.settled(expected)
        ):
            return [], found
        accepted = pending.grads.arrays(self.children)
        try:
            total = kinds.sum_gradients([None if g is quorum_inputs.EMPTY else g for g in accepted])
        except kinds.KindError as exc:
            pending.grads.load(m.sender_vnode, saved)
            raise Refused("Invalid", str(exc)) from None
        try:
            return self._backward(pending, total, m), found
        except ComputeFailed:
            pending.grads.load(m.sender_vnode, saved)
            raise

    def _backward(self, pending: _Pending, grad: np.ndarray | None, m: Message) -> list[Outgoing]:
        """The backward pass; raises ComputeFailed, before any parameter changed."""
        assert self.params is not None
        kind = self.kind_of(m.job)
        try:
            input_grads, param_grads = kind.backward(grad, pending.cache, self.params)
        except (kinds.KindError, ValueError, FloatingPointError) as exc:
            raise ComputeFailed(
                f"kind {kind.name!r} of {self.vnode!r}, backward: {exc}", forward=False
            ) from None
        if pending.micro_batches > 1:
            self._add_part(m, pending.micro_batches, param_grads)
        else:
            self._apply(param_grads, int(m.position[1]))
        pending.cache = None
        pending.awaiting_backward = False
        per_parent: dict[str, np.ndarray | None] = dict.fromkeys(self._unique_parents)
        for parent, g in zip(self.parents, input_grads, strict=True):
            if g is not None and parent != DRIVER:
                previous = per_parent[parent]
                per_parent[parent] = g if previous is None else previous + g
        return [
            self._outgoing(pending, m, False, parent, replica, g)
            for parent, g in per_parent.items()
            for replica in self._targets(pending, m.job, parent, forward=False)
        ]

    def _apply(self, grads: Mapping[str, np.ndarray], step: int) -> None:
        """One optimizer step (none without gradients: optim's docstring), and the state is
        now the step's."""
        assert self.params is not None
        if grads:
            if self.optimizer is None:
                self.optimizer = optim.make_optimizer(*DEFAULT_OPTIMIZER)
            self.optimizer.step(self.params, grads)
        self.step = max(self.step, step)

    def _add_part(self, m: Message, parts: int, grads: Mapping[str, np.ndarray]) -> None:
        """Add a part's parameter gradients to its step's sum; the last part applies it
        (module docstring, "Micro-batches")."""
        step, index = int(m.position[1]), part(m.position)
        summed = self._steps.setdefault((m.job, step), _Step(parts))
        for name, grad in grads.items():
            held = summed.grads.get(name)
            if held is None:
                summed.grads[name] = np.array(grad, dtype=np.float64)
            else:
                held += grad
        summed.done.add(index)
        if len(summed.done) < parts:
            return
        del self._steps[(m.job, step)]
        self._apply(summed.grads, step)

    def _check_parts(self, m: Message, pending: _Pending | None) -> None:
        """Refuse a message that cuts its step otherwise than the step's first did."""
        known = pending.micro_batches if pending is not None else None
        summed = self._steps.get((m.job, int(m.position[1])))
        if known is None and summed is not None:
            known = summed.parts
        if known is not None and known != m.micro_batches:
            raise Refused(
                "Invalid",
                f"micro_batches: {m.micro_batches} differs from the {known} parts step "
                f"{m.position[1]} of job {m.job!r} is cut into here",
            )

    def _part_done(self, m: Message) -> bool:
        summed = self._steps.get((m.job, int(m.position[1])))
        return summed is not None and part(m.position) in summed.done

    def _outgoing(
        self,
        pending: _Pending,
        m: Message,
        forward: bool,
        target: str,
        replica: int,
        array: np.ndarray | None,
    ) -> Outgoing:
        return Outgoing(
            forward,
            target,
            m.job,
            m.position,
            pending.reply_to,
            m.attempt,
            array,
            target_replica=replica,
            adaptive=pending.adaptive,
            double_check=pending.double_check,
            spot_check=pending.spot_check,
            micro_batches=pending.micro_batches,
        )

    def _settle(self, key: tuple[str, Position], pending: _Pending, training: bool) -> None:
        """Finish a computed position, unless late replicas' results are still expected:
        those are compared when they come, so it lingers (a bounded number of them)."""
        job = key[0]
        parents = {p: self._expected(pending, job, p) for p in self._unique_parents}
        children = {c: self.replicas_of(job, c) for c in self.children} if training else {}
        if pending.inputs.settled(parents) and pending.grads.settled(children):
            self._finish(key, training)
        else:
            self._linger(key)

    def _linger(self, key: tuple[str, Position]) -> None:
        self._lingering[key] = None
        while len(self._lingering) > REMEMBERED_REQUESTS:
            oldest, _ = self._lingering.popitem(last=False)
            self._finish(oldest, oldest[1][0] == "step")

    def _finish(self, key: tuple[str, Position], training: bool) -> None:
        """Forget a finished position; keep its key where duplicates must still be known."""
        self._pending.pop(key, None)
        self._lingering.pop(key, None)
        self._holding.pop(key, None)
        if not training:
            self._finished_requests[key] = None
            while len(self._finished_requests) > REMEMBERED_REQUESTS:
                self._finished_requests.popitem(last=False)

    def _params(
        self, kind: kinds.Kind, input_shapes: list[tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        if self.params is None:
            rng = state.initial_rng(self.network, self.vnode, self.seed)
            self.params = kind.init_params(rng, input_shapes)
        return self.params

    def _check(self, job: str, epoch: int, attempt: int, field_name: str) -> None:
        if epoch != self.epoch:
            raise Refused(
                "StaleEpoch",
                f"{field_name}: {epoch} is not the epoch of {self.network}/{self.vnode} replica "
                f"{self.replica} here, which is {self.epoch}; resolve the VNode again",
            )
        current = self._attempts.get(job, 0)
        if attempt < current:
            raise Refused(
                "StaleAttempt",
                f"attempt: {attempt} of job {job!r} is older than the current attempt {current}",
            )
        if attempt > current:  # a newer run of the job: whatever the older one left is moot
            self._attempts[job] = attempt
            self._drop(job)

    def _drop(self, job: str | None) -> None:
        for key in [k for k in self._pending if job is None or k[0] == job]:
            del self._pending[key]
            self._lingering.pop(key, None)
            self._holding.pop(key, None)
        for step in [k for k in self._steps if job is None or k[0] == job]:
            del self._steps[step]

    # -- checkpoint and restore ---------------------------------------------------------------

    def snapshot(self, job: str, step: int, epoch: int, attempt: int) -> Snapshot | None:
        """The state after `step` to checkpoint; None for a stateless kind."""
        self._check(job, epoch, attempt, "epoch")
        if self.step != step:
            raise Refused(
                "NotReady",
                f"step: {self.vnode!r} holds the state after step {self.step}, not {step}",
            )
        if self.params is None:
            raise Refused(
                "NotReady",
                f"step: {self.vnode!r} has no parameters yet (no forward pass since its restore)",
            )
        if not self.params:
            return None
        return Snapshot(
            params={k: v.copy() for k, v in self.params.items()},
            optimizer_state=self.optimizer.state_dict() if self.optimizer else {},
            step=step,
        )

    def restore(
        self,
        *,
        job: str,
        epoch: int,
        attempt: int,
        step: int,
        seed: int,
        optimizer: str,
        learning_rate: float,
        loaded: Snapshot | None,
        neighbour_replicas: Mapping[str, int] | None = None,
        kind: kinds.Kind | None = None,
    ) -> int:
        """Adopt a checkpoint (or a fresh start), the job's attempt, the neighbours'
        replica counts it runs with (named ones override the assignment's for this job) and
        the kind it computes with (a source reading the job's own data; None: the
        assignment's); drop everything in flight. Returns the step the state now
        corresponds to."""
        if epoch != self.epoch:
            raise Refused(
                "StaleEpoch",
                f"epoch: {epoch} is not the epoch of {self.network}/{self.vnode} replica "
                f"{self.replica} here, which is {self.epoch}",
            )
        new_optimizer = optim.make_optimizer(optimizer, learning_rate)
        if loaded is not None:
            new_optimizer.load_state_dict(loaded.optimizer_state)
        self._attempts[job] = attempt
        self._job_replicas[job] = {k: v for k, v in (neighbour_replicas or {}).items() if v}
        if kind is None:
            self._job_kinds.pop(job, None)
        else:
            self._job_kinds[job] = kind
        self._drop(None)
        self._finished_requests.clear()
        self.optimizer = new_optimizer
        self.seed = seed
        self.params = loaded.params if loaded is not None else None
        self.step = loaded.step if loaded is not None else step
        return self.step


def part(position: Position) -> int:
    """The part of its step a training position is (0 when the step is one batch)."""
    return int(position[2]) if len(position) > 2 else 0
