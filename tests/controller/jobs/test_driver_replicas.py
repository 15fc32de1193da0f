"""The driver with redundant replicas, against fake agents over real gRPC (one per PNode).

What must hold: every replica is restored (with its neighbours' replica counts), fed and
checkpointed, and one blob per VNode is recorded; sink replicas are compared — a 2-1 split
strikes the loser and the step completes without crediting it, a 1-1 split requests a
tiebreaker and rolls back; checkpoints with no majority are not recorded and request a
tiebreaker, checkpoints differing only in rounding are; a clean checkpoint interval clears
the tiebreakers; inference compares every replica and, on a dispute, waits for the
tiebreaker, restores it and retries; adaptive selection follows trust.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from api import tensors
from api.dcnr.v1 import common_pb2
from api.resources import job, meta, pnode
from api.resources import network as net_model
from controller.jobs import driver_checkpoint, inference
from controller.runtime import clock as clocks
from controller.trust import book as trust
from tests.controller.jobs import driver_harness as harness

XS = np.arange(1, 11, dtype=np.float64) / 10  # 10 rows
SPEC: dict[str, Any] = {
    "epochs": 2,
    "batch_size": 4,
    "learning_rate": 0.5,
    "checkpoint_interval": 4,
    "seed": 7,
}
TOTAL = 6  # 2 epochs * ceil(10 / 4)


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.orch: harness.Orchestrator | None = None

    async def start(self, **cluster: Any) -> harness.Orchestrator:
        self.store, self.view, self.agents = await harness.cluster_of(self.tmp, XS, **cluster)
        self.book = trust.TrustBook(store=self.store, clock=clocks.SystemClock())
        self.orch = harness.Orchestrator(self.store, self.view, self.tmp, "r1", book=self.book)
        await self.orch.start()
        return self.orch

    async def train(self, name: str = "fit", **spec: Any) -> None:
        record = job.Job(
            metadata=meta.ObjectMeta(name=name),
            spec=job.JobSpec(network=harness.NET, **{**SPEC, **spec}),
        )
        await self.store.create(record)
        assert self.orch is not None
        await self.orch.loop.reconcile(name)

    def reference(self) -> float:
        return harness.reference_w(XS, seed=7, epochs=2, batch=4, lr=0.5)

    async def trust_of(self, name: str) -> pnode.Trust:
        await self.book.flush()
        return (await self.store.get(pnode.PNode, name)).status.trust

    async def network(self) -> net_model.Network:
        return await self.store.get(net_model.Network, harness.NET)

    async def until_network(
        self, predicate: Callable[[net_model.Network], bool], seconds: float = 30.0
    ) -> net_model.Network:
        """The stored network once `predicate` holds; the driver shows its writes to the
        view, whose signal wakes this."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        signal = self.view.network_signal(harness.NET)
        while True:
            seen = signal.value
            current = await self.network()
            if predicate(current):
                return current
            remaining = deadline - loop.time()
            assert remaining > 0, f"network never got there: {current.status}"
            await signal.wait_past(seen, within=min(remaining, 0.5))


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    it = World(tmp_path)
    try:
        yield it
    finally:
        if it.orch is not None:
            await it.orch.close()
        for agent in getattr(it, "agents", []):
            await agent.close()
        if hasattr(it, "store"):
            await it.store.close()


def succeeded(j: job.Job) -> bool:
    return j.status.phase == "Succeeded"


def counter(orch: harness.Orchestrator, name: str, **labels: str) -> float:
    value = orch.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


# -- training ------------------------------------------------------------------------------


async def test_agreeing_replicas_are_each_restored_fed_and_checkpointed(world: World) -> None:
    orch = await world.start(replicas=2)
    await world.train()
    done = await orch.until("fit", succeeded)

    assert done.status.attempt == 1
    for r, agent in enumerate(world.agents):
        assert sorted((q.vnode, q.replica) for q in agent.restore_requests) == [
            ("loss", r),
            ("x", r),
        ]
        counts = {q.vnode: dict(q.neighbour_replicas) for q in agent.restore_requests}
        assert counts == {"x": {"loss": 2}, "loss": {"x": 2}}
        assert [s for s, _, _ in agent.batches] == list(range(1, TOTAL + 1))
        assert sorted(agent.checkpoints) == sorted((v, s) for v in ("x", "loss") for s in (4, 6))
        assert agent.w == pytest.approx(world.reference(), rel=1e-12)
    assert list(done.status.checkpoint_blobs) == ["lin.loss.0"], "one blob per VNode"
    assert sorted(done.status.checkpoint_epochs) == [
        "lin.loss.0",
        "lin.loss.1",
        "lin.x.0",
        "lin.x.1",
    ]
    for name in ("p1", "p2"):
        held = await world.trust_of(name)
        assert (held.strikes_total, held.valid_total) == (0, 2 * TOTAL)


