"""Micro-batches in the VNode state machine (`agent.vnode.Instance`, no sockets): a step cut
into parts, delivered in any interleaving of the parts' forward and backward passes, ends
with the weights of the same step taken as one batch (rtol 1e-6); the step moves only after
the last part; duplicates and inconsistent cuts are recognised.

A small network of real Instances and kinds is wired by a router that delivers each
Outgoing as the data plane would, picking the next message at random (seeded) among those
in flight, so forwards of later parts overtake backwards of earlier ones."""

from __future__ import annotations

import dataclasses
import random
from typing import Any

import numpy as np
import pytest

from agent import dataplane, vnode
from agent.runtime import kinds

NET = "net"
EPOCH = 3
JOB = "j"
#: name → (kind, params, parents): x → h1 → act → h2 → loss ← y
SPEC: dict[str, tuple[str, dict[str, Any], list[str]]] = {
    "h1": ("dense", {"units": 6}, []),
    "act": ("tanh", {}, ["h1"]),
    "h2": ("dense", {"units": 3}, ["act"]),
    "y": ("relu", {}, []),  # the targets, passed through (they are >= 0)
    "loss": ("mse", {}, ["h2", "y"]),
}
BATCH = 12


def network(optimizer: str) -> dict[str, vnode.Instance]:
    children = {name: [c for c, (_, _, ps) in SPEC.items() if name in ps] for name in SPEC}
    found = {}
    for name, (kind, params, parents) in SPEC.items():
        instance = vnode.Instance(
            network=NET,
            vnode=name,
            replica=0,
            epoch=EPOCH,
            kind=kinds.kind_class(kind)(params),
            parents=parents,
            children=children[name],
        )
        instance.restore(
            job=JOB, epoch=EPOCH, attempt=1, step=0, seed=7, optimizer=optimizer,
            learning_rate=0.05, loaded=None,
        )  # fmt: skip
        found[name] = instance
    return found


