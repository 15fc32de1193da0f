"""Optimizers, one per VNode, updating only that VNode's parameters (gradient locality).

Each keeps its own slots (velocities, moments, a step count) keyed by parameter name, and
exposes them as flat arrays so a checkpoint can carry them and a restored VNode continues
the exact trajectory it would have followed (momentum and Adam are not memoryless).

A step with no gradients is no step: a VNode whose children all sent "no gradient" does not
call `step`, and Adam's bias correction counts only real updates.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Mapping
from typing import ClassVar

import numpy as np

MOMENTUM = 0.9
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8


class Optimizer(abc.ABC):
    name: ClassVar[str]

    def __init__(self, learning_rate: float) -> None:
        if not (isinstance(learning_rate, int | float) and math.isfinite(learning_rate)):
            raise ValueError(f"learning_rate: {learning_rate!r} must be a finite number > 0")
        if learning_rate <= 0:
            raise ValueError(f"learning_rate: {learning_rate!r} must be a finite number > 0")
        self.learning_rate = float(learning_rate)
        self._slots: dict[str, np.ndarray] = {}

    def step(self, params: dict[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> None:
        """Update `params` (the dict's entries are replaced) from `grads`, which may cover a
        subset of them."""
        for key, grad in grads.items():
            if key not in params:
                raise ValueError(f"grads.{key}: no such parameter; parameters: {sorted(params)}")
            if grad.shape != params[key].shape:
                raise ValueError(
                    f"grads.{key}: shape {list(grad.shape)} does not match the parameter's "
                    f"{list(params[key].shape)}"
                )
        self._begin()
        for key, grad in grads.items():
            value = params[key]
            update = self._update(key, np.asarray(grad, dtype=np.float64))
            params[key] = (value - update).astype(value.dtype, copy=False)

    def _begin(self) -> None:
        """Count the step: the updates applied so far live in the state as "t", a 0-d array
        (Adam's bias correction needs it; for the others it is a record)."""
        self._slots["t"] = np.asarray(float(self._slots.get("t", np.float64(0.0))) + 1.0)

    @abc.abstractmethod
    def _update(self, key: str, grad: np.ndarray) -> np.ndarray:
        """The amount to subtract from parameter `key`."""

    def _slot(self, name: str, key: str, like: np.ndarray) -> np.ndarray:
        slot = self._slots.get(f"{name}/{key}")
        if slot is None or slot.shape != like.shape:
            slot = self._slots[f"{name}/{key}"] = np.zeros(like.shape, dtype=np.float64)
        return slot

    def state_dict(self) -> dict[str, np.ndarray]:
        return {key: value.copy() for key, value in self._slots.items()}

    def load_state_dict(self, state: Mapping[str, np.ndarray]) -> None:
        self._slots = {key: np.array(value, dtype=np.float64) for key, value in state.items()}


class SGD(Optimizer):
    name = "sgd"

    def _update(self, key: str, grad: np.ndarray) -> np.ndarray:
        return self.learning_rate * grad


class Momentum(Optimizer):
    """Heavy ball: v = 0.9 v + g; p -= lr v."""

    name = "momentum"

    def _update(self, key: str, grad: np.ndarray) -> np.ndarray:
        velocity = self._slot("velocity", key, grad)
        velocity *= MOMENTUM
        velocity += grad
        return self.learning_rate * velocity


class Adam(Optimizer):
    """Adam with bias correction by the step count "t"."""

    name = "adam"

    def _update(self, key: str, grad: np.ndarray) -> np.ndarray:
        t = float(self._slots["t"])
        m = self._slot("m", key, grad)
        v = self._slot("v", key, grad)
        m *= BETA1
        m += (1.0 - BETA1) * grad
        v *= BETA2
        v += (1.0 - BETA2) * grad * grad
        m_hat = m / (1.0 - BETA1**t)
        v_hat = v / (1.0 - BETA2**t)
        return np.asarray(self.learning_rate * m_hat / (np.sqrt(v_hat) + EPSILON))


OPTIMIZERS: dict[str, type[Optimizer]] = {cls.name: cls for cls in (SGD, Momentum, Adam)}


def make_optimizer(name: str, learning_rate: float) -> Optimizer:
    cls = OPTIMIZERS.get(name)
    if cls is None:
        raise ValueError(f"optimizer: {name!r} is not one of {', '.join(OPTIMIZERS)}")
    return cls(learning_rate)
