"""What a valid result of a built-in VNode kind looks like: the lightweight checks every
consumer runs before it uses a result, whoever produced it.

Part of the contract, not of the agent: the receiving agent and the orchestrator's driver
inbox run the same checks, and an agent written in another language must produce results
that pass them. Checks are cheap (one pass over the tensor) and never need the producer's
inputs or parameters, so a consumer can run them on every message.

    check                               applies to
    ----------------------------------  ------------------------------------------------
    dtype                               every result: float32/float64 (integers only from
                                        `input`, whose data may be labels or indices)
    shape                               dense: last axis == params.units; a loss in
                                        training: [2]; softmax probabilities: 2-D
    finite                              every floating result (a loss's accuracy may be
                                        NaN: mse has none)
    invariant:relu_nonnegative          relu: every value >= 0
    invariant:tanh_range                tanh: every value in [-1, 1]
    invariant:sigmoid_range             sigmoid: every value in [0, 1]
    invariant:loss_nonnegative          a loss in training: loss >= 0
    invariant:accuracy_range            softmax_cross_entropy in training: 0 <= acc <= 1
    invariant:probabilities_sum_to_one  softmax_cross_entropy in inference: each row in
                                        [0, 1] and summing to 1 within PROBABILITY_TOLERANCE

Unknown kinds (plugins) get dtype and finite only; a float64 [2] training output may be a
plugin loss's [loss, accuracy], whose accuracy may be NaN. The checksum of the payload is checked
earlier, when the tensor is decoded (`api.tensors`), and reported as check "checksum".

Checks catch careless and gross lies (NaN, negative ReLU outputs, probabilities that do not
sum to one); a careful liar passes them, which is what redundant execution is for.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from api import kinds

FLOATS = ("float32", "float64")
BUILTIN = frozenset(kinds.BUILTIN)
#: Row sums of softmax probabilities: float32 rounding of C values each ≤ 1 stays far below.
PROBABILITY_TOLERANCE = 1e-4
#: Range checks allow this much float32 rounding outside the mathematical range.
RANGE_SLACK = 1e-6


class CheckFailed(Exception):
    """`check` is the name in the table above; `message` says what was found."""

    def __init__(self, check: str, message: str) -> None:
        super().__init__(check, message)
        self.check = check
        self.message = message

    def __str__(self) -> str:
        return f"check {self.check} failed: {self.message}"


def check_forward(
    kind: str, params: Mapping[str, Any], array: np.ndarray, *, training: bool
) -> None:
    """Raise CheckFailed unless `array` could be the forward output of a `kind` VNode.
    Kind "" (not known to the consumer): only the finiteness of floating values."""
    name = array.dtype.name
    if kind in ("input", ""):
        if np.issubdtype(array.dtype, np.floating) and not np.all(np.isfinite(array)):
            raise CheckFailed("finite", f"{_bad_count(array)} of {array.size} values not finite")
        return
    if name not in FLOATS:
        raise CheckFailed("dtype", f"kind {kind!r} outputs float32 or float64, got {name}")
    if kind in ("softmax_cross_entropy", "mse") and training:
        _check_loss(kind, array)
        return
    if kind not in BUILTIN and training and array.shape == (2,) and name == "float64":
        # Perhaps a plugin loss: [loss, accuracy], where accuracy may be NaN (data plane).
        if not np.isfinite(array[0]) or np.isinf(array[1]):
            raise CheckFailed("finite", f"[loss, accuracy] is {array.tolist()}")
        return
    if not np.all(np.isfinite(array)):
        raise CheckFailed("finite", f"{_bad_count(array)} of {array.size} values not finite")
    if kind == "dense":
        units = params.get("units")
        if isinstance(units, int) and (array.ndim == 0 or array.shape[-1] != units):
            raise CheckFailed(
                "shape", f"dense with units {units} outputs [..., {units}], got {list(array.shape)}"
            )
    elif kind == "relu":
        _range(array, "invariant:relu_nonnegative", 0.0, None)
    elif kind == "tanh":
        _range(array, "invariant:tanh_range", -1.0, 1.0)
    elif kind == "sigmoid":
        _range(array, "invariant:sigmoid_range", 0.0, 1.0)
    elif kind == "softmax_cross_entropy":  # inference: probabilities
        _check_probabilities(array)


def check_gradient(array: np.ndarray, *, expected_shape: tuple[int, ...] | None = None) -> None:
    """A gradient (or the empty "no gradient" marker, shape [0]) sent back along an edge."""
    if array.size == 0 and array.ndim == 1:
        return
    if array.dtype.name not in FLOATS:
        raise CheckFailed("dtype", f"gradients are float32 or float64, got {array.dtype.name}")
    if expected_shape is not None and tuple(array.shape) != tuple(expected_shape):
        raise CheckFailed(
            "shape",
            f"gradient {list(array.shape)} does not match the output {list(expected_shape)}",
        )
    if not np.all(np.isfinite(array)):
        raise CheckFailed("finite", f"{_bad_count(array)} of {array.size} values not finite")


def _check_loss(kind: str, array: np.ndarray) -> None:
    if array.shape != (2,):
        raise CheckFailed(
            "shape", f"{kind} in training outputs [loss, accuracy], got {list(array.shape)}"
        )
    loss, accuracy = float(array[0]), float(array[1])
    if not np.isfinite(loss):
        raise CheckFailed("finite", f"loss is {loss}")
    if loss < 0:
        raise CheckFailed("invariant:loss_nonnegative", f"loss is {loss:g}")
    if kind == "softmax_cross_entropy":
        if not np.isfinite(accuracy):
            raise CheckFailed("finite", f"accuracy is {accuracy}")
        if not 0.0 <= accuracy <= 1.0:
            raise CheckFailed("invariant:accuracy_range", f"accuracy is {accuracy:g}")
    elif np.isinf(accuracy):
        raise CheckFailed("finite", f"accuracy is {accuracy}")


def _check_probabilities(array: np.ndarray) -> None:
    if array.ndim != 2:
        raise CheckFailed("shape", f"probabilities are [batch, classes], got {list(array.shape)}")
    check = "invariant:probabilities_sum_to_one"
    _range(array, check, 0.0, 1.0)
    if array.shape[0] and array.shape[1]:
        error = np.abs(array.astype(np.float64).sum(axis=1) - 1.0)
        worst = int(np.argmax(error))
        if error[worst] > PROBABILITY_TOLERANCE:
            off = int(np.sum(error > PROBABILITY_TOLERANCE))
            raise CheckFailed(
                check,
                f"row {worst} sums to {1.0 + float(error[worst]):.6g} "
                f"(tolerance {PROBABILITY_TOLERANCE:g}); {off} of {array.shape[0]} rows off",
            )


def _range(array: np.ndarray, check: str, low: float | None, high: float | None) -> None:
    if array.size == 0:
        return
    if low is not None and float(array.min()) < low - RANGE_SLACK:
        raise CheckFailed(check, f"minimum {float(array.min()):g} is below {low:g}")
    if high is not None and float(array.max()) > high + RANGE_SLACK:
        raise CheckFailed(check, f"maximum {float(array.max()):g} is above {high:g}")


def _bad_count(array: np.ndarray) -> int:
    return int(np.size(array) - np.count_nonzero(np.isfinite(array)))
