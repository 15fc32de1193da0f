"""Each optimizer against updates worked out by hand, and its state surviving a round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest

from agent.runtime import optim


def run(name: str, lr: float, grads: list[float], start: float = 1.0) -> list[float]:
    """The parameter after each step of a one-element parameter."""
    opt = optim.make_optimizer(name, lr)
    params = {"w": np.array([start])}
    seen = []
    for g in grads:
        opt.step(params, {"w": np.array([g])})
        seen.append(float(params["w"][0]))
    return seen


def test_sgd() -> None:
    # w = 1 - 0.1*2 = 0.8, then 0.8 - 0.1*(-1) = 0.9
    assert run("sgd", 0.1, [2.0, -1.0]) == pytest.approx([0.8, 0.9])


def test_momentum() -> None:
    # v1 = 2, w = 1 - 0.1*2 = 0.8; v2 = 0.9*2 + 1 = 2.8, w = 0.8 - 0.28 = 0.52
    assert run("momentum", 0.1, [2.0, 1.0]) == pytest.approx([0.8, 0.52])


def test_adam() -> None:
    # Step 1: m = 0.1*g, v = 0.001*g^2; bias-corrected m^ = g, v^ = g^2, so the step is
    # lr * g/|g| (less epsilon) = 0.1.
    # Step 2 with g2 = 1 after g1 = 2: m = 0.9*0.2 + 0.1 = 0.28, v = 0.999*0.004 + 0.001 = 0.004996;
    # m^ = 0.28/0.19, v^ = 0.004996/0.001999.
    m_hat, v_hat = 0.28 / 0.19, 0.004996 / (1 - 0.999**2)
    second = 0.1 * m_hat / (math.sqrt(v_hat) + 1e-8)
    assert run("adam", 0.1, [2.0, 1.0]) == pytest.approx([0.9, 0.9 - second], rel=1e-9)


def test_params_without_a_gradient_are_left_alone_and_dtypes_kept() -> None:
    opt = optim.make_optimizer("adam", 0.01)
    params: dict[str, np.ndarray] = {"W": np.ones((2, 2), dtype=np.float32), "b": np.zeros(2)}
    opt.step(params, {"W": np.ones((2, 2))})
    assert params["W"].dtype == np.float32
    np.testing.assert_array_equal(params["b"], np.zeros(2))
    assert set(opt.state_dict()) == {"t", "m/W", "v/W"}
    assert float(opt.state_dict()["t"]) == 1.0


@pytest.mark.parametrize("name", ["sgd", "momentum", "adam"])
def test_state_round_trip_continues_the_same_trajectory(name: str) -> None:
    rng = np.random.default_rng(0)
    grads = [{"w": rng.normal(size=3)} for _ in range(6)]
    whole = optim.make_optimizer(name, 0.05)
    params_whole = {"w": np.ones(3)}
    for g in grads:
        whole.step(params_whole, g)

    first = optim.make_optimizer(name, 0.05)
    params = {"w": np.ones(3)}
    for g in grads[:3]:
        first.step(params, g)
    resumed = optim.make_optimizer(name, 0.05)
    resumed.load_state_dict(first.state_dict())
    for g in grads[3:]:
        resumed.step(params, g)
    np.testing.assert_array_equal(params["w"], params_whole["w"])


def test_state_dict_is_a_copy() -> None:
    opt = optim.make_optimizer("momentum", 0.1)
    params = {"w": np.ones(2)}
    opt.step(params, {"w": np.ones(2)})
    opt.state_dict()["velocity/w"][:] = 100.0
    np.testing.assert_array_equal(opt.state_dict()["velocity/w"], np.ones(2))


def test_unknown_optimizer_lists_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="optimizer: 'rmsprop' is not one of sgd, momentum, adam"):
        optim.make_optimizer("rmsprop", 0.1)


@pytest.mark.parametrize("lr", [0.0, -0.1, math.nan, math.inf])
def test_bad_learning_rate(lr: float) -> None:
    with pytest.raises(ValueError, match=r"learning_rate: .* must be a finite number > 0"):
        optim.make_optimizer("sgd", lr)


def test_bad_gradients_are_refused() -> None:
    opt = optim.make_optimizer("sgd", 0.1)
    params = {"w": np.ones(2)}
    with pytest.raises(ValueError, match=r"grads.v: no such parameter; parameters: \['w'\]"):
        opt.step(params, {"v": np.ones(2)})
    with pytest.raises(ValueError, match=r"grads.w: shape \[3\] does not match .* \[2\]"):
        opt.step(params, {"w": np.ones(3)})
