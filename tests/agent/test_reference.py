"""The single-process reference runner: it learns the digits example, it is deterministic, and
its step is exactly the documented math on a graph with a join, a side sink and labels."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.runtime import reference
from api import manifest
from api.resources import network as network_model

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits"

#: The settings the distributed digits run uses too (see the lead's report).
SEED, OPTIMIZER, LEARNING_RATE, BATCH_SIZE, EPOCHS = 1, "adam", 0.01, 64, 15


def digits_network() -> network_model.Network:
    [network] = manifest.load_file(DIGITS / "network.yaml")
    assert isinstance(network, network_model.Network)
    return network


def train_digits(seed: int, epochs: int) -> tuple[reference.Reference, list[float]]:
    runner = reference.Reference(
        digits_network(), seed=seed, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE,
        workdir=ROOT,
    )  # fmt: skip
    count = len(np.load(DIGITS / "data.npz")["y_train"])
    losses = []
    for epoch in range(epochs):
        for batch in reference.batches(seed, epoch, count, BATCH_SIZE):
            loss, _ = runner.train_step(batch)
            losses.append(loss)
    return runner, losses


def test_digits_reaches_95_percent_held_out() -> None:
    runner, losses = train_digits(SEED, EPOCHS)
    test = np.load(DIGITS / "data.npz")
    out = runner.infer({"x": test["x_test"]})
    assert set(out) == {"loss"}
    probs = out["loss"]
    assert probs.shape == (len(test["y_test"]), 10)
    assert probs.dtype == np.float32
    accuracy = float((probs.argmax(axis=1) == test["y_test"]).mean())
    assert accuracy >= 0.95
    assert np.mean(losses[-10:]) < np.mean(losses[:10]) / 5


def test_same_seed_same_params_other_seed_other_params() -> None:
    a, _ = train_digits(SEED, 1)
    b, _ = train_digits(SEED, 1)
    c, _ = train_digits(SEED + 1, 1)
    assert set(a.params) == {"x", "y", "fc1", "act1", "fc2", "loss"}
    for vnode, params in a.params.items():
        assert set(params) == set(b.params[vnode])
        for name, value in params.items():
            np.testing.assert_array_equal(value, b.params[vnode][name])
    assert not np.array_equal(a.params["fc1"]["W"], c.params["fc1"]["W"])


def test_batches_cover_every_row_once_per_epoch() -> None:
    epoch0 = reference.batches(3, 0, 10, 4)
    assert [len(b) for b in epoch0] == [4, 4, 2]
    assert sorted(np.concatenate(epoch0).tolist()) == list(range(10))
    assert all(b.dtype == np.int64 for b in epoch0)
    again = reference.batches(3, 0, 10, 4)
    assert all(np.array_equal(x, y) for x, y in zip(epoch0, again, strict=True))
    epoch1 = np.concatenate(reference.batches(3, 1, 10, 4))
    assert not np.array_equal(np.concatenate(epoch0), epoch1)


# --- the step's math, by hand -------------------------------------------------------------


def joined_network(data_url: str) -> network_model.Network:
    """x feeds two dense layers joined by add into a loss; a relu probe of one of them is a
    second, non-loss sink, whose "no gradient" must change nothing."""
    vnodes: list[dict[str, Any]] = [
        {"name": "x", "kind": "input", "params": {"field": "x"}, "data": {"url": data_url}},
        {"name": "y", "kind": "input", "params": {"field": "y"}, "data": {"url": data_url}},
        {"name": "a", "kind": "dense", "inputs": ["x"], "params": {"units": 3}},
        {"name": "b", "kind": "dense", "inputs": ["x"], "params": {"units": 3}},
        {"name": "probe", "kind": "relu", "inputs": ["a"]},
        {"name": "sum", "kind": "add", "inputs": ["a", "b"]},
        {"name": "loss", "kind": "softmax_cross_entropy", "inputs": ["sum", "y"]},
    ]
    resource = manifest.parse_object({
        "apiVersion": "dcnr.io/v1", "kind": "Network", "metadata": {"name": "joined"},
        "spec": {"vnodes": vnodes},
    })  # fmt: skip
    assert isinstance(resource, network_model.Network)
    return resource


@pytest.fixture
def joined(tmp_path: Path) -> tuple[reference.Reference, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(8, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=8)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    runner = reference.Reference(
        joined_network("file://d.npz"), seed=5, optimizer="sgd", learning_rate=0.5,
        workdir=tmp_path,
    )  # fmt: skip
    return runner, x, y


def test_one_step_is_the_documented_math(
    joined: tuple[reference.Reference, np.ndarray, np.ndarray],
) -> None:
    runner, x, y = joined
    assert runner.order == ["x", "y", "a", "b", "probe", "sum", "loss"]
    assert runner.sinks == ["probe", "loss"]
    assert runner.params == {}, "parameters wait for the first forward to know their width"
    batch = np.array([1, 4, 6, 7])
    runner.infer({"x": x[:1]})  # initializes, as a first forward does, without training
    before = {v: {k: a.copy() for k, a in p.items()} for v, p in runner.params.items()}

    loss, accuracy = runner.train_step(batch)

    xb, yb = x[batch].astype(np.float64), y[batch]
    logits = xb @ before["a"]["W"] + before["a"]["b"] + xb @ before["b"]["W"] + before["b"]["b"]
    logits = logits.astype(np.float32).astype(np.float64)
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    probs /= probs.sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.log(probs[np.arange(4), yb]).mean(), rel=1e-6)
    assert accuracy == float((logits.argmax(axis=1) == yb).mean())
    dlogits = probs.copy()
    dlogits[np.arange(4), yb] -= 1
    dlogits = (dlogits / 4).astype(np.float32).astype(np.float64)
    for vnode in ("a", "b"):  # both get the loss's gradient through add; none from probe
        np.testing.assert_allclose(
            runner.params[vnode]["W"], before[vnode]["W"] - 0.5 * xb.T @ dlogits, rtol=1e-5
        )
        np.testing.assert_allclose(
            runner.params[vnode]["b"], before[vnode]["b"] - 0.5 * dlogits.sum(axis=0), rtol=1e-5
        )
    for stateless in ("x", "y", "probe", "sum", "loss"):
        assert runner.params[stateless] == {}


def test_init_starts_over(joined: tuple[reference.Reference, np.ndarray, np.ndarray]) -> None:
    runner, x, _ = joined
    first = runner.infer({"x": x})["loss"]
    runner.train_step(np.arange(8))
    assert not np.array_equal(runner.infer({"x": x})["loss"], first)
    runner.init()
    np.testing.assert_array_equal(runner.infer({"x": x})["loss"], first)


def test_infer_outputs_every_sink_and_refuses_unknown_sources(
    joined: tuple[reference.Reference, np.ndarray, np.ndarray],
) -> None:
    runner, x, _ = joined
    out = runner.infer({"x": x})
    assert set(out) == {"probe", "loss"}
    assert out["probe"].shape == (8, 3)
    assert (out["probe"] >= 0).all()
    with pytest.raises(ValueError, match="inputs: 'fc1' is not a source; sources: \\['x', 'y'\\]"):
        runner.infer({"fc1": x})


def test_cycles_are_refused() -> None:
    resource = network_model.Network.model_validate({
        "metadata": {"name": "loop"},
        "spec": {"vnodes": [
            {"name": "a", "kind": "relu", "inputs": ["b"]},
            {"name": "b", "kind": "relu", "inputs": ["a"]},
        ]},
    })  # fmt: skip
    with pytest.raises(ValueError, match=r"cycle through \['a', 'b'\]"):
        reference.topological_order(resource)
