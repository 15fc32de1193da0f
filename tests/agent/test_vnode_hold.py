"""Gradients that arrive before their forward pass (`agent.vnode.Instance`, no sockets, a
fake clock): held, then applied when the forward pass completes exactly as if they had come
after it; bounded in count, bytes and time; never carried into another attempt."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from agent import vnode
from agent.runtime import kinds
from tests.agent import test_vnode_quorum as quorum

X = quorum.X
STEP = quorum.STEP
msg = quorum.msg


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make(clock: FakeClock, replicas: dict[str, int] | None = None) -> vnode.Instance:
    """h: dense, parent a, child b (3 replicas unless told)."""
    return vnode.Instance(
        network=quorum.NET,
        vnode="h",
        replica=0,
        epoch=quorum.EPOCH,
        kind=kinds.kind_class("dense")({"units": 2}),
        parents=["a"],
        children=["b"],
        neighbour_replicas=replicas or {"a": 1, "b": 3},
        clock=clock,
    )


def grad() -> np.ndarray:
    _, output, _ = quorum.dense_reference(X)
    return np.ones_like(output) / 3


def gradient(replica: int, array: np.ndarray | None = None, **over: Any) -> vnode.Message:
    """Child b replica `replica`'s gradient of STEP (unless `over` says otherwise)."""
    fields: dict[str, Any] = {"position": STEP, **over}
    return msg("b", replica, grad() if array is None else array, forward=False, **fields)


def in_order() -> vnode.Instance:
    """The same step with the forward pass first: what holding must be equivalent to."""
    h = make(FakeClock())
    h.receive(msg("a", 0, X, position=STEP))
    for r in range(3):
        h.receive(gradient(r))
    return h


def test_gradients_before_the_forward_are_held_then_applied_as_if_in_order() -> None:
    clock = FakeClock()
    h = make(clock)
    for r in (0, 1):  # two child replicas decided and answered before this one computed
        assert h.receive(gradient(r)) == vnode.Received(False, [], [])
    assert h.step == 0
    assert h.receive(gradient(1)).duplicate  # a retried delivery of a held gradient
    computed = h.receive(msg("a", 0, X, position=STEP))
    assert quorum.targets(computed) == [("b", 0), ("b", 1), ("b", 2)]  # only the forward
    assert computed.dropped == ()
    assert h.step == 0  # the third child replica has not answered yet
    last = h.receive(gradient(2))
    assert [(o.forward, o.target) for o in last.outgoing] == [(False, "a")]
    reference = in_order()
    assert h.step == reference.step == 1
    assert h.params is not None
    assert reference.params is not None
    for name, value in reference.params.items():
        np.testing.assert_array_equal(h.params[name], value)


def test_every_gradient_held_means_the_forward_also_completes_the_backward() -> None:
    h = make(FakeClock())
    for r in range(3):
        h.receive(gradient(r))
    done = h.receive(msg("a", 0, X, position=STEP))
    assert [(o.forward, o.target, o.target_replica) for o in done.outgoing] == [
        (True, "b", 0), (True, "b", 1), (True, "b", 2), (False, "a", 0),
    ]  # fmt: skip
    assert h.step == 1
    assert h.receive(gradient(0)).duplicate  # the step is finished


def test_a_held_gradient_that_fails_the_shape_check_is_dropped_with_its_reason() -> None:
    h = make(FakeClock(), {"a": 1, "b": 1})
    h.receive(gradient(0, np.ones((5, 5), np.float32)))
    computed = h.receive(msg("a", 0, X, position=STEP))
    assert quorum.targets(computed) == [("b", 0)]  # the forward still goes out
    (why,) = computed.dropped
    assert "'b' replica 0" in why
    assert "tensor.shape" in why
    assert h.step == 0


@pytest.mark.parametrize("limit", ["count", "bytes"])
def test_holding_is_bounded_past_it_the_gradient_is_refused(
    monkeypatch: pytest.MonkeyPatch, limit: str
) -> None:
    if limit == "count":
        monkeypatch.setattr(vnode, "MAX_HELD", 2)
    else:
        monkeypatch.setattr(vnode, "MAX_HELD_BYTES", 2 * grad().nbytes)
    h = make(FakeClock())
    h.receive(gradient(0))
    h.receive(gradient(1))
    with pytest.raises(vnode.Refused) as refused:
        h.receive(gradient(2))
    assert refused.value.reason == "NoForward"
    assert "limits" in str(refused.value)
    h.receive(msg("a", 0, X, position=STEP))  # released: room again
    assert [o.target for o in h.receive(gradient(2)).outgoing] == ["a"]


def test_a_held_gradient_expires_and_a_later_delivery_is_held_anew() -> None:
    clock = FakeClock()
    h = make(clock)
    h.receive(gradient(0))
    clock.now += vnode.HOLD_SECONDS + 1
    computed = h.receive(msg("a", 0, X, position=STEP))
    assert quorum.targets(computed) == [("b", 0), ("b", 1), ("b", 2)]
    h.receive(gradient(1))
    h.receive(gradient(2))
    assert h.step == 0  # replica 0's gradient expired unapplied
    done = h.receive(gradient(0))  # not a duplicate: its sender retried
    assert [o.target for o in done.outgoing] == ["a"]
    assert h.step == 1


def test_an_expired_position_that_held_nothing_else_is_forgotten() -> None:
    clock = FakeClock()
    h = make(clock)
    h.receive(gradient(0, position=("step", 5)))
    clock.now += vnode.HOLD_SECONDS + 1
    h.receive(gradient(0))  # any message expires what is due
    assert ("j", ("step", 5)) not in h._pending


def test_a_newer_attempt_drops_what_an_older_one_held() -> None:
    h = make(FakeClock(), {"a": 1, "b": 1})
    h.receive(gradient(0))
    computed = h.receive(msg("a", 0, X, position=STEP, attempt=1))
    assert quorum.targets(computed) == [("b", 0)]
    assert h.step == 0  # attempt 0's gradient was not applied to attempt 1's step
    done = h.receive(gradient(0, attempt=1))
    assert [o.target for o in done.outgoing] == ["a"]


def test_a_restore_drops_held_gradients() -> None:
    h = make(FakeClock(), {"a": 1, "b": 1})
    h.receive(gradient(0))
    quorum.restore(h, "j", None)
    computed = h.receive(msg("a", 0, X, position=STEP))
    assert quorum.targets(computed) == [("b", 0)]
    assert h.step == 0
