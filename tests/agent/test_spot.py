"""Spot checks (`agent.runtime.spot`): an honest dense result never fails Freivalds' check,
whatever its shape, scale or dtype; a slight lie (x1.01, below every invariant check), a
single wrong value or a wrong bias fails it."""

from __future__ import annotations

import numpy as np
import pytest

from agent.runtime import kinds
from agent.runtime import layers as _layers  # noqa: F401  (registers the built-in kinds)


def _dense(units: int) -> kinds.Kind:
    return kinds.kind_class("dense")({"units": units})


def _case(seed: int) -> tuple[kinds.Kind, dict[str, np.ndarray], np.ndarray]:
    """A dense layer of a random shape, weight scale and input dtype, with its input."""
    rng = np.random.default_rng(seed)
    n, m = int(rng.integers(1, 200)), int(rng.integers(1, 200))
    lead = tuple(int(d) for d in rng.integers(1, 5, size=int(rng.integers(0, 3))))
    batch = (int(rng.integers(1, 65)), *lead)
    dtype = np.float32 if seed % 3 else np.float64
    scale = 10.0 ** float(rng.uniform(-6, 6))
    kind = _dense(m)
    params = kind.init_params(rng, [(*batch, n)])
    params["W"] = params["W"] * scale
    params["b"] = rng.normal(size=m) * scale * float(rng.integers(0, 2))
    x = (rng.normal(size=(*batch, n)) * 10.0 ** float(rng.uniform(-6, 6))).astype(dtype)
    if seed % 7 == 0:  # mostly zeros, as after a relu
        x = np.maximum(x, 0).astype(dtype)
    return kind, params, x


@pytest.mark.parametrize("seed", range(400))
def test_an_honest_result_never_fails(seed: int) -> None:
    kind, params, x = _case(seed)
    y, _ = kind.forward([x], params, training=False)
    checker = np.random.default_rng(10_000 + seed)
    for _ in range(3):
        verdict = kind.spot_check([x], params, y, checker)
        assert verdict is not None
        assert verdict.passed, f"honest result failed: {verdict.worst:.3g} of the tolerance"


@pytest.mark.parametrize("seed", range(100))
def test_a_slight_lie_fails(seed: int) -> None:
    kind, params, x = _case(seed)
    y, _ = kind.forward([x], params, training=False)
    assert np.any(y), "the case must have an output to lie about"
    checker = np.random.default_rng(seed)
    lied = (y * 1.01).astype(y.dtype)
    verdict = kind.spot_check([x], params, lied, checker)
    assert verdict is not None
    assert not verdict.passed


@pytest.mark.parametrize("seed", range(50))
def test_one_wrong_value_or_a_wrong_bias_fails(seed: int) -> None:
    kind, params, x = _case(seed)
    y, _ = kind.forward([x], params, training=False)
    rng = np.random.default_rng(seed)
    one = y.copy()
    flat = one.reshape(-1)
    i = int(rng.integers(0, flat.size))
    flat[i] = flat[i] + (abs(flat[i]) + float(np.abs(y).max()) + 1e-30) * 1e-3
    assert not kind.spot_check([x], params, one, rng).passed  # type: ignore[union-attr]
    biased = dict(params, b=params["b"] + np.abs(y).max() * 1e-3 + 1e-30)
    assert not kind.spot_check([x], biased, y, rng).passed  # type: ignore[union-attr]


def test_a_result_of_the_wrong_shape_dtype_or_not_finite_fails() -> None:
    kind, params, x = _case(1)
    y, _ = kind.forward([x], params, training=False)
    rng = np.random.default_rng(0)
    assert not kind.spot_check([x], params, y[:-1], rng).passed  # type: ignore[union-attr]
    assert not kind.spot_check([x], params, y.astype(np.float64), rng).passed  # type: ignore[union-attr]
    nan = y.copy()
    nan.reshape(-1)[0] = np.nan
    assert not kind.spot_check([x], params, nan, rng).passed  # type: ignore[union-attr]


def test_kinds_without_a_cheaper_proof_have_none() -> None:
    relu = kinds.kind_class("relu")({})
    x = np.ones((2, 3), dtype=np.float32)
    assert relu.spot_check([x], {}, x, np.random.default_rng(0)) is None
