"""Built-in kinds that are not losses: the data source, the dense layer, activations, joins.

See `kinds` for the contract and the dtype rules every kind here follows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from agent.runtime import data as data_module
from agent.runtime import kinds, spot
from api import kinds as api_kinds

KindError = kinds.KindError


class Input(kinds.Kind):
    """A source. Training: its one input is a batch of row indices into its data array.
    Inference: its one input is the caller's tensor, passed through as is (even empty), so
    inference needs no data ref at all."""

    name = "input"
    schema = api_kinds.BUILTIN[name]

    def __init__(
        self, params: Mapping[str, Any], *, data: data_module.DataSource | None = None
    ) -> None:
        super().__init__(params, data=data)
        field = self.values["field"]
        if field is None and data is not None and data_module.needs_field(data.url):
            raise KindError(
                f"params.field: required by kind 'input' for data {data.url!r}: "
                "the key of the array in the .npz (e.g. x_train)"
            )
        self.field = str(field or "")

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        if not training:
            return inputs[0], None
        if self.data is None:
            raise KindError(
                "data: kind 'input' has no data ref, so it cannot serve a training batch"
            )
        indices = inputs[0]
        if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
            raise KindError(
                f"inputs[0]: batch indices must be a 1-D integer tensor, got dtype "
                f"{indices.dtype.name} shape {list(indices.shape)}"
            )
        array = self.data.array(self.field)
        rows = len(array)
        if indices.size and (indices.min() < 0 or indices.max() >= rows):
            raise KindError(
                f"inputs[0]: batch indices must lie in [0, {rows}) for {self.data.url!r} "
                f"field {self.field!r}; got {int(indices.min())}..{int(indices.max())}"
            )
        return array[indices], None

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        return [None], {}


class Dense(kinds.Kind):
    """y = x @ W + b over the last axis. `init` picks the uniform bound: glorot
    sqrt(6 / (in + units)) keeps variance through linear and tanh layers, he sqrt(6 / in)
    through relu."""

    name = "dense"
    schema = api_kinds.BUILTIN[name]

    def __init__(
        self, params: Mapping[str, Any], *, data: data_module.DataSource | None = None
    ) -> None:
        super().__init__(params, data=data)
        self.units = int(self.values["units"] or 1)
        width = self.values["in_features"]
        self.in_features = None if width is None else int(width)
        self.init = str(self.values["init"])
        self._w_rows: tuple[np.ndarray, np.ndarray] | None = None

    def init_params(
        self, rng: np.random.Generator, input_shapes: Sequence[tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        self.check_input_count(len(input_shapes))
        shape = input_shapes[0]
        width = shape[-1] if shape else 0
        if self.in_features is not None and width != self.in_features:
            raise KindError(
                f"inputs[0]: shape {list(shape)} does not end in params.in_features "
                f"{self.in_features}"
            )
        if width < 1:
            raise KindError(f"inputs[0]: shape {list(shape)} has no feature axis to infer from")
        fan = width + self.units if self.init == "glorot_uniform" else width
        bound = np.sqrt(6.0 / fan)
        return {
            "W": rng.uniform(-bound, bound, size=(width, self.units)),
            "b": np.zeros(self.units),
        }

    def _weights(self, params: Mapping[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        w, b = params.get("W"), params.get("b")
        if w is None or b is None or w.ndim != 2 or w.shape[1] != self.units:
            raise KindError(
                f"params: kind 'dense' needs W (in, {self.units}) and b ({self.units},); "
                f"has {sorted(params)}"
            )
        if b.shape != (self.units,):
            raise KindError(f"params.b: shape {list(b.shape)}, expected [{self.units}]")
        return w, b

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        w, b = self._weights(params)
        x = inputs[0]
        if x.ndim < 1 or x.shape[-1] != w.shape[0]:
            raise KindError(
                f"inputs[0]: shape {list(x.shape)} must end in {w.shape[0]} (the input width "
                "this dense layer was initialized with)"
            )
        x64 = kinds.as_float(x, "inputs[0]")
        y = (x64 @ w + b).astype(kinds.out_dtype([x]))
        return y, (x, x64) if training else None

    def spot_check(
        self,
        inputs: Sequence[np.ndarray],
        params: Mapping[str, np.ndarray],
        claimed: np.ndarray,
        rng: np.random.Generator,
    ) -> spot.Verdict:
        self.check_input_count(len(inputs))
        w, b = self._weights(params)
        x = inputs[0]
        if claimed.dtype != kinds.out_dtype([x]):
            return spot.Verdict(False, float("inf"))
        # |W|'s row sums, kept for the weights they were taken of: inference does not change
        # W, and a change in place (training beside it) only moves the float-error bound,
        # which a failed check's recomputation and comparison absorb (`agent.vnode`).
        kept = self._w_rows
        if kept is None or kept[0] is not w:
            kept = self._w_rows = (w, spot.row_sums(w))
        return spot.dense(x, w, b, claimed, rng, w_rows=kept[1])

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        if grad_output is None:
            return [None], {}
        x, x64 = kinds.need_cache(cache, self.name)
        w, _ = self._weights(params)
        g = kinds.float_grad(grad_output, (*x.shape[:-1], self.units))
        flat_x, flat_g = x64.reshape(-1, w.shape[0]), g.reshape(-1, self.units)
        return [kinds.grad_like(g @ w.T, x)], {"W": flat_x.T @ flat_g, "b": flat_g.sum(axis=0)}


class Elementwise(kinds.Kind):
    """An activation: y = f(x), dy/dx expressed through x and y."""

    @staticmethod
    def apply(x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    @staticmethod
    def derivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        x = inputs[0]
        x64 = kinds.as_float(x, "inputs[0]")
        y64 = self.apply(x64)
        return y64.astype(kinds.out_dtype([x])), (x, x64, y64) if training else None

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        if grad_output is None:
            return [None], {}
        x, x64, y64 = kinds.need_cache(cache, self.name)
        g = kinds.float_grad(grad_output, x.shape)
        return [kinds.grad_like(g * self.derivative(x64, y64), x)], {}


class Relu(Elementwise):
    name = "relu"
    schema = api_kinds.BUILTIN[name]

    @staticmethod
    def apply(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.maximum(x, 0.0), dtype=np.float64)

    @staticmethod
    def derivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return (x > 0).astype(np.float64)


class Tanh(Elementwise):
    name = "tanh"
    schema = api_kinds.BUILTIN[name]

    @staticmethod
    def apply(x: np.ndarray) -> np.ndarray:
        return np.asarray(np.tanh(x), dtype=np.float64)

    @staticmethod
    def derivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return np.asarray(1.0 - y * y, dtype=np.float64)


class Sigmoid(Elementwise):
    name = "sigmoid"
    schema = api_kinds.BUILTIN[name]

    @staticmethod
    def apply(x: np.ndarray) -> np.ndarray:
        # exp of a non-positive number only: no overflow for large |x|.
        e = np.exp(-np.abs(x))
        return np.asarray(np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)), dtype=np.float64)

    @staticmethod
    def derivative(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        return y * (1.0 - y)


class Add(kinds.Kind):
    """The sum of two or more parents of one shape (a residual join)."""

    name = "add"
    schema = api_kinds.BUILTIN[name]

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        shapes = [list(x.shape) for x in inputs]
        if any(s != shapes[0] for s in shapes):
            raise KindError(f"inputs: kind 'add' needs inputs of one shape, got {shapes}")
        total = np.zeros(inputs[0].shape, dtype=np.float64)
        for i, x in enumerate(inputs):
            total += kinds.as_float(x, f"inputs[{i}]")
        return total.astype(kinds.out_dtype(inputs)), list(inputs) if training else None

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        inputs: list[np.ndarray] = kinds.need_cache(cache, self.name)
        if grad_output is None:
            return [None] * len(inputs), {}
        g = kinds.float_grad(grad_output, inputs[0].shape)
        return [kinds.grad_like(g, x) for x in inputs], {}


class Concat(kinds.Kind):
    """Two or more parents side by side along `axis` (default -1, the feature axis)."""

    name = "concat"
    schema = api_kinds.BUILTIN[name]

    def __init__(
        self, params: Mapping[str, Any], *, data: data_module.DataSource | None = None
    ) -> None:
        super().__init__(params, data=data)
        self.axis = int(self.values["axis"] or 0)

    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        self.check_input_count(len(inputs))
        ndim = inputs[0].ndim
        shapes = [list(x.shape) for x in inputs]
        if not -ndim <= self.axis < ndim:
            raise KindError(f"params.axis: {self.axis} is out of range for inputs of {ndim} dims")
        axis = self.axis % ndim
        others = [s[:axis] + s[axis + 1 :] for s in shapes]
        if any(len(s) != ndim for s in shapes) or any(o != others[0] for o in others):
            raise KindError(
                f"inputs: kind 'concat' needs shapes equal except on axis {self.axis}, got {shapes}"
            )
        parts = [kinds.as_float(x, f"inputs[{i}]") for i, x in enumerate(inputs)]
        out = np.concatenate(parts, axis=axis).astype(kinds.out_dtype(inputs))
        return out, (list(inputs), axis) if training else None

    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> kinds.Grads:
        inputs, axis = kinds.need_cache(cache, self.name)
        if grad_output is None:
            return [None] * len(inputs), {}
        shape = list(inputs[0].shape)
        shape[axis] = sum(x.shape[axis] for x in inputs)
        g = kinds.float_grad(grad_output, tuple(shape))
        cuts = np.cumsum([x.shape[axis] for x in inputs])[:-1]
        pieces = np.split(g, cuts, axis=axis)
        return [kinds.grad_like(p, x) for p, x in zip(pieces, inputs, strict=True)], {}


KINDS: tuple[type[kinds.Kind], ...] = (Input, Dense, Relu, Tanh, Sigmoid, Add, Concat)
