"""Built-in loss kinds: softmax_cross_entropy and mse.

Training: the output is float64 [mean loss, accuracy] (accuracy NaN where it has no meaning)
and backward, given no gradient, differentiates that mean loss — a loss is where gradients
start. Given a gradient (a loss with children, which is unusual) it applies the chain rule
through the loss value, grad_output[0]. Targets (labels) never receive a gradient.

Inference: the target input is ignored (the driver sends an empty tensor when the caller has
no labels) and the output is the prediction — softmax probabilities, or the prediction as is.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.runtime import kinds
from api import kinds as api_kinds

KindError = kinds.KindError


def _scale(grad_output: np.ndarray | None) -> float:
    if grad_output is None:
        return 1.0
    if grad_output.shape != (2,):
        raise KindError(
            f"grad_output: a loss outputs [loss, accuracy], so its gradient has shape [2], "
            f"got {list(grad_output.shape)}"
        )
    return float(grad_output[0])


class SoftmaxCrossEntropy(kinds.Kind):
    """inputs [logits (N, C), labels (N,) integers in [0, C)]."""

    name = "softmax_cross_entropy"
    schema = api_kinds.BUILTIN[name]
    is_loss = True

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        logits, labels = inputs
        problem = api_kinds.logits_problem(tuple(logits.shape))
        if problem is not None:
            raise KindError(f"inputs[0]: {problem}")
        z = kinds.as_float(logits, "inputs[0]")
        z = z - z.max(axis=1, keepdims=True)  # exp never overflows; the result is unchanged
        exp = np.exp(z)
        total = exp.sum(axis=1, keepdims=True)
        probs = exp / total
        if not training:
            return probs.astype(kinds.out_dtype([logits])), None
        n, classes = logits.shape
        if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
            raise KindError(
                f"inputs[1]: labels must be {n} integers (shape [{n}]), got dtype "
                f"{labels.dtype.name} shape {list(labels.shape)}"
            )
        if n == 0:
            raise KindError("inputs: an empty batch has no mean loss")
        if labels.min() < 0 or labels.max() >= classes:
            raise KindError(
                f"inputs[1]: labels must lie in [0, {classes}), got "
                f"{int(labels.min())}..{int(labels.max())}"
            )
        rows = np.arange(n)
        log_likelihood = z[rows, labels] - np.log(total[:, 0])
        loss = -log_likelihood.mean()
        accuracy = (logits.argmax(axis=1) == labels).mean()
        return np.array([loss, accuracy], dtype=np.float64), (logits, probs, labels)

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        logits, probs, labels = kinds.need_cache(cache, self.name)
        n = len(labels)
        d = probs.copy()
        d[np.arange(n), labels] -= 1.0
        d *= _scale(grad_output) / n
        return [kinds.grad_like(d, logits), None], {}


class MeanSquaredError(kinds.Kind):
    """inputs [prediction, target] of one shape."""

    name = "mse"
    schema = api_kinds.BUILTIN[name]
    is_loss = True

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        pred, target = inputs
        if not training:
            return pred, None
        if pred.shape != target.shape:
            raise KindError(
                f"inputs[1]: target shape {list(target.shape)} differs from prediction shape "
                f"{list(pred.shape)}"
            )
        if pred.size == 0:
            raise KindError("inputs: an empty batch has no mean loss")
        diff = kinds.as_float(pred, "inputs[0]") - kinds.as_float(target, "inputs[1]")
        loss = np.mean(diff * diff)
        return np.array([loss, np.nan], dtype=np.float64), (pred, diff)

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        pred, diff = kinds.need_cache(cache, self.name)
        d = diff * (2.0 * _scale(grad_output) / pred.size)
        return [kinds.grad_like(d, pred), None], {}


KINDS: tuple[type[kinds.Kind], ...] = (SoftmaxCrossEntropy, MeanSquaredError)
