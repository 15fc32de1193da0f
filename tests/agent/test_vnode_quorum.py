"""Redundant replicas in the VNode state machine (`agent.vnode.Instance`, no sockets): every
result of every replica of a neighbour is compared, only the accepted one is consumed, and
losers and disputes come back as findings to report.

The numbers are checked against the runtime kinds driven directly."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent import vnode
from agent.runtime import kinds, optim, state

NET = "net"
EPOCH = 4
X = np.arange(6, dtype=np.float32).reshape(2, 3) / 7
REQUEST: vnode.Position = ("request", "r1")
STEP: vnode.Position = ("step", 1)


def make(
    replicas: dict[str, int] | None = None,
    *,
    kind: str = "dense",
    parents: tuple[str, ...] = ("a",),
    children: tuple[str, ...] = ("b",),
    replica: int = 0,
) -> vnode.Instance:
    params = {"units": 2} if kind == "dense" else {}
    return vnode.Instance(
        network=NET,
        vnode="h",
        replica=replica,
        epoch=EPOCH,
        kind=kinds.kind_class(kind)(params),
        parents=list(parents),
        children=list(children),
        neighbour_replicas=replicas,
    )


def msg(
    sender: str,
    replica: int,
    array: np.ndarray | None,
    *,
    forward: bool = True,
    position: vnode.Position = REQUEST,
    **over: Any,
) -> vnode.Message:
    """A message from `sender` replica `replica`, whose epoch is 10 + replica; None: empty."""
    fields: dict[str, Any] = {
        "forward": forward,
        "job": "j",
        "position": position,
        "sender_vnode": sender,
        "sender_replica": replica,
        "target_epoch": EPOCH,
        "attempt": 0,
        "reply_to": "driver:1",
        "array": np.zeros((0,), np.float32) if array is None else array,
        "empty": array is None,
        "sender_epoch": 10 + replica,
    }
    fields.update(over)
    return vnode.Message(**fields)


def dense_reference(x: np.ndarray) -> tuple[dict[str, np.ndarray], np.ndarray, Any]:
    dense = kinds.kind_class("dense")({"units": 2})
    params = dense.init_params(state.initial_rng(NET, "h", 0), [x.shape])
    output, cache = dense.forward([x], params, training=True)
    return params, output, cache


def targets(received: vnode.Received) -> list[tuple[str, int]]:
    return [(o.target, o.target_replica) for o in received.outgoing]


def test_two_agreeing_replicas_compute_once_and_feed_every_child_replica() -> None:
    h = make({"a": 2, "b": 3})
    first = h.receive(msg("a", 0, X))
    assert first == vnode.Received(False, [], [])
    noise = X + np.float32(1e-7)  # another CPU's rounding: agrees
    second = h.receive(msg("a", 1, noise))
    assert (second.duplicate, second.findings) == (False, [])
    assert targets(second) == [("b", 0), ("b", 1), ("b", 2)]
    _, expected, _ = dense_reference(X)
    for o in second.outgoing:
        assert o.array is not None
        np.testing.assert_allclose(o.array, expected, rtol=1e-6)
    assert h.receive(msg("a", 1, noise)).duplicate  # finished: every replica answered


@pytest.mark.parametrize("tiebreaker_sides_with", [0, 1])
def test_a_1_1_split_is_disputed_once_then_a_tiebreaker_settles_it_2_1(
    tiebreaker_sides_with: int,
) -> None:
    h = make({"a": 2})
    results = [X, X * np.float32(1.01)]
    assert h.receive(msg("a", 0, results[0])).findings == []
    disputed = h.receive(msg("a", 1, results[1]))
    assert disputed.outgoing == []
    (finding,) = disputed.findings
    assert (finding.disputed, finding.forward) == (True, True)
    assert (finding.subject_vnode, finding.subject_replica, finding.subject_epoch) == ("a", 0, 10)
    assert (finding.job, finding.position) == ("j", REQUEST)
    assert "tiebreaker" in finding.message
    again = h.receive(msg("a", 1, results[1]))  # a retried delivery of the same replica
    assert again == vnode.Received(True, [], [])
    settled = h.receive(msg("a", 2, results[tiebreaker_sides_with].copy()))
    loser = 1 - tiebreaker_sides_with
    (finding,) = settled.findings
    assert not finding.disputed
    assert (finding.subject_vnode, finding.subject_replica, finding.subject_epoch) == (
        "a",
        loser,
        10 + loser,
    )
    assert "quorum" in finding.message
    assert f"replica {loser}" in finding.message
    assert targets(settled) == [("b", 0)]
    _, expected, _ = dense_reference(results[tiebreaker_sides_with])
    assert settled.outgoing[0].array is not None
    np.testing.assert_allclose(settled.outgoing[0].array, expected, rtol=1e-6)


def test_with_three_replicas_a_majority_computes_and_a_late_result_is_only_compared() -> None:
    h = make({"a": 3})
    h.receive(msg("a", 0, X))
    decided = h.receive(msg("a", 2, X))
    assert targets(decided) == [("b", 0)]
    assert decided.findings == []
    late = h.receive(msg("a", 1, X + 1))
    assert late.outgoing == []
    (finding,) = late.findings
    assert (finding.disputed, finding.subject_replica, finding.subject_epoch) == (False, 1, 11)
    assert "replicas 0, 2" in finding.message
    assert h.receive(msg("a", 1, X)).duplicate  # the position is finished now


def test_a_late_agreeing_result_is_silent() -> None:
    h = make({"a": 3})
    h.receive(msg("a", 0, X))
    h.receive(msg("a", 1, X))
    assert h.receive(msg("a", 2, X.copy())) == vnode.Received(False, [], [])


def test_backward_decides_per_child_and_applies_only_the_accepted_gradient() -> None:
    h = make({"a": 2, "b": 3, "c": 1}, children=("b", "c"))
    h.receive(msg("a", 0, X, position=STEP))
    computed = h.receive(msg("a", 1, X, position=STEP))
    assert targets(computed) == [("b", 0), ("b", 1), ("b", 2), ("c", 0)]
    params, output, cache = dense_reference(X)
    grad = np.ones_like(output) / 3
    assert h.receive(msg("b", 0, grad, forward=False, position=STEP)).outgoing == []
    assert h.receive(msg("c", 0, None, forward=False, position=STEP)).outgoing == []
    lie = h.receive(msg("b", 2, grad * 2, forward=False, position=STEP))
    assert lie == vnode.Received(False, [], [])  # 1-1 of 3 expected: pending, nobody blamed yet
    done = h.receive(msg("b", 1, grad.copy(), forward=False, position=STEP))
    (finding,) = done.findings
    assert (finding.forward, finding.disputed, finding.subject_vnode) == (False, False, "b")
    assert (finding.subject_replica, finding.subject_epoch) == (2, 12)
    assert "gradient" in finding.message
    assert [(o.forward, o.target, o.target_replica) for o in done.outgoing] == [
        (False, "a", 0),
        (False, "a", 1),
    ]
    dense = kinds.kind_class("dense")({"units": 2})
    input_grads, param_grads = dense.backward(grad, cache, params)
    optim.make_optimizer(*vnode.DEFAULT_OPTIMIZER).step(params, param_grads)
    assert h.params is not None
    assert h.step == 1
    for name, value in params.items():
        np.testing.assert_allclose(h.params[name], value, rtol=1e-6)
    for o in done.outgoing:
        assert o.array is not None
        np.testing.assert_allclose(o.array, np.asarray(input_grads[0]), rtol=1e-6)


def test_empty_gradients_agree_with_each_other_only() -> None:
    agreeing = make({"b": 2}, kind="relu")
    agreeing.receive(msg("a", 0, X, position=STEP))
    agreeing.receive(msg("b", 0, None, forward=False, position=STEP))
    done = agreeing.receive(msg("b", 1, None, forward=False, position=STEP))
    assert done.findings == []
    assert [(o.target, o.target_replica, o.array) for o in done.outgoing] == [("a", 0, None)]
    split = make({"b": 2}, kind="relu")
    split.receive(msg("a", 0, X, position=STEP))
    split.receive(msg("b", 0, None, forward=False, position=STEP))
    disputed = split.receive(msg("b", 1, np.ones_like(X), forward=False, position=STEP))
    assert disputed.outgoing == []
    (finding,) = disputed.findings
    assert (finding.disputed, finding.forward, finding.subject_vnode) == (True, False, "b")


@pytest.mark.parametrize(
    ("adaptive", "double_check", "senders", "sent_to"),
    [
        (False, (), 2, [("b", 0), ("b", 1)]),
        (True, (), 1, [("b", 0)]),
        (True, ("a",), 2, [("b", 0)]),
        (True, ("b",), 1, [("b", 0), ("b", 1)]),
        (True, ("a", "b", "h"), 2, [("b", 0), ("b", 1)]),
    ],
)
def test_adaptive_requests_run_only_the_double_checked_vnodes_on_every_replica(
    adaptive: bool, double_check: tuple[str, ...], senders: int, sent_to: list[tuple[str, int]]
) -> None:
    h = make({"a": 2, "b": 2})
    flags: dict[str, Any] = {"adaptive": adaptive, "double_check": double_check}
    for replica in range(senders - 1):
        assert h.receive(msg("a", replica, X, **flags)).outgoing == []
    received = h.receive(msg("a", senders - 1, X, **flags))
    assert targets(received) == sent_to
    assert {(o.adaptive, o.double_check) for o in received.outgoing} == {(adaptive, double_check)}
    # All the replicas expected have answered: the request is finished.
    assert h.receive(msg("a", senders - 1, X, **flags)).duplicate


def restore(h: vnode.Instance, job: str, replicas: dict[str, int] | None) -> None:
    h.restore(
        job=job,
        epoch=EPOCH,
        attempt=0,
        step=0,
        seed=0,
        optimizer="sgd",
        learning_rate=0.01,
        loaded=None,
        neighbour_replicas=replicas,
    )


def test_a_restore_overrides_the_assignment_counts_for_its_job_until_the_next_restore() -> None:
    h = make({"a": 1, "b": 2})
    restore(h, "j", {"a": 2})
    assert (h.replicas_of("j", "a"), h.replicas_of("j", "b")) == (2, 2)
    assert h.replicas_of("other", "a") == 1
    assert h.replicas_of("j", vnode.DRIVER) == 1
    assert h.replicas_of("j", "unnamed") == 1
    assert h.receive(msg("a", 0, X)).outgoing == []  # job j waits for a's second replica
    assert targets(h.receive(msg("a", 1, X))) == [("b", 0), ("b", 1)]
    other = h.receive(msg("a", 0, X, job="other"))
    assert targets(other) == [("b", 0), ("b", 1)]
    h.neighbour_replicas = {"a": 3, "b": 1}  # the assignment changed (DataPlane.reconcile)
    assert (h.replicas_of("j", "a"), h.replicas_of("j", "b")) == (2, 1)
    assert h.replicas_of("other", "a") == 3
    restore(h, "j", {})
    assert h.replicas_of("j", "a") == 3


def test_duplicates_are_per_sender_replica() -> None:
    h = make({"a": 2})
    assert not h.receive(msg("a", 0, X)).duplicate
    assert h.receive(msg("a", 0, X + 1)) == vnode.Received(True, [], [])  # not a second opinion
    assert targets(h.receive(msg("a", 1, X))) == [("b", 0)]


def test_a_result_the_kind_cannot_use_is_refused_and_forgotten() -> None:
    h = make({"a": 1, "c": 1}, kind="add", parents=("a", "c"))
    h.receive(msg("a", 0, X))
    with pytest.raises(vnode.Refused) as refused:
        h.receive(msg("c", 0, np.ones((3, 3), np.float32)))
    assert refused.value.reason == "Invalid"
    fixed = h.receive(msg("c", 0, np.ones_like(X)))  # not a duplicate: the refusal left no trace
    assert targets(fixed) == [("b", 0)]
    assert fixed.outgoing[0].array is not None
    np.testing.assert_allclose(fixed.outgoing[0].array, X + 1, rtol=1e-6)


def test_every_replica_starts_from_the_same_parameters() -> None:
    outputs = []
    for replica in (0, 1, 2):
        h = make(replica=replica)
        (o,) = h.receive(msg("a", 0, X)).outgoing
        assert o.array is not None
        outputs.append(o.array)
    np.testing.assert_array_equal(outputs[0], outputs[1])
    np.testing.assert_array_equal(outputs[0], outputs[2])


def test_positions_waiting_only_for_late_replicas_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(vnode, "REMEMBERED_REQUESTS", 2)
    h = make({"a": 3})
    for request in ("r1", "r2", "r3"):  # each decided 2 of 3; replica 2 never answers
        h.receive(msg("a", 0, X, position=("request", request)))
        assert h.receive(msg("a", 1, X, position=("request", request))).outgoing
    # r1 was let go to keep two lingering: its late result is a duplicate, not compared.
    assert h.receive(msg("a", 2, X + 1, position=("request", "r1"))) == vnode.Received(True, [], [])
    (finding,) = h.receive(msg("a", 2, X + 1, position=("request", "r2"))).findings
    assert finding.subject_replica == 2


def test_disputed_positions_are_bounded_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vnode, "REMEMBERED_REQUESTS", 1)
    h = make({"a": 2})
    for request in ("r1", "r2"):  # the driver gives up on r1 and retries as r2
        h.receive(msg("a", 0, X, position=("request", request)))
        assert h.receive(msg("a", 1, X + 1, position=("request", request))).findings
    assert h.receive(msg("a", 2, X, position=("request", "r1"))).duplicate
    assert targets(h.receive(msg("a", 2, X, position=("request", "r2")))) == [("b", 0)]


def test_backward_waits_for_every_child_replica_not_only_a_majority() -> None:
    """A child replica that never got its forward sends no gradient; updating on the
    majority would leave it a step behind, later struck for an honest result on stale
    state. So the update waits for all of them (a missing one stalls the step into a
    rollback instead)."""
    h = make({"a": 1, "b": 3})
    computed = h.receive(msg("a", 0, X, position=STEP))
    assert targets(computed) == [("b", 0), ("b", 1), ("b", 2)]
    _, output, _ = dense_reference(X)
    grad = np.ones_like(output) / 3
    assert h.receive(msg("b", 0, grad, forward=False, position=STEP)).outgoing == []
    majority = h.receive(msg("b", 1, grad.copy(), forward=False, position=STEP))
    assert majority == vnode.Received(False, [], [])
    assert h.step == 0
    last = h.receive(msg("b", 2, grad.copy(), forward=False, position=STEP))
    assert [(o.target, o.target_replica) for o in last.outgoing] == [("a", 0)]
    assert last.findings == []
    assert h.step == 1