async def test_a_two_one_split_strikes_the_loser_and_the_step_completes(world: World) -> None:
    orch = await world.start(replicas=3)
    world.agents[2].lie = lambda position: 5.0 if position == 2 else 0.0
    await world.train()
    done = await orch.until("fit", succeeded)

    assert done.status.attempt == 1, "a majority decides: nothing rolls back"
    liar = await world.trust_of("p3")
    assert liar.strikes_total == 1
    assert liar.valid_total == 2 * (TOTAL - 1), "no credit for the step it lost"
    events = (await world.store.get(pnode.PNode, "p3")).status.validation_events
    assert [(e.check, e.vnode) for e in events if e.verdict == "rejected"] == [("quorum", "loss")]
    for name in ("p1", "p2"):
        honest = await world.trust_of(name)
        assert (honest.strikes_total, honest.valid_total) == (0, 2 * TOTAL)
    assert counter(orch, "dcnr_validation_disagreements_total") == 1
    assert (await world.network()).status.tiebreakers == []


async def test_an_output_failing_its_checks_is_outvoted_not_rolled_back(world: World) -> None:
    orch = await world.start(replicas=3)
    world.agents[2].lie = lambda position: math.nan if position == 2 else 0.0
    await world.train()
    done = await orch.until("fit", succeeded)

    assert done.status.attempt == 1, "the two others agree: the step completes"
    liar = await world.trust_of("p3")
    assert liar.strikes_total == 1, "struck once, by the check; not again by the vote"
    assert liar.valid_total == 2 * (TOTAL - 1)
    events = (await world.store.get(pnode.PNode, "p3")).status.validation_events
    assert [e.check for e in events if e.verdict == "rejected"] == ["finite"]


async def test_a_one_one_split_requests_a_tiebreaker_and_rolls_back(world: World) -> None:
    orch = await world.start(replicas=2)
    world.agents[1].lie = lambda position: 1.0 if position == 3 else 0.0
    await world.train()
    paused = await orch.until(
        "fit", lambda j: j.status.attempt == 2 and "lin.loss.2" in j.status.message
    )

    assert paused.status.phase == "Paused", "waiting for the tiebreaker slot to be placed"
    assert paused.status.checkpoint_step == 0
    assert (await world.network()).status.tiebreakers == ["loss"]
    assert world.view.networks[harness.NET].status.tiebreakers == ["loss"], "shown to the view"
    for name in ("p1", "p2"):
        assert (await world.trust_of(name)).strikes_total == 0, "no majority: nobody struck"
    assert counter(orch, "dcnr_validation_tiebreaks_total") == 1
    assert [s for s, a, _ in world.agents[0].batches if a == 1] == [1, 2, 3]


async def test_checkpoints_without_a_majority_are_not_recorded(world: World) -> None:
    orch = await world.start(replicas=2)
    world.agents[1].checkpoint_noise = 0.5
    await world.train()
    rolled = await orch.until("fit", lambda j: j.status.attempt == 2)

    assert "checkpoint of step 4" in rolled.status.message
    assert rolled.status.checkpoint_step == 0
    assert rolled.status.checkpoint_blobs == {}
    assert (await world.network()).status.tiebreakers == ["loss"]


async def test_a_forged_checkpoint_digest_strikes_its_writer(world: World) -> None:
    orch = await world.start(replicas=2)
    world.agents[1].checkpoint_noise = 0.5
    world.agents[1].forge_digest = True  # claims the honest digest for other bytes
    await world.train()
    rolled = await orch.until("fit", lambda j: j.status.attempt == 2)
    assert rolled.status.checkpoint_blobs == {}, "the forged blob was not elected"
    forger = await world.trust_of("p2")
    assert forger.strikes_total == 1
    node = await world.store.get(pnode.PNode, "p2")
    assert [e.check for e in node.status.validation_events] == ["checkpoint-digest"]
    assert (await world.trust_of("p1")).strikes_total == 0


