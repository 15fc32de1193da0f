"""Inference through the driver: tensors in at the sources, the sinks' outputs back.

Answered within the call, not as a Job: nothing durable happens, so nothing needs to
survive a restart. The driver moves tensors only; a source the caller gave nothing gets an
empty tensor (a loss's target input, which inference ignores).

Input by data reference: the driver never reads the data. It asks the agent hosting
replica 0 of each source what the data holds (VNodeService.DescribeData, resolved as the
agent resolves any data ref: `--dataset`, then `--workdir`), and sends each source whose
params.field the data holds a message naming the data instead of a tensor; the agent
reads its array there (`_data_sources`). Data that cannot be read, a .npy for several
sources, or data holding no source's field is the caller's mistake (INVALID_ARGUMENT on
data.url).

Redundancy. Under network `validation: none`/`replicas`, every replica of every VNode
computes the request and every result is compared (by the agents that receive them, and
here for the sinks). Under `validation: adaptive` the driver picks the VNodes to
check for this request (`select`: each at the rate `controller.trust.sampling` sets
for the PNode running the VNode's replica 0, from that PNode's own history, with a floor;
a VNode with a tiebreaker is always checked); the others compute on replica 0 alone. A
sampled VNode whose kind has a cheaper proof than recomputation (`api.kinds.spot_checkable`:
dense) and no tiebreaker is spot-checked (ForwardRequest.spot_check: replica 1 proves
replica 0's output and passes it on, `agent.vnode`) as the network's `spotCheck` says:
`always`, `never`, or `auto` (the default) where the proof costs less than recomputing at
this request's shapes (`api.kinds.spot_pays`; shapes unknown, as for a data reference: a
replica). Any other is double-checked (every replica computes), and so is every VNode with
a tiebreaker, whose dispute a spot check cannot settle. A
dispute (no majority) requests a tiebreaker replica, waits until it is live and restored,
and retries under a new request id, within the caller's deadline; a sink's disputed
outputs are then judged by the retry's majority when it settled the same inputs
(`controller.trust.disputes`: the producer of a disputed output outside it is struck for
that lie; `_inputs` says when the inputs are provably the same). So does a result failing
its checks (its PNode is struck, and moves once Bugged): nothing that failed a check is
ever returned. A VNode that could not compute the request (its agent's `compute_failure`,
or a source refusing the input "Invalid") ends the call at once with INVALID_ARGUMENT and
the agent's message: the same input would fail the same way, so there is nothing to retry
or wait for. PNodes whose results were compared and
agreed earn a valid result.

Trained weights. Before each try, every re-placed replica of a trained network is restored
(`model_state.ensure_restored`), and once the answer is in, the epochs it vouched for are
checked against the store: a slot that moved meanwhile may have been reached at its fresh,
never-restored instance, so the answer is thrown away (nothing credited) and the request
is asked again once the view has caught up, within the caller's deadline.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from api import kinds as api_kinds
from api import tensors
from api.dcnr.v1 import common_pb2, vnode_pb2
from api.resources import allocation, pnode
from api.resources import network as net_model
from controller import errors as faults
from controller.jobs import (
    driver,
    driver_inbox,
    driver_mailbox,
    driver_plan,
    model_state,
    vnode_client,
)
from controller.state import view as view_mod
from controller.trust import book as trust
from controller.trust import disputes as disputes_mod
from controller.trust import evidence as evidence_mod
from controller.trust import exposure as exposure_mod
from controller.trust import sampling


@dataclasses.dataclass(frozen=True, slots=True)
class Selection:
    """Which replicas compute one request."""

    adaptive: bool
    double_check: tuple[str, ...]
    #: vnode → replicas taking part in it (1: replica 0 alone, its result only checked;
    #: a spot-checked VNode's checker counts, though it does not recompute).
    computing: dict[str, int]
    #: Sampled VNodes checked by a cheaper proof than a replica's recomputation.
    spot_check: tuple[str, ...] = ()

    @property
    def double_checks(self) -> int:
        """Results recomputed beyond one per VNode: validation's extra full computations."""
        return sum(n - 1 for name, n in self.computing.items() if name not in self.spot_check)

    @property
    def spot_checks(self) -> int:
        """Results proven by a spot check instead of recomputed."""
        return sum(self.computing[name] - 1 for name in self.spot_check)


@dataclasses.dataclass(frozen=True, slots=True)
class Standing:
    """What sampling knows of the PNode running a VNode's replica 0."""

    trust: pnode.Trust
    #: It has a strike in its window, counting those this replica holds unwritten.
    struck: bool = False


