"""The Kind contract every VNode implements, and the registry that finds kinds by name.

One Kind instance per hosted VNode. It holds only its validated params (and, for `input`,
its data source); the trainable parameters live outside it, in the VNode's state, and are
passed to every call — so a restored checkpoint, a fresh initialization and the reference
runner all drive the same instance the same way, and the math stays a pure function.

Lifecycle, as the agent and `reference` drive it:

    kind = kind_class(assignment.kind)(params, data=source_or_None)   # KindError if bad
    params = state or kind.init_params(initial_rng, [x.shape for x in first_inputs])
    out, cache = kind.forward(inputs, params, training=True)
    input_grads, param_grads = kind.backward(summed_grad_or_None, cache, params)

`init_params` needs the shapes of the first forward's inputs because a layer's width may be
inferred from its parent (`dense` without `in_features`), and parents may be on other
machines: the width is known only when their first tensor arrives. The agent calls it right
before that first forward when no state was restored; initialization stays deterministic,
because the rng is seeded from (network, vnode, seed) alone (`state.initial_rng`).

dtypes: arithmetic runs in float64. A kind's output is float64 when any floating input is,
else float32 (so a float32 data set keeps float32 on the wire, and float64 inputs give the
finite-difference tests full precision); losses output float64 [mean loss, accuracy].
Input gradients come back in the dtype of the input they belong to; integer inputs (indices,
labels) get None. Parameters and their gradients are float64.

Params: a kind's `schema` (`api.kinds.KindSchema`, the contract's declaration, which
manifest validation also checks at apply) says which params it takes, their types, bounds
and defaults, and how many inputs; `values` holds them as the schema read them. A kind
without a schema (an old plugin) falls back to `allowed_params` and `arity`.

Plugins: a distribution may add kinds through the entry-point group "dcnr.vnode_kinds"
(`name = "package.module:Class"`), Class a Kind subclass whose `name` equals the entry
point's; it needs a `schema` for manifests using it to pass apply (see `api.kinds`).
Built-in names cannot be overridden: a VNode named "dense" means the same math on every
PNode.
"""

from __future__ import annotations

import abc
import functools
import importlib
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any, ClassVar

import numpy as np

from agent.runtime import data as data_module
from agent.runtime import errors, spot
from api import kinds as api_kinds

ENTRY_POINT_GROUP = api_kinds.ENTRY_POINT_GROUP
_BUILTIN_MODULES = ("agent.runtime.layers", "agent.runtime.losses")

KindError = errors.KindError
Grads = tuple[list[np.ndarray | None], dict[str, np.ndarray]]


class Kind(abc.ABC):
    name: ClassVar[str]
    #: The contract's declaration of this kind's params and inputs (module docstring).
    schema: ClassVar[api_kinds.KindSchema | None] = None
    is_loss: ClassVar[bool] = False
    #: Without a schema: how many inputs the kind takes (minimum, maximum or None).
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    #: Without a schema: every param the kind understands; anything else is refused.
    allowed_params: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, params: Mapping[str, Any], *, data: data_module.DataSource | None = None
    ) -> None:
        self.values: dict[str, api_kinds.ParamValue | None] = {}
        if self.schema is not None:
            try:
                self.values = self.schema.read(params)
            except api_kinds.ParamsError as exc:
                where = "" if repr(self.name) in str(exc) else f" (kind {self.name!r})"
                raise KindError(f"{exc}{where}") from None
        else:
            unknown = sorted(set(params) - self.allowed_params)
            if unknown:
                valid = ", ".join(sorted(self.allowed_params)) or "none"
                raise KindError(
                    f"params.{unknown[0]}: {params[unknown[0]]!r} is not a param of kind "
                    f"{self.name!r}; valid params: {valid}"
                )
        self.params = dict(params)
        self.data = data

    def check_input_count(self, count: int) -> None:
        """Refuse a VNode wired to the wrong number of parents, before any tensor arrives."""
        schema = self.schema or api_kinds.KindSchema(self.name, "", arity=self.arity)
        try:
            schema.check_input_count(count)
        except api_kinds.ShapeError as exc:
            raise KindError(str(exc)) from None

    def init_params(
        self, rng: np.random.Generator, input_shapes: Sequence[tuple[int, ...]]
    ) -> dict[str, np.ndarray]:
        """Fresh trainable parameters ({} for stateless kinds); see the module docstring."""
        return {}

    @abc.abstractmethod
    def forward(
        self, inputs: Sequence[np.ndarray], params: Mapping[str, np.ndarray], *, training: bool
    ) -> tuple[np.ndarray, Any]:
        """(output, cache for backward); inputs in the order of the VNode's spec `inputs`."""

    def spot_check(
        self,
        inputs: Sequence[np.ndarray],
        params: Mapping[str, np.ndarray],
        claimed: np.ndarray,
        rng: np.random.Generator,
    ) -> spot.Verdict | None:
        """Whether `claimed` is this kind's inference output for `inputs`, by a proof
        cheaper than `forward` (`agent.runtime.spot`); None: the kind has none, and a
        checker recomputes. Declared in the schema's `spot_check` for the driver."""
        return None

    @abc.abstractmethod
    def backward(
        self, grad_output: np.ndarray | None, cache: Any, params: Mapping[str, np.ndarray]
    ) -> Grads:
        """(gradient per input, gradient per param). grad_output None means no gradient
        reached this VNode: a non-loss returns [None] * inputs and {}; a loss differentiates
        its own mean loss."""