async def test_checkpoints_differing_only_in_rounding_are_recorded(world: World) -> None:
    orch = await world.start(replicas=2)
    world.agents[1].checkpoint_noise = 1e-12
    await world.train()
    done = await orch.until("fit", succeeded)
    assert done.status.attempt == 1
    assert done.status.checkpoint_blobs["lin.loss.0"].startswith(
        f"file://{world.tmp}/blobs/fit/loss-0/step-6.npz#"
    )


async def test_a_clean_checkpoint_interval_clears_the_tiebreakers(world: World) -> None:
    orch = await world.start(replicas=2, tiebreakers=("loss", "x"))
    world.agents[2].lie = lambda position: 5.0 if position == 2 else 0.0
    at_step_5: list[list[str]] = []

    async def look(step: int, attempt: int) -> None:
        if step == 5:
            at_step_5.append((await world.network()).status.tiebreakers)

    world.agents[0].on_batch = look
    await world.train()
    done = await orch.until("fit", succeeded)

    assert done.status.attempt == 1
    assert at_step_5 == [["loss", "x"]], "steps 1-4 saw a disagreement: kept"
    assert (await world.network()).status.tiebreakers == [], "steps 5-6 were clean: cleared"


# -- checkpoint choice (pure) --------------------------------------------------------------


def blob(url: str, digest: bytes) -> common_pb2.BlobRef:
    return common_pb2.BlobRef(url=url, sha256=digest, size_bytes=1)


def test_the_digest_majority_wins_and_names_the_outlier() -> None:
    blobs = {0: blob("a", b"1"), 1: blob("b", b"2"), 2: blob("c", b"2")}
    found = driver_checkpoint.by_digest(blobs)
    assert found is not None
    assert (found.how, found.blob, found.outliers) == (driver_checkpoint.How.DIGEST, blobs[1], (0,))
    assert driver_checkpoint.by_digest({0: blobs[0], 1: blobs[1]}) is None


def test_values_decide_when_digests_split_and_unreadable_blobs_join_nobody() -> None:
    blobs = {0: blob("a", b"1"), 1: blob("b", b"2"), 2: blob("c", b"3")}
    w = {"w": np.array([1.0, 2.0])}
    close = {"w": np.array([1.0, 2.0 + 1e-12])}
    far = {"w": np.array([1.0, 2.5])}
    found = driver_checkpoint.by_value(blobs, {0: far, 1: w, 2: close})
    assert (found.how, found.blob, found.outliers) == (
        driver_checkpoint.How.TENSORS,
        blobs[1],
        (0,),
    )
    assert driver_checkpoint.by_value(blobs, {0: far, 1: w}).disputed
    assert driver_checkpoint.by_value({0: blobs[0], 1: blobs[1]}, {0: w, 1: far}).disputed


# -- inference -----------------------------------------------------------------------------


async def test_inference_compares_every_replica_and_counts_the_extra_compute(
    world: World,
) -> None:
    orch = await world.start(validation="replicas")
    xb = np.array([1.0, 2.0])
    out = await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    assert tensors.decode(out["loss"]).tolist() == [0.0, 0.0]
    assert counter(orch, "dcnr_inference_results_total", role="primary") == 2
    assert counter(orch, "dcnr_inference_results_total", role="double_check") == 2
    for name in ("p1", "p2"):
        assert (await world.trust_of(name)).valid_total == 2, "x and loss compared and agreed"


async def test_answers_computed_unchecked_are_remembered_by_pnode(world: World) -> None:
    """One replica each (`validation: none`): both VNodes are computed by p1 alone, so the
    answer is exposed if p1 is caught; under `replicas` nothing is."""
    orch = await world.start()
    xb = np.array([1.0, 2.0])
    await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    found = orch.exposure.take("p1")
    assert found is not None
    assert found.total == 4
    assert sorted({a.vnode for a in found.answers}) == ["loss", "x"]
    assert len({a.request_id for a in found.answers}) == 2
    assert {a.network for a in found.answers} == {harness.NET}
    assert orch.exposure.take("p1") is None, "taken once"


async def test_compared_answers_are_not_exposed(world: World) -> None:
    orch = await world.start(validation="replicas")
    xb = np.array([1.0, 2.0])
    await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    assert orch.exposure.take("p1") is None
    assert orch.exposure.take("p2") is None