def select(
    net: net_model.Network,
    standing: Callable[[str], Standing],
    rng: random.Random,
    *,
    policy: sampling.SamplingPolicy = sampling.DEFAULT,
    shapes: Mapping[str, api_kinds.Shape | None] | None = None,
) -> Selection:
    """The replicas that compute a request. `standing(vnode)`: the PNode running the
    VNode's replica 0, whose rate (`sampling.rate`) decides whether it is checked;
    `shapes`: each VNode's output shape in this request (`api.kinds.inference_shapes`),
    for whether a spot check pays (module docstring)."""
    counts = driver_plan.replica_counts(net)
    if net.spec.validation != "adaptive":
        return Selection(False, (), counts)
    sampled = [
        v
        for v in net.spec.vnodes
        if counts[v.name] > 1
        and (v.name in net.status.tiebreakers or _sampled(standing(v.name), policy, rng))
    ]
    spot = tuple(
        v.name
        for v in sampled
        if counts[v.name] == 2
        and v.name not in net.status.tiebreakers
        and _spot(net.spec.spot_check, v, shapes or {})
    )
    full = tuple(v.name for v in sampled if v.name not in spot)
    computing = {name: (n if name in (*full, *spot) else 1) for name, n in counts.items()}
    return Selection(True, full, computing, spot)


def _spot(
    policy: net_model.SpotCheckPolicy,
    v: net_model.VNodeSpec,
    shapes: Mapping[str, api_kinds.Shape | None],
) -> bool:
    if policy == "never" or not api_kinds.spot_checkable(v.kind):
        return False
    if policy == "always":
        return True
    parent = shapes.get(v.inputs[0]) if len(v.inputs) == 1 else None
    return api_kinds.spot_pays(v.kind, parent, shapes.get(v.name))


def _sampled(found: Standing, policy: sampling.SamplingPolicy, rng: random.Random) -> bool:
    return sampling.should_check(found.trust, policy, rng, struck_unwritten=found.struck)


class _Disputed(Exception):
    def __init__(self, vnode: str, attempt: disputes_mod.Attempt | None = None) -> None:
        super().__init__(vnode)
        self.vnode = vnode
        #: The disputed results of a sink, to judge once a tiebreaker settles the same
        #: inputs (None: not a sink's, or nothing to judge them by).
        self.attempt = attempt


class _Refused(Exception):
    """A result failed its checks (its PNode is struck): retry, nothing unchecked returns."""


class _Moved(Exception):
    """A trained slot moved while the request travelled: the answer may come from a fresh
    instance holding initial weights, so it is not returned."""