def out_dtype(arrays: Sequence[np.ndarray]) -> np.dtype[Any]:
    """float64 if any floating array is float64, else float32 (see the module docstring)."""
    wide = any(a.dtype == np.float64 for a in arrays)
    return np.dtype(np.float64) if wide else np.dtype(np.float32)


def as_float(array: np.ndarray, what: str) -> np.ndarray:
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise KindError(f"{what}: dtype {array.dtype.name} is not numeric")
    return np.asarray(array, dtype=np.float64)


def grad_like(grad: np.ndarray, array: np.ndarray) -> np.ndarray | None:
    """A gradient in its input's dtype; None for integer inputs, which no gradient reaches."""
    if not np.issubdtype(array.dtype, np.floating):
        return None
    return grad.astype(array.dtype, copy=False)


def sum_gradients(grads: Sequence[np.ndarray | None]) -> np.ndarray | None:
    """What a VNode feeds its backward from its children's gradients: their sum, in float64
    so the order of arrival hardly matters, in the dtype of the first; None when every child
    sent the empty "no gradient" marker (None here)."""
    present = [g for g in grads if g is not None]
    if not present:
        return None
    shapes = {g.shape for g in present}
    if len(shapes) > 1:
        raise KindError(f"gradients: children sent different shapes {sorted(shapes)}")
    total = np.zeros(present[0].shape, dtype=np.float64)
    for g in present:
        total += g
    return total.astype(present[0].dtype, copy=False)


def need_cache(cache: Any, kind: str) -> Any:
    if cache is None:
        raise KindError(
            f"backward: kind {kind!r} has no forward cache (was forward run in training?)"
        )
    return cache


def float_grad(grad_output: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if tuple(grad_output.shape) != tuple(shape):
        raise KindError(
            f"grad_output: shape {list(grad_output.shape)} does not match this VNode's "
            f"output shape {list(shape)}"
        )
    return np.asarray(grad_output, dtype=np.float64)


# --- the registry -----------------------------------------------------------------------


@functools.cache
def _builtins() -> dict[str, type[Kind]]:
    # Imported here, not at the top: the built-in kinds import this module.
    found: dict[str, type[Kind]] = {}
    for module_name in _BUILTIN_MODULES:
        module = importlib.import_module(module_name)
        for cls in getattr(module, "KINDS", ()):
            found[cls.name] = cls
    return found


@functools.cache
def _entry_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point)
    return found


@functools.cache
def _plugin(name: str) -> type[Kind]:
    point = _entry_points()[name]
    try:
        cls = point.load()
    except Exception as exc:  # a broken plugin must not take the agent down with it
        raise KindError(
            f"kind: {name!r} comes from entry point {point.value!r} ({ENTRY_POINT_GROUP}), "
            f"which failed to load: {type(exc).__name__}: {exc}"
        ) from exc
    if not (isinstance(cls, type) and issubclass(cls, Kind)) or cls.name != name:
        raise KindError(
            f"kind: {name!r} comes from entry point {point.value!r} ({ENTRY_POINT_GROUP}), "
            f"which is not a Kind subclass with name {name!r}"
        )
    return cls


def known_kinds() -> list[str]:
    return sorted(set(_builtins()) | set(_entry_points()))


def kind_class(name: str) -> type[Kind]:
    builtin = _builtins().get(name)
    if builtin is not None:
        return builtin
    if name in _entry_points():
        return _plugin(name)
    raise KindError(f"kind: {name!r} is not a known VNode kind; known: {', '.join(known_kinds())}")


def refresh_plugins() -> None:
    """Forget the scanned entry points, so kinds installed since are found (the scan is
    cached because it reads every installed distribution's metadata)."""
    _entry_points.cache_clear()
    _plugin.cache_clear()