async def test_an_inference_dispute_waits_for_the_restored_tiebreaker_and_retries(
    world: World,
) -> None:
    orch = await world.start(replicas=2)
    await world.train()
    trained = await orch.until("fit", succeeded)
    w = world.reference()
    world.agents[1].lie = lambda position: 1.0
    xb = np.array([1.0, 2.0])
    asked = asyncio.ensure_future(
        inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    )
    try:
        await world.until_network(lambda n: n.status.tiebreakers == ["loss"])
        assert not asked.done(), "it waits for the tiebreaker instead of answering"
        # The network loop's part: place the tiebreaker (here beside replica 0).
        world.agents[0].extra = {2: 1}
        placed = await world.store.create(harness.slot("loss", epoch=1, replica=2, pnode="p1"))
        world.view.apply_written([placed])
        out = await asyncio.wait_for(asked, 30)
    finally:
        asked.cancel()
    assert tensors.decode(out["loss"]) == pytest.approx(w * xb, rel=1e-12)
    restored = [q for q in world.agents[0].restore_requests if q.replica == 2]
    assert len(restored) == 1, "the tiebreaker was restored from the trained model"
    assert restored[0].blob.url == trained.status.checkpoint_blobs["lin.loss.0"].partition("#")[0]
    liar = await world.trust_of("p2")
    # Two lies, two strikes: the retry's 2-1 split, and the disputed output itself, judged
    # by the retry's majority for the same inputs (controller.trust.disputes).
    assert liar.strikes_total == 2, "the retry's split and the disputed lie struck the liar"
    judged = [e.message for e in liar_events(await world.store.get(pnode.PNode, "p2"))]
    assert sum("disputed" in m for m in judged) == 1, judged
    # The struck PNode still holds a replica of loss: the tiebreaker stays.
    assert (await world.network()).status.tiebreakers == ["loss"]
    # Its strikes leave the window (here: an Uncordon): the next answer retires it.
    world.agents[1].lie = lambda position: 0.0
    node = await world.store.get(pnode.PNode, "p2")
    node.status.trust.strikes = 0
    world.view.apply_written([await world.store.update(node)])
    again = await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    assert tensors.decode(again["loss"]) == pytest.approx(w * xb, rel=1e-12)
    assert (await world.network()).status.tiebreakers == []


async def _dispute_then_settle(world: World, *, move_upstream: bool) -> pnode.PNode:
    """p2 lies on its first loss output only: a 1-1 dispute, then a retry with a tiebreaker
    beside replica 0 in which everyone tells the truth (`move_upstream`: x's replica 0 is
    re-placed before the retry, so its inputs are not provably the same). Returns p2."""
    told: list[int | str] = []

    def once(position: int | str) -> float:
        told.append(position)
        return 1.0 if len(told) == 1 else 0.0

    orch = await world.start(replicas=2)
    world.agents[1].lie = once
    xb = np.array([1.0, 2.0])
    asked = asyncio.ensure_future(
        inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    )
    try:
        await world.until_network(lambda n: n.status.tiebreakers == ["loss"])
        if move_upstream:
            world.agents[0].epochs["x"] += 1
            await harness.move_slot(world.store, world.view, "x")
        world.agents[0].extra = {2: 1}
        placed = await world.store.create(harness.slot("loss", epoch=1, replica=2, pnode="p1"))
        world.view.apply_written([placed])
        out = await asyncio.wait_for(asked, 30)
    finally:
        asked.cancel()
    assert tensors.decode(out["loss"]).tolist() == [0.0, 0.0]
    assert len(told) == 2, "one disputed try, one settled retry"
    assert (await world.trust_of("p1")).strikes_total == 0, "the honest PNode is never struck"
    return await world.store.get(pnode.PNode, "p2")


async def test_a_disputed_lie_is_struck_though_the_liar_tells_the_truth_in_the_retry(
    world: World,
) -> None:
    liar = await _dispute_then_settle(world, move_upstream=False)
    assert liar.status.trust.strikes_total == 1, "struck for the disputed lie itself"
    (event,) = liar_events(liar)
    assert event.vnode == "loss"
    assert "disputed" in event.message
    assert world.orch is not None
    assert counter(world.orch, "dcnr_validation_disputes_judged_total") == 1


async def test_a_disputed_output_is_not_judged_when_an_upstream_slot_moved(
    world: World,
) -> None:
    liar = await _dispute_then_settle(world, move_upstream=True)
    assert liar.status.trust.strikes_total == 0, "other inputs: nothing is proven"
    assert world.orch is not None
    assert counter(world.orch, "dcnr_validation_disputes_judged_total") == 0