async def infer(
    ctx: driver.DriverContext,
    network: str,
    inputs: dict[str, common_pb2.Tensor],
    *,
    seconds: float,
    data: common_pb2.DataRef | None = None,
) -> dict[str, common_pb2.Tensor]:
    """The sinks' outputs for `inputs` (by source), or, given `data`, for each source's array
    of that data, read by the agents hosting the sources."""
    net = ctx.view.networks.get(network)
    if net is None:
        raise faults.NotFound(f"network {network!r} not found")
    sources, _ = driver_plan.topology(net)
    for name in sorted(inputs):
        if name not in sources:
            raise faults.FieldInvalid(
                f"tensors[{name!r}]",
                name,
                f"must name a source VNode of {network!r}: {', '.join(sources)}",
            )
    shapes = _check_shapes(net, inputs)
    failed = driver.not_started(
        ctx.view,
        [allocation.slot_name(network, v.name, r) for v in net.spec.vnodes
         for r in range(net.replicas_of(v))],
    )  # fmt: skip
    if failed:
        raise faults.FailedPrecondition(f"network {network!r} cannot answer: {failed[0]}")
    deadline = ctx.clock.monotonic() + seconds
    rng = random.Random(uuid.uuid4().int)
    refused: str | None = None
    #: Slots were seen on a PNode being marked Bugged: a slot missing is one moving.
    moving = False
    signal = ctx.view.network_signal(network)
    #: Sources whose array of `data` their agents read (None until asked).
    reading: frozenset[str] | None = None
    #: sink → its disputed results, judged once a retry settles it (`_once`).
    judging: dict[str, disputes_mod.Attempt] = {}
    while True:
        seen = signal.value  # read before the state, so no change slips between
        net = ctx.view.networks.get(network) or net
        chosen = select(
            net, lambda vnode: _standing(ctx, network, vnode), rng, shapes=shapes
        )
        missing = _not_ready(ctx, net, chosen)
        held = _on_suspects(ctx, net, chosen)
        if refused is not None and ctx.clock.monotonic() >= deadline:
            raise faults.Unavailable(
                f"inference on {network!r}: a result failed validation ({refused}); "
                "nothing unchecked is returned: retry",
            )
        if missing:
            if (refused is None and not moving) or ctx.clock.monotonic() >= deadline:
                raise faults.Unavailable(
                    f"network {network!r} is not ready: no live replica at "
                    f"{', '.join(missing[:10])}",
                    reason="NotReady",
                )
            await _changed(ctx, network, deadline, seen)  # the refused one's PNode may move
            continue
        if held:  # their PNodes are being marked Bugged: wait for the slots to move
            moving = True
            if ctx.clock.monotonic() >= deadline:
                raise faults.Unavailable(
                    f"inference on {network!r}: {', '.join(held[:10])} did not move off a "
                    f"Bugged PNode within {seconds:g} s; retry",
                )
            await _changed(ctx, network, deadline, seen)
            continue
        try:
            vouched = await model_state.ensure_restored(
                network, store=ctx.store, view=ctx.view, client=ctx.client, deadline=deadline
            )
        except vnode_client.SendFailed as exc:
            raise faults.Unavailable(
                f"network {network!r}: a re-placed VNode could not be restored from its "
                f"trained state: {exc}",
            ) from None
        if data is not None and reading is None:
            reading = await _data_sources(ctx, net, data, deadline=deadline)
        fed = _Fed(inputs, data, reading or frozenset())
        try:
            answer = await _once(
                ctx,
                net,
                fed,
                chosen,
                deadline=deadline,
                seconds=seconds,
                vouched=vouched,
                judging=judging,
            )
            await _retire_tiebreakers(ctx, network)
            return answer
        except _Moved as why:
            if ctx.clock.monotonic() >= deadline:
                raise faults.Unavailable(
                    f"inference on {network!r}: trained VNodes kept moving ({why}); retry",
                ) from None
            await _changed(ctx, network, deadline, seen)
        except _Disputed as dispute:
            if dispute.attempt is not None:
                judging[dispute.vnode] = dispute.attempt
            await ctx.tiebreakers.request(network, dispute.vnode)
            await _wait_for_replicas(ctx, network, dispute.vnode, deadline, seconds)
        except _Refused as why:
            refused = str(why)
            await ctx.clock.sleep(ctx.config.attempt_backoff)


@dataclasses.dataclass(frozen=True, slots=True)
class _Fed:
    """What each source is given: its tensor, or (for `reading`) `data` to read itself."""

    tensors: dict[str, common_pb2.Tensor]
    data: common_pb2.DataRef | None = None
    reading: frozenset[str] = frozenset()


async def _data_sources(
    ctx: driver.DriverContext,
    net: net_model.Network,
    data: common_pb2.DataRef,
    *,
    deadline: float,
) -> frozenset[str]:
    """The sources whose params.field `data` holds, as their agents (replica 0) see it."""
    sources, _ = driver_plan.topology(net)

    def asking(vnode: str) -> Callable[[view_mod.Endpoint], vnode_pb2.DescribeDataRequest]:
        def addressed(endpoint: view_mod.Endpoint) -> vnode_pb2.DescribeDataRequest:
            return vnode_pb2.DescribeDataRequest(
                network=net.name, vnode=vnode, replica=0, epoch=endpoint.epoch, data=data
            )

        return addressed

    try:
        answers = await asyncio.gather(
            *(ctx.client.describe_data(net.name, s, asking(s), deadline=deadline) for s in sources)
        )
    except vnode_client.SendFailed as exc:
        if exc.reason == "DataError":
            raise faults.FieldInvalid("data.url", data.url, str(exc)) from None
        raise faults.Unavailable(f"inference on {net.name!r}: {exc}") from None
    held = {f for a in answers for f in a.fields}
    if held == {""} and len(sources) > 1:
        raise faults.FieldInvalid(
            "data.url",
            data.url,
            f"a .npy holds one array but {net.name!r} has sources {', '.join(sources)}; "
            "use a .npz with an array per source, named by its params.field",
        )
    reading = frozenset(s for s, a in zip(sources, answers, strict=True) if a.has_field)
    if not reading:
        raise faults.FieldInvalid(
            "data.url",
            data.url,
            f"holds {', '.join(sorted(held)) or 'no arrays'}, none named by a source's "
            "params.field",
        )
    return reading


