"""The result checks of api.checks, one row per (kind, result, expected failure)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from api import checks

F32 = np.float32
PROBS = np.array([[0.2, 0.8], [0.5, 0.5]], dtype=F32)

CASES: list[tuple[str, str, dict[str, Any], np.ndarray, bool, str | None]] = [
    # (id, kind, params, array, training, failing check or None)
    ("dense ok", "dense", {"units": 3}, np.zeros((4, 3), F32), True, None),
    ("dense units", "dense", {"units": 3}, np.zeros((4, 2), F32), True, "shape"),
    ("dense nan", "dense", {"units": 2}, np.array([[1, np.nan]], F32), True, "finite"),
    ("dense inf", "dense", {"units": 2}, np.array([[1, np.inf]], F32), False, "finite"),
    ("dense int", "dense", {"units": 2}, np.zeros((1, 2), np.int64), True, "dtype"),
    ("relu ok", "relu", {}, np.array([0.0, 2.0], F32), True, None),
    ("relu negative", "relu", {}, np.array([0.0, -0.5], F32), True, "invariant:relu_nonnegative"),
    ("tanh range", "tanh", {}, np.array([1.5], F32), True, "invariant:tanh_range"),
    ("sigmoid range", "sigmoid", {}, np.array([-0.1], F32), True, "invariant:sigmoid_range"),
    ("sigmoid ok", "sigmoid", {}, np.array([0.0, 1.0], F32), True, None),
    ("sce train ok", "softmax_cross_entropy", {}, np.array([0.3, 0.9]), True, None),
    (
        "sce negative loss", "softmax_cross_entropy", {}, np.array([-0.1, 0.9]), True,
        "invariant:loss_nonnegative",
    ),
    (
        "sce accuracy", "softmax_cross_entropy", {}, np.array([0.1, 1.5]), True,
        "invariant:accuracy_range",
    ),
    ("sce nan loss", "softmax_cross_entropy", {}, np.array([np.nan, 0.5]), True, "finite"),
    ("sce shape", "softmax_cross_entropy", {}, np.array([0.1, 0.5, 0.2]), True, "shape"),
    ("mse nan accuracy ok", "mse", {}, np.array([0.5, np.nan]), True, None),
    ("mse negative", "mse", {}, np.array([-1.0, np.nan]), True, "invariant:loss_nonnegative"),
    ("sce infer ok", "softmax_cross_entropy", {}, PROBS, False, None),
    (
        "sce infer sum", "softmax_cross_entropy", {}, PROBS * 1.01, False,
        "invariant:probabilities_sum_to_one",
    ),
    (
        "sce infer negative", "softmax_cross_entropy", {}, np.array([[-0.1, 1.1]], F32), False,
        "invariant:probabilities_sum_to_one",
    ),
    ("sce infer 1-D", "softmax_cross_entropy", {}, np.array([0.5, 0.5], F32), False, "shape"),
    ("input labels", "input", {}, np.array([1, 2], np.int64), True, None),
    ("input nan", "input", {}, np.array([np.nan], F32), True, "finite"),
    ("unknown kind int ok", "", {}, np.array([1], np.int64), True, None),
    ("unknown kind nan", "", {}, np.array([np.nan], F32), True, "finite"),
    ("plugin kind int", "my_plugin", {}, np.array([1], np.int64), True, "dtype"),
    ("plugin loss nan accuracy", "my_loss", {}, np.array([0.5, np.nan]), True, None),
    ("plugin loss nan loss", "my_loss", {}, np.array([np.nan, 0.5]), True, "finite"),
    ("plugin nan", "my_plugin", {}, np.array([np.nan, 0.5], F32), True, "finite"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "params", "array", "training", "failing"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_forward_checks(
    kind: str, params: dict[str, Any], array: np.ndarray, training: bool, failing: str | None
) -> None:
    if failing is None:
        checks.check_forward(kind, params, array, training=training)
        return
    with pytest.raises(checks.CheckFailed) as raised:
        checks.check_forward(kind, params, array, training=training)
    assert raised.value.check == failing
    assert failing in str(raised.value)


@pytest.mark.parametrize(
    ("array", "shape", "failing"),
    [
        (np.zeros(0, F32), (3, 2), None),  # the "no gradient" marker
        (np.ones((3, 2), F32), (3, 2), None),
        (np.ones((3, 2), F32), (2, 3), "shape"),
        (np.array([np.inf], F32), None, "finite"),
        (np.array([1], np.int64), None, "dtype"),
    ],
)
def test_gradient_checks(
    array: np.ndarray, shape: tuple[int, ...] | None, failing: str | None
) -> None:
    if failing is None:
        checks.check_gradient(array, expected_shape=shape)
        return
    with pytest.raises(checks.CheckFailed) as raised:
        checks.check_gradient(array, expected_shape=shape)
    assert raised.value.check == failing


LOGITS = np.array([[1.0, -2.0], [0.5, 3.0]], dtype=F32)


@pytest.mark.parametrize(
    ("mode", "kind", "honest", "caught_by_checks"),
    [
        ("slight", "dense", LOGITS, False),
        ("slight", "softmax_cross_entropy", PROBS, True),  # rows no longer sum to 1
        ("gross", "relu", np.abs(LOGITS), False),
        ("gross", "softmax_cross_entropy", PROBS, True),
        ("nan", "dense", LOGITS, True),
        ("nan", "relu", np.abs(LOGITS), True),
    ],
)
def test_the_liars_lies_against_the_checks(
    mode: str, kind: str, honest: np.ndarray, caught_by_checks: bool
) -> None:
    """What each lie mode of tests.support.liar looks like to a consumer's checks: checks
    catch NaN always and other lies only where an invariant happens to break, which is
    why redundant execution exists."""
    from tests.support import liar

    lied = liar.perturb(honest, mode)
    assert not np.array_equal(lied, honest, equal_nan=True)
    try:
        checks.check_forward(kind, {"units": 2}, lied, training=False)
    except checks.CheckFailed:
        caught = True
    else:
        caught = False
    assert caught is caught_by_checks
