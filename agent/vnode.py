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

Attempts are tracked per job: the attempt of job A says nothing about job B (an inference
request under another job id must not be refused because a training run is at attempt 7).

Parameters are initialized lazily, right before the first forward after a fresh Restore
(or after creation, for inference without any Restore), because `init_params` needs the
input shapes and those are known only when the parents' first tensors arrive. The seed is
the last Restore's (0 if none); without a Restore the optimizer is sgd at 0.01.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from agent.runtime import kinds, optim, state

DRIVER = "__driver__"
DEFAULT_OPTIMIZER = ("sgd", 0.01)
#: Finished inference requests remembered to recognise duplicates (training steps need no
#: list: a step at or before the state's step is old by definition).
REMEMBERED_REQUESTS = 1024

Position = tuple[str, int | str]  # ("step", 5) or ("request", "r-1")


class Refused(Exception):
    """A message the instance will not take. `reason` is the ErrorDetails reason:
    StaleEpoch, StaleAttempt, Invalid, NoForward, NotReady."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


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


@dataclass
class _Pending:
    reply_to: str
    inputs: dict[str, np.ndarray] = field(default_factory=dict)
    seen: set[tuple[bool, str, int]] = field(default_factory=set)
    computed: bool = False
    cache: Any = None
    output_shape: tuple[int, ...] = ()
    grads: dict[str, np.ndarray | None] = field(default_factory=dict)
    awaiting_backward: bool = False


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
    ) -> None:
        self.network = network
        self.vnode = vnode
        self.replica = replica
        self.epoch = epoch
        self.kind = kind
        #: Inputs in spec order; a source's single input is what the driver sends.
        self.parents = list(parents) or [DRIVER]
        self._unique_parents = list(dict.fromkeys(self.parents))
        self.children = list(dict.fromkeys(children))
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

    # -- messages ---------------------------------------------------------------------------

    def receive(self, m: Message) -> tuple[bool, list[Outgoing]]:
        """(duplicate, messages to send). Raises Refused, changing nothing."""
        self._check(m.job, m.target_epoch, m.attempt, "target_epoch")
        training = m.position[0] == "step"
        key = (m.job, m.position)
        pending = self._pending.get(key)
        seen = (m.forward, m.sender_vnode, m.sender_replica)
        if pending is not None and seen in pending.seen:
            return True, []
        if pending is None and (
            (training and int(m.position[1]) <= self.step) or key in self._finished_requests
        ):
            return True, []  # an old position, finished (or rolled back) long ago
        if m.forward:
            if m.sender_vnode not in self._unique_parents:
                raise Refused(
                    "Invalid",
                    f"sender_vnode: {m.sender_vnode!r} is not a parent of {self.vnode!r} "
                    f"(parents: {', '.join(self._unique_parents)})",
                )
            if pending is None:
                pending = self._pending[key] = _Pending(reply_to=m.reply_to)
            out = self._forward(pending, m, training)
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
                raise Refused(
                    "NoForward",
                    f"step {m.position[1]}: {self.vnode!r} has no forward pass of that step "
                    "(re-placed or restored since); the driver will roll back",
                )
            out = self._receive_gradient(pending, m)
        pending.seen.add(seen)
        if pending.computed and not pending.awaiting_backward:
            self._finish(key, training)
        return False, out

    def _forward(self, pending: _Pending, m: Message, training: bool) -> list[Outgoing]:
        if pending.computed:  # a second sender replica of the same parent: nothing new
            return []
        pending.inputs[m.sender_vnode] = m.array
        if any(p not in pending.inputs for p in self._unique_parents):
            return []
        inputs = [pending.inputs[p] for p in self.parents]
        try:
            params = self._params([x.shape for x in inputs])
            output, cache = self.kind.forward(inputs, params, training=training)
        except (kinds.KindError, ValueError, FloatingPointError) as exc:
            del pending.inputs[m.sender_vnode]
            raise Refused("Invalid", f"kind {self.kind.name!r} of {self.vnode!r}: {exc}") from None
        pending.computed = True
        pending.inputs = {}
        pending.output_shape = tuple(output.shape)
        out = [
            Outgoing(True, child, m.job, m.position, pending.reply_to, m.attempt, output)
            for child in self.children or [DRIVER]
        ]
        if training:
            pending.cache = cache
            pending.awaiting_backward = True
            if not self.children:  # a sink: backward starts here
                out += self._backward(pending, None, m)
        return out

    def _receive_gradient(self, pending: _Pending, m: Message) -> list[Outgoing]:
        grad = None if m.empty else m.array
        if grad is not None and tuple(grad.shape) != pending.output_shape:
            raise Refused(
                "Invalid",
                f"tensor.shape: gradient {list(grad.shape)} from {m.sender_vnode!r} does not "
                f"match {self.vnode!r}'s output {list(pending.output_shape)}",
            )
        pending.grads[m.sender_vnode] = grad
        if any(c not in pending.grads for c in self.children):
            return []
        try:
            total = kinds.sum_gradients([pending.grads[c] for c in self.children])
        except kinds.KindError as exc:
            del pending.grads[m.sender_vnode]
            raise Refused("Invalid", str(exc)) from None
        return self._backward(pending, total, m)

    def _backward(self, pending: _Pending, grad: np.ndarray | None, m: Message) -> list[Outgoing]:
        assert self.params is not None
        input_grads, param_grads = self.kind.backward(grad, pending.cache, self.params)
        if param_grads:
            if self.optimizer is None:
                self.optimizer = optim.make_optimizer(*DEFAULT_OPTIMIZER)
            self.optimizer.step(self.params, param_grads)
        self.step = max(self.step, int(m.position[1]))
        pending.cache = None
        pending.awaiting_backward = False
        per_parent: dict[str, np.ndarray | None] = dict.fromkeys(self._unique_parents)
        for parent, g in zip(self.parents, input_grads, strict=True):
            if g is not None and parent != DRIVER:
                previous = per_parent[parent]
                per_parent[parent] = g if previous is None else previous + g
        return [
            Outgoing(False, parent, m.job, m.position, pending.reply_to, m.attempt, g)
            for parent, g in per_parent.items()
        ]

    def _finish(self, key: tuple[str, Position], training: bool) -> None:
        """Forget a finished position; keep its key where duplicates must still be known."""
        self._pending.pop(key, None)
        if not training:
            self._finished_requests[key] = None
            while len(self._finished_requests) > REMEMBERED_REQUESTS:
                self._finished_requests.popitem(last=False)

    def _params(self, input_shapes: list[tuple[int, ...]]) -> dict[str, np.ndarray]:
        if self.params is None:
            rng = state.initial_rng(self.network, self.vnode, self.seed)
            self.params = self.kind.init_params(rng, input_shapes)
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
    ) -> int:
        """Adopt a checkpoint (or a fresh start) and the job's attempt; drop everything in
        flight. Returns the step the state now corresponds to."""
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
        self._drop(None)
        self._finished_requests.clear()
        self.optimizer = new_optimizer
        self.seed = seed
        self.params = loaded.params if loaded is not None else None
        self.step = loaded.step if loaded is not None else step
        return self.step