def _check_shapes(
    net: net_model.Network, inputs: dict[str, common_pb2.Tensor]
) -> dict[str, api_kinds.Shape | None]:
    """Refuse at once tensors some VNode would certainly refuse (by its kind's declared
    shapes, `api.kinds`): the agent's refusal would otherwise reach nobody but its log,
    and the caller would wait out the deadline. Returns every VNode's output shape (None:
    unknown)."""
    given = {
        name: None if tensors.is_empty(t) else tuple(int(d) for d in t.shape)
        for name, t in inputs.items()
    }
    graph = [(v.name, v.kind, v.params, v.inputs) for v in net.spec.vnodes]
    try:
        return api_kinds.inference_shapes(graph, given)
    except api_kinds.GraphShapeError as exc:
        shown = ", ".join(f"{n} {list(s) if s is not None else 'empty'}" for n, s in given.items())
        raise faults.InvalidArgument(
            f"tensors: {shown}: does not fit network {net.name!r}: {exc}"
        ) from None


async def _retire_tiebreakers(ctx: driver.DriverContext, network: str) -> None:
    """Without a training run there is no clean checkpoint interval to clear tiebreakers
    after, so inference clears them once none is needed: every replica of each VNode that
    has one runs on a PNode with no strike in its window (the liar was Bugged and its
    slot moved, or its strikes aged out). Until then its VNode stays triple and
    double-checked, which is what a PNode that lied recently should cost."""
    net = ctx.view.networks.get(network)
    if net is None or not net.status.tiebreakers:
        return
    for vnode in net.status.tiebreakers:
        spec = net.vnode(vnode)
        if spec is None:
            continue  # removed from the spec: its slots are being stopped anyway
        for replica in range(net.base_replicas(spec)):
            slot = ctx.view.allocations.get(allocation.slot_name(network, vnode, replica))
            node = ctx.view.pnodes.get(slot.spec.pnode) if slot is not None else None
            if node is None or ctx.suspects.struck(node.name):
                return
    await ctx.tiebreakers.clear(network)


def _standing(ctx: driver.DriverContext, network: str, vnode: str) -> Standing:
    """The trust of the PNode running `vnode`'s replica 0; none known (no slot, no PNode):
    a new PNode's, so it is checked."""
    slot = ctx.view.allocations.get(allocation.slot_name(network, vnode, 0))
    node = ctx.view.pnodes.get(slot.spec.pnode) if slot is not None else None
    if node is None:
        return Standing(pnode.Trust())
    return Standing(node.status.trust, struck=ctx.suspects.struck(node.name))


def _not_ready(ctx: driver.DriverContext, net: net_model.Network, chosen: Selection) -> list[str]:
    return [
        allocation.slot_name(net.name, vnode, r)
        for vnode, n in chosen.computing.items()
        for r in range(n)
        if ctx.client.endpoint(net.name, vnode, r) is None
    ]


def _on_suspects(ctx: driver.DriverContext, net: net_model.Network, chosen: Selection) -> list[str]:
    """Slots the request would use on PNodes that are, or are about to be, Bugged."""
    slots = [
        allocation.slot_name(net.name, vnode, r)
        for vnode, n in chosen.computing.items()
        for r in range(n)
    ]
    suspects = set(ctx.suspects.holding(slots))
    return [
        s
        for s in slots
        if (a := ctx.view.allocations.get(s)) is not None and a.spec.pnode in suspects
    ]


async def _changed(ctx: driver.DriverContext, network: str, deadline: float, seen: int) -> None:
    """Until the network's signal moves past `seen` (read before the state the caller
    judged), the deadline, or `ready_recheck`."""
    remaining = deadline - ctx.clock.monotonic()
    await driver_inbox.first_of(
        ctx.clock,
        [ctx.view.network_signal(network).wait_past(seen)],
        seconds=min(max(remaining, 0.0), ctx.config.ready_recheck),
    )


async def _wait_for_replicas(
    ctx: driver.DriverContext, network: str, vnode: str, deadline: float, seconds: float
) -> None:
    """Until every replica of `vnode` (its tiebreaker included) has a live endpoint."""
    signal = ctx.view.network_signal(network)
    while True:
        seen = signal.value
        net = ctx.view.networks.get(network)
        count = net.replicas_of(vnode) if net is not None else 1
        if all(ctx.client.endpoint(network, vnode, r) is not None for r in range(count)):
            return
        remaining = deadline - ctx.clock.monotonic()
        if remaining <= 0:
            raise faults.DeadlineExceeded(
                f"inference on {network!r}: the replicas of {vnode} disagreed with no "
                f"majority and no tiebreaker replica was live within {seconds:g} s; retry",
            )
        await _changed(ctx, network, deadline, seen)