def liar_events(node: pnode.PNode) -> list[pnode.ValidationEvent]:
    return [e for e in node.status.validation_events if e.verdict == "rejected"]


async def test_inference_retries_past_a_result_refused_by_its_checks(world: World) -> None:
    orch = await world.start()
    told: list[int | str] = []

    def once(position: int | str) -> float:
        told.append(position)
        return math.nan if len(told) == 1 else 0.0

    world.agents[0].lie = once
    xb = np.array([1.0, 2.0])
    out = await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    assert tensors.decode(out["loss"]).tolist() == [0.0, 0.0]
    assert len(told) == 2
    assert told[0] != told[1], "retried under a new request id"
    assert (await world.trust_of("p1")).strikes_total == 1


async def test_an_answer_that_may_come_from_a_moved_fresh_instance_is_asked_again(
    world: World,
) -> None:
    # The request is on its way when loss is re-placed (here on the same PNode, epoch+1):
    # the agent's new instance never loaded the trained state and answers with w = 0. Agents
    # resolve the current epoch hop by hop, so nothing stops the request reaching it; the
    # answer must not be returned.
    orch = await world.start()
    await world.train()
    await orch.until("fit", succeeded)
    w = world.reference()
    agent = world.agents[0]
    moves: list[int] = []

    async def replace_loss_once() -> None:
        if not moves:
            agent.epochs["loss"] += 1
            agent.w = None
            moves.append(await harness.move_slot(world.store, world.view, "loss"))

    agent.on_infer = replace_loss_once
    xb = np.array([1.0, 2.0])
    out = await inference.infer(orch.ctx, harness.NET, {"x": tensors.encode(xb)}, seconds=30)
    assert moves == [2]
    assert tensors.decode(out["loss"]) == pytest.approx(w * xb, rel=1e-12)
    assert counter(orch, "dcnr_inference_moved_total") == 1
    restored = [(q.job, q.step) for q in agent.restore_requests if q.epoch == 2]
    assert restored == [("fit", TOTAL)], "the new instance was restored, then asked"


# -- adaptive selection (pure) -------------------------------------------------------------


def adaptive(tiebreakers: tuple[str, ...] = ()) -> net_model.Network:
    net = harness.network_record("file:///d.npz", validation="adaptive")
    net.status.tiebreakers = list(tiebreakers)
    return net


def standing(valid: int, window: str = "", *, struck: bool = False) -> inference.Standing:
    strikes = window.count("S")
    trust_ = pnode.Trust(valid_total=valid, consecutive_valid=valid, window=window, strikes=strikes)
    return inference.Standing(trust_, struck=struck)


def test_adaptive_selection_follows_the_history_of_replica_zero() -> None:
    rng = random.Random(7)
    new = [inference.select(adaptive(), lambda v: standing(0), rng) for _ in range(200)]
    assert all(s.double_check == ("x", "loss") for s in new), "untrusted: always checked"
    assert all(s.adaptive and s.computing == {"x": 2, "loss": 2} for s in new)
    young = [inference.select(adaptive(), lambda v: standing(9), rng) for _ in range(200)]
    assert all(s.double_check == ("x", "loss") for s in young)

    trusted = [inference.select(adaptive(), lambda v: standing(1000), rng) for _ in range(4000)]
    checked = sum(len(s.double_check) for s in trusted)
    assert 700 < checked < 900, f"the floor: about 800 of 8000 VNode results, got {checked}"
    plain = [s for s in trusted if not s.double_check]
    assert plain[0].computing == {"x": 1, "loss": 1}
    assert plain[0].double_checks == 0

    caught = standing(1000, "V" * 30 + "S" + "V" * 19)
    suspects = [inference.select(adaptive(), lambda v: caught, rng) for _ in range(200)]
    assert all(s.double_check == ("x", "loss") for s in suspects), "a strike: always checked"
    unwritten = standing(1000, struck=True)
    assert inference.select(adaptive(), lambda v: unwritten, rng).double_check == ("x", "loss")

    settling = inference.select(adaptive(("loss",)), lambda v: standing(1000), random.Random(7))
    assert "loss" in settling.double_check, "a VNode with a tiebreaker is always checked"
    assert settling.computing["loss"] == 3