def data(step: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(step)
    return rng.normal(size=(BATCH, 4)), rng.uniform(size=(BATCH, 3))


@dataclasses.dataclass
class Router:
    """Delivers messages among `nodes` (one replica each) in a seeded random order."""

    nodes: dict[str, vnode.Instance]
    rng: random.Random
    #: (target, Message) in flight.
    queue: list[tuple[str, vnode.Message]] = dataclasses.field(default_factory=list)
    #: What reached the driver: (forward, sender, position).
    driver: list[tuple[bool, str, vnode.Position]] = dataclasses.field(default_factory=list)

    def feed(self, step: int, parts: int) -> None:
        x, y = data(step)
        for part, (xs, ys) in enumerate(zip(np.split(x, parts), np.split(y, parts), strict=True)):
            position: vnode.Position = ("step", step) if parts == 1 else ("step", step, part)
            for source, array in (("h1", xs), ("y", ys)):
                self.queue.append((source, message(vnode.DRIVER, array, position, parts)))

    def run(self) -> None:
        while self.queue:
            target, m = self.queue.pop(self.rng.randrange(len(self.queue)))
            received = self.nodes[target].receive(m)
            assert not received.duplicate
            for o in received.outgoing:
                if o.target == vnode.DRIVER:
                    self.driver.append((o.forward, target, o.position))
                    continue
                sent = message(target, o.array, o.position, o.micro_batches, forward=o.forward)
                self.queue.append((o.target, sent))


def message(
    sender: str,
    array: np.ndarray | None,
    position: vnode.Position,
    parts: int,
    *,
    forward: bool = True,
) -> vnode.Message:
    return vnode.Message(
        forward=forward,
        job=JOB,
        position=position,
        sender_vnode=sender,
        sender_replica=0,
        target_epoch=EPOCH,
        attempt=1,
        reply_to="driver:1",
        array=np.zeros((0,), np.float32) if array is None else array,
        empty=array is None,
        micro_batches=parts,
    )


def train(parts: int, *, optimizer: str, steps: int = 3, seed: int = 0) -> dict[str, Any]:
    router = Router(network(optimizer), random.Random(seed))
    for step in range(1, steps + 1):
        router.feed(step, parts)
        router.run()
        assert {n.step for n in router.nodes.values()} == {step}
        # Every part's loss reached the driver and every part's backward reached the sources.
        expected = {(True, "loss"), (False, "h1"), (False, "y")}
        for part in range(parts):
            at: vnode.Position = ("step", step) if parts == 1 else ("step", step, part)
            assert {(f, s) for f, s, p in router.driver if p == at} == expected
    return {
        f"{name}.{key}": value
        for name, node in router.nodes.items()
        for key, value in (node.params or {}).items()
    }


@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam"])
@pytest.mark.parametrize("parts", [2, 3, 4, 12])
def test_parts_in_any_order_end_with_the_weights_of_the_whole_batch(
    parts: int, optimizer: str
) -> None:
    whole = train(1, optimizer=optimizer)
    for seed in range(3):  # three interleavings of the parts' passes
        cut = train(parts, optimizer=optimizer, seed=seed)
        assert cut.keys() == whole.keys()
        for name, value in whole.items():
            np.testing.assert_allclose(cut[name], value, rtol=1e-6, atol=0, err_msg=name)
    first = train(1, optimizer=optimizer, steps=1)
    assert any(not np.allclose(first[n], whole[n]) for n in whole)  # the steps changed them


def test_the_step_moves_and_the_weights_change_only_after_the_last_part() -> None:
    router = Router(network("sgd"), random.Random(0))
    h2 = router.nodes["h2"]
    router.feed(1, 3)
    # Parts 0 and 1 all the way through; part 2 held back at the sources.
    held = [(t, m) for t, m in router.queue if m.position == ("step", 1, 2)]
    router.queue = [(t, m) for t, m in router.queue if m.position != ("step", 1, 2)]
    router.run()
    assert h2.params is not None
    before = {k: v.copy() for k, v in h2.params.items()}
    assert {n.step for n in router.nodes.values()} == {0}
    assert [p for f, s, p in router.driver if not f and s == "h1"] == [
        ("step", 1, 0), ("step", 1, 1),
    ] or [p for f, s, p in router.driver if not f and s == "h1"] == [
        ("step", 1, 1), ("step", 1, 0),
    ]  # fmt: skip
    router.queue = held
    router.run()
    assert {n.step for n in router.nodes.values()} == {1}
    assert any(not np.array_equal(before[k], h2.params[k]) for k in before)


def test_a_finished_parts_late_duplicate_is_recognised_until_the_step_applies() -> None:
    router = Router(network("sgd"), random.Random(0))
    x, _ = data(1)
    router.feed(1, 2)
    router.queue = [(t, m) for t, m in router.queue if m.position == ("step", 1, 0)]
    router.run()  # part 0 done everywhere, part 1 not sent
    again = message(vnode.DRIVER, np.split(x, 2)[0], ("step", 1, 0), 2)
    assert router.nodes["h1"].receive(again).duplicate
    assert router.nodes["h1"].step == 0


def test_a_message_cutting_its_step_otherwise_is_refused() -> None:
    router = Router(network("sgd"), random.Random(0))
    x, _ = data(1)
    router.feed(1, 2)
    router.queue = [(t, m) for t, m in router.queue if m.position == ("step", 1, 0)]
    router.run()
    with pytest.raises(vnode.Refused) as refused:
        router.nodes["h1"].receive(message(vnode.DRIVER, x[:4], ("step", 1, 1), 3))
    assert refused.value.reason == "Invalid"
    assert "micro_batches: 3" in str(refused.value)


def test_a_restore_drops_a_half_summed_step() -> None:
    router = Router(network("sgd"), random.Random(0))
    router.feed(1, 2)
    router.queue = [(t, m) for t, m in router.queue if m.position == ("step", 1, 0)]
    router.run()
    h1 = router.nodes["h1"]
    h1.restore(
        job=JOB, epoch=EPOCH, attempt=2, step=0, seed=7, optimizer="sgd", learning_rate=0.05,
        loaded=None,
    )  # fmt: skip
    x, _ = data(1)
    # Part 0 again, in the new attempt: computed anew, not taken as a duplicate.
    again = message(vnode.DRIVER, np.split(x, 2)[0], ("step", 1, 0), 2)
    again = dataclasses.replace(again, attempt=2)
    received = h1.receive(again)
    assert not received.duplicate
    assert [o.target for o in received.outgoing] == ["act"]


@pytest.mark.parametrize(
    ("training", "micro", "micro_batches", "problem"),
    [
        (True, 0, 0, None),
        (True, 0, 1, None),
        (True, 3, 4, None),
        (True, 4, 4, "micro: 4 is not a part of a step cut into 4"),
        (True, 1, 0, "micro: 1 is not a part of a step cut into 1"),
        (True, 0, 65, "micro_batches: 65 is over the limit of 64"),
        (False, 0, 2, "micro_batches: an inference request (request_id) is not cut into parts"),
    ],
)
def test_the_data_plane_refuses_micro_fields_that_name_no_part(
    training: bool, micro: int, micro_batches: int, problem: str | None
) -> None:
    found = dataplane.micro_problem(training=training, micro=micro, micro_batches=micro_batches)
    assert found == problem