async def _once(
    ctx: driver.DriverContext,
    net: net_model.Network,
    fed: _Fed,
    chosen: Selection,
    *,
    deadline: float,
    seconds: float,
    vouched: dict[str, int],
    judging: Mapping[str, disputes_mod.Attempt] | None = None,
) -> dict[str, common_pb2.Tensor]:
    """One request: raises _Disputed when a VNode's replicas had no majority, _Moved when a
    slot of `vouched` (slot → the epoch restored with the trained state) moved meanwhile.
    `judging`: sinks' disputed results of earlier tries, judged by this one's majority."""
    network = net.name
    sources, sinks = driver_plan.topology(net)
    request_id = uuid.uuid4().hex
    job = f"infer-{request_id}"
    reply_to = await ctx.reply_to.wait()
    clock = ctx.clock
    box = ctx.results.inbox.open(
        job=job,
        network=network,
        attempt=0,
        position=request_id,
        sinks={s: chosen.computing[s] for s in sinks},
    )
    if ctx.results.metrics is not None:
        ctx.results.metrics.inference_computed(
            primary=len(chosen.computing),
            double_check=chosen.double_checks,
            spot_check=chosen.spot_checks,
        )

    async def one(source: str, replica: int) -> None:
        tensor = fed.tensors[source] if source in fed.tensors else tensors.empty()
        data = fed.data if source in fed.reading else None

        def addressed(endpoint: view_mod.Endpoint) -> vnode_pb2.ForwardRequest:
            return vnode_pb2.ForwardRequest(
                job=job,
                request_id=request_id,
                network=network,
                sender_vnode=driver_inbox.DRIVER,
                target_vnode=source,
                target_replica=replica,
                target_epoch=endpoint.epoch,
                tensor=tensor,
                reply_to=reply_to,
                attempt=0,
                adaptive=chosen.adaptive,
                double_check=chosen.double_check,
                spot_check=chosen.spot_check,
                data=data,
            )

        await ctx.client.forward(network, source, addressed, deadline=deadline, replica=replica)

    sends = asyncio.ensure_future(
        asyncio.gather(*(one(s, r) for s in sources for r in range(chosen.computing[s])))
    )
    try:
        while not (box.complete and sends.done()):
            if box.compute_failed is not None:  # the same input would fail the same way
                raise faults.InvalidArgument(
                    f"inference on {network!r}: {box.compute_failed}", reason="ComputeFailed"
                )
            if box.disputed is not None:
                raise _Disputed(
                    box.disputed, _attempt(ctx, net, fed, chosen, box, box.disputed, request_id)
                )
            if box.failed is not None:
                raise _Refused(box.failed)
            if sends.done():
                sends.result()
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                waiting = ", ".join(box.missing()) or "the sources to accept the input"
                raise faults.DeadlineExceeded(
                    f"inference on {network!r} got no answer within {seconds:g} s from {waiting}",
                )
            waits: list[Awaitable[Any]] = [box.changed.wait_past(box.changed.value)]
            if not sends.done():
                waits.append(asyncio.shield(sends))
            await driver_inbox.first_of(clock, waits, seconds=remaining)
        sends.result()
    except vnode_client.SendFailed as exc:
        if exc.reason == "Invalid":  # a source refused the input itself: no retry can help
            raise faults.InvalidArgument(
                f"inference on {network!r}: {exc}", reason="ComputeFailed"
            ) from None
        raise faults.Unavailable(str(exc)) from None
    finally:
        if not sends.done():
            sends.cancel()
        await asyncio.gather(sends, return_exceptions=True)
        ctx.results.inbox.forget(job)
    moved = await model_state.moved(ctx.store, vouched)
    if moved:
        if ctx.results.metrics is not None:
            ctx.results.metrics.inference_moved()
        raise _Moved(", ".join(moved))
    _credit(ctx, network, chosen, box, job)
    _expose(ctx, network, chosen, request_id)
    for sink, disputed in (judging or {}).items():
        settled = _attempt(ctx, net, fed, chosen, box, sink, request_id)
        if settled is not None:
            _strike(ctx, disputes_mod.judge(disputed, settled), job=job, vnode=sink)
    return dict(box.outputs)