def _with_dense(
    tiebreakers: tuple[str, ...] = (), spot: net_model.SpotCheckPolicy = "always"
) -> net_model.Network:
    """The adaptive network with a dense VNode `fc` between x and the loss."""
    net = adaptive(tiebreakers)
    fc = net_model.VNodeSpec(name="fc", kind="dense", params={"units": 1}, inputs=["x"])
    loss = net.spec.vnodes[1].model_copy(update={"inputs": ["fc"]})
    net.spec = net.spec.model_copy(
        update={"vnodes": [net.spec.vnodes[0], fc, loss], "spot_check": spot}
    )
    return net


@pytest.mark.parametrize(
    ("policy", "shapes", "spot"),
    [
        ("always", {}, True),
        ("never", {"x": (256, 1024), "fc": (256, 1024)}, False),
        ("auto", {}, False),  # shapes unknown (a data reference): a replica
        ("auto", {"x": (64, 64), "fc": (64, 32)}, False),  # digits' fc1: the check costs more
        ("auto", {"x": (256, 1024), "fc": (256, 1024)}, True),  # wide: a seventh of it
    ],
)
def test_spot_check_policy(
    policy: net_model.SpotCheckPolicy, shapes: dict[str, tuple[int, ...]], spot: bool
) -> None:
    net = _with_dense(spot=policy)
    chosen = inference.select(net, lambda v: standing(0), random.Random(1), shapes=shapes)
    assert chosen.spot_check == (("fc",) if spot else ())
    assert ("fc" in chosen.double_check) is not spot


def test_a_sampled_dense_vnode_is_spot_checked_and_others_double_checked() -> None:
    rng = random.Random(3)
    new = inference.select(_with_dense(), lambda v: standing(0), rng)
    assert new.spot_check == ("fc",), "dense has a cheaper proof: Freivalds'"
    assert new.double_check == ("x", "loss"), "the others are recomputed"
    assert new.computing == {"x": 2, "fc": 2, "loss": 2}, "the checker takes part"
    assert (new.double_checks, new.spot_checks) == (2, 1)
    trusted = [inference.select(_with_dense(), lambda v: standing(1000), rng) for _ in range(2000)]
    spot = sum(len(s.spot_check) for s in trusted)
    assert 120 < spot < 290, f"the same floor as a double check: about 200, got {spot}"
    plain = next(s for s in trusted if not s.spot_check)
    assert (plain.computing["fc"], plain.spot_checks) == (1, 0)
    settling = inference.select(_with_dense(("fc",)), lambda v: standing(1000), rng)
    assert settling.spot_check == (), "a tiebreaker's dispute is settled by recomputation"
    assert "fc" in settling.double_check
    assert settling.computing["fc"] == 3


def test_without_adaptive_every_replica_computes() -> None:
    net = harness.network_record("file:///d.npz", replicas=3)
    chosen = inference.select(net, lambda v: standing(1000), random.Random(1))
    assert (chosen.adaptive, chosen.double_check) == (False, ())
    assert chosen.computing == {"x": 3, "loss": 3}
    assert chosen.double_checks == 4


async def test_a_blob_not_matching_its_claimed_digest_is_forged_and_never_elected(
    tmp_path: Path,
) -> None:
    """A liar claiming the majority's digest for other bytes would, if elected, fail every
    restore's digest check and wedge the run: the majority's blobs are hashed first."""
    paths = {}
    for name, value in (("h0", 1.0), ("h1", 1.0), ("liar", 9.0)):
        path = tmp_path / f"{name}.npz"
        np.savez(path, w=np.array([value]))
        paths[name] = path
    digest = hashlib.sha256(paths["h0"].read_bytes()).digest()
    assert digest == hashlib.sha256(paths["h1"].read_bytes()).digest()

    def claim(name: str) -> common_pb2.BlobRef:
        return blob(f"file://{paths[name]}", digest)  # everyone claims the honest digest

    found = await driver_checkpoint.choose({0: claim("liar"), 1: claim("h0"), 2: claim("h1")})
    assert (found.how, found.blob, found.forged) == (
        driver_checkpoint.How.DIGEST,
        claim("h0"),
        (0,),
    )
    assert found.outliers == (0,)
    # With two replicas the forger leaves no majority: a dispute, nothing elected.
    alone = await driver_checkpoint.choose({0: claim("liar"), 1: claim("h0")})
    assert alone.disputed
    assert alone.forged == (0,)