def _attempt(
    ctx: driver.DriverContext,
    net: net_model.Network,
    fed: _Fed,
    chosen: Selection,
    box: driver_inbox.Mailbox,
    sink: str,
    request_id: str,
) -> disputes_mod.Attempt | None:
    """What this try computed at `sink` (None: not a sink, or none of its results
    arrived), for `controller.trust.disputes`. Each result's signature was verified before
    it was compared (`driver_inbox.Receiver`); a refused one is struck already and not
    judged again."""
    arrived = box.results.get(sink)
    if not arrived:
        return None
    results = tuple(
        disputes_mod.Result(
            r.pnode, replica, r.epoch, driver_mailbox.comparable(r.array), signed=True
        )
        for replica, r in sorted(arrived.items())
        if not r.refused
    )
    inputs = _inputs(ctx, net, fed, chosen, sink)
    return disputes_mod.Attempt(
        net.name, sink, request_id, inputs, chosen.computing.get(sink, 1), results
    )


def _inputs(
    ctx: driver.DriverContext, net: net_model.Network, fed: _Fed, chosen: Selection, vnode: str
) -> tuple[str, tuple[tuple[str, int], ...]] | None:
    """A key of what `vnode`'s replicas computed from: the request's inputs and the epoch of
    every slot of every VNode upstream of it that took part. None when an upstream VNode
    computed without being compared (one replica could have sent each of `vnode`'s
    replicas a different value), so the replicas may not have had one input at all."""
    parents = {v.name: tuple(v.inputs) for v in net.spec.vnodes}
    upstream: set[str] = set()
    todo = list(parents.get(vnode, ()))
    while todo:
        name = todo.pop()
        if name in upstream or name not in parents:
            continue
        upstream.add(name)
        todo.extend(parents[name])
    slots: list[tuple[str, int]] = []
    for name in sorted(upstream):
        count = chosen.computing.get(name, 1)
        if count < 2:
            return None
        for replica in range(count):
            slot = allocation.slot_name(net.name, name, replica)
            held = ctx.view.allocations.get(slot)
            if held is None:
                return None
            slots.append((slot, held.spec.epoch))
    digest = hashlib.sha256()
    for name in sorted(fed.tensors):
        digest.update(name.encode())
        digest.update(fed.tensors[name].SerializeToString(deterministic=True))
    if fed.data is not None:
        digest.update(fed.data.SerializeToString(deterministic=True))
        digest.update(",".join(sorted(fed.reading)).encode())
    return digest.hexdigest(), tuple(slots)


def _strike(
    ctx: driver.DriverContext, proven: list[evidence_mod.Proven], *, job: str, vnode: str
) -> None:
    """Strike each PNode whose disputed output a settled majority proved wrong, as a loser
    of a sink's vote is struck (`driver_inbox.Inbox`)."""
    book = ctx.results.book
    for found in proven:
        if book is not None:
            book.record(
                found.pnode,
                trust.Outcome(
                    valid=False, job=job, vnode=vnode, check=found.check, message=found.message
                ),
            )
        if ctx.results.metrics is not None:
            ctx.results.metrics.dispute_judged()


def _expose(ctx: driver.DriverContext, network: str, chosen: Selection, request_id: str) -> None:
    """Remember, per PNode, the answer it computed a VNode of alone: should it be caught
    lying later, this answer may hold a lie (`controller.trust.exposure`)."""
    exposure = ctx.results.exposure
    if exposure is None:
        return
    now = ctx.clock.now()
    for vnode, n in chosen.computing.items():
        if n != 1:
            continue
        slot = ctx.view.allocations.get(allocation.slot_name(network, vnode, 0))
        if slot is not None:
            exposure.returned(
                slot.spec.pnode, exposure_mod.Unchecked(network, request_id, vnode, now)
            )


def _credit(
    ctx: driver.DriverContext,
    network: str,
    chosen: Selection,
    box: driver_inbox.Mailbox,
    job: str,
) -> None:
    """Every result of a compared VNode took part in a vote that found no fault (a loser is
    reported, a dispute fails the request): its PNode earns a valid result. A result only
    checked, never compared, earns nothing (BOINC: validated results only)."""
    if ctx.results.book is None:
        return
    for vnode, n in chosen.computing.items():
        if n < 2:
            continue
        for replica in range(n):
            slot = ctx.view.allocations.get(allocation.slot_name(network, vnode, replica))
            if slot is not None and slot.spec.pnode not in box.struck:
                ctx.results.book.record(slot.spec.pnode, trust.Outcome(valid=True, job=job))
