"""VNode kinds as the contract declares them: each kind's params schema and the inputs it takes.

One source of truth, read by three parties: manifest validation (`dcnctl apply` offline
and the orchestrator's Apply refuse a wrong kind or param with the field named, before
anything is placed), the agent's runtime (its kind classes read their params through
`KindSchema.read`, so an agent and the manifest cannot disagree about what `units: 0`
means), and the driver's inference check (`output_shape`: a caller's tensor that no VNode
could accept is refused at the call, with the message the agent would have logged).

Why bounds above as well as below: a params value is a promise of memory on a volunteer's
machine. `units: 2**62` passes "an integer >= 1" and then fails on the agent as "array is
too big", over and over, while the job rolls back; refused at apply, it costs nothing.

Plugin kinds (entry-point group "dcnr.vnode_kinds", see `agent.runtime.kinds`): a kind
that is not built in is accepted only where an installed distribution declares it in that
group *and* the object it points at carries a `schema` attribute that is a `KindSchema`
named like the entry point. Where it is not installed (or declares no schema), the
manifest is refused with the known kinds listed, so a typo (`dens`) is never mistaken for
a plugin. Manifests are validated by the orchestrator and by dcnctl, so a plugin kind must
be installed on both (and on the agents that host it).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata
from typing import Any, Literal

ENTRY_POINT_GROUP = "dcnr.vnode_kinds"

#: Largest width a dense layer may have (units, in_features): 65,536 x 65,536 float64
#: weights are already 32 GiB, more than any volunteer offers; anything larger is a typo.
MAX_WIDTH = 65_536
#: numpy's dimension limit: an axis outside +-MAX_AXIS names no axis of any array.
MAX_AXIS = 64
#: A field name (the .npz key) longer than this is not a key anyone wrote.
MAX_FIELD_CHARS = 256

Shape = tuple[int, ...]
ParamValue = int | str


class ParamsError(ValueError):
    """A params value the kind does not take. `field` is relative to the VNode
    (`params.units`, `inputs`); the message names the value and what would be valid."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class ShapeError(ValueError):
    """Inputs of a shape the kind cannot compute on (`field` is `inputs[i]` or `inputs`)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def _show(value: Any) -> str:
    text = json.dumps(value) if isinstance(value, str | bool) or value is None else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass(frozen=True)
class Param:
    """One parameter: its type, bounds and default. `integer` values must be JSON integers
    (`32.0` and `true` are refused: a width is counted, not measured)."""

    name: str
    type: Literal["integer", "string", "choice"]
    doc: str
    required: bool = False
    default: ParamValue | None = None
    minimum: int | None = None
    maximum: int | None = None
    choices: tuple[str, ...] = ()
    max_length: int = MAX_FIELD_CHARS

    def wanted(self) -> str:
        if self.type == "integer":
            low = "" if self.minimum is None else f" >= {self.minimum}"
            high = "" if self.maximum is None else f" and <= {self.maximum}"
            return f"an integer{low}{high}"
        if self.type == "choice":
            return "one of " + ", ".join(self.choices)
        return f"a non-empty string of at most {self.max_length} characters"

    def problem(self, value: Any) -> str | None:
        """What is wrong with `value`, or None."""
        if self.type == "integer":
            ok = (
                isinstance(value, int)
                and not isinstance(value, bool)
                and (self.minimum is None or value >= self.minimum)
                and (self.maximum is None or value <= self.maximum)
            )
        elif self.type == "choice":
            ok = isinstance(value, str) and value in self.choices
        else:
            ok = isinstance(value, str) and 0 < len(value) <= self.max_length
        return None if ok else f"must be {self.wanted()}, got {_show(value)}"


#: (params, input shapes) -> the output shape in inference; raises ShapeError. A shape of
#: None is unknown (e.g. an empty tensor: a loss's labels the caller did not give).
OutputShape = Callable[[Mapping[str, Any], Sequence[Shape | None]], Shape | None]


@dataclasses.dataclass(frozen=True)
class KindSchema:
    """A kind's contract. `arity`: how many tensors one computation takes (minimum,
    maximum or None); a source VNode (no `inputs` in the manifest) takes one, the batch
    indices or the caller's tensor, which the driver sends. `source_only`: the kind reads
    data and takes no parent VNodes (`input`)."""

    name: str
    doc: str
    params: tuple[Param, ...] = ()
    arity: tuple[int, int | None] = (1, 1)
    inputs_doc: str = "1"
    is_loss: bool = False
    source_only: bool = False
    output_shape: OutputShape | None = None
    #: The cheaper proof than recomputation a replica can check this kind's result with
    #: (adaptive validation's spot check, ForwardRequest.spot_check); "": none, a sampled
    #: result of this kind is recomputed by a replica.
    spot_check: str = ""

    @property
    def param_names(self) -> list[str]:
        return [p.name for p in self.params]

    def problems(self, params: Mapping[str, Any]) -> list[ParamsError]:
        """Every wrong param, unknown and missing ones included, in the order declared."""
        found: list[ParamsError] = []
        known = {p.name: p for p in self.params}
        for key in params:
            if key not in known:
                found.append(ParamsError(f"params.{key}", self._unknown(key)))
        for p in self.params:
            if p.name not in params:
                if p.required:
                    found.append(ParamsError(f"params.{p.name}", f"required: {p.doc}"))
                continue
            problem = p.problem(params[p.name])
            if problem is not None:
                found.append(ParamsError(f"params.{p.name}", problem))
        return found

    def read(self, params: Mapping[str, Any]) -> dict[str, ParamValue | None]:
        """Every declared param, its default where not given; ParamsError on the first
        wrong one (the agent's way in: `problems` reports them all)."""
        problems = self.problems(params)
        if problems:
            raise problems[0]
        return {p.name: params.get(p.name, p.default) for p in self.params}

    def check_input_count(self, count: int) -> None:
        low, high = self.arity
        if count < low or (high is not None and count > high):
            if high is None:
                wanted = f"at least {low}"
            else:
                wanted = f"{low}" if low == high else f"{low} to {high}"
            raise ShapeError("inputs", f"kind {self.name!r} takes {wanted} inputs, got {count}")

    def _unknown(self, key: str) -> str:
        if not self.params:
            return f"unknown parameter (kind {self.name!r} takes none)"
        close = difflib.get_close_matches(key, self.param_names, n=1)
        hint = f"did you mean {json.dumps(close[0])}?; " if close else ""
        return f"unknown parameter ({hint}known: {', '.join(self.param_names)})"


# --- the built-in kinds' shapes ------------------------------------------------------------


def _same(params: Mapping[str, Any], shapes: Sequence[Shape | None]) -> Shape | None:
    return shapes[0]


def _dense(params: Mapping[str, Any], shapes: Sequence[Shape | None]) -> Shape | None:
    shape = shapes[0]
    if shape is None:
        return None
    if not shape:
        raise ShapeError("inputs[0]", "a scalar has no feature axis; give [batch, features]")
    width = params.get("in_features")
    if isinstance(width, int) and shape[-1] != width:
        raise ShapeError(
            "inputs[0]", f"shape {list(shape)} does not end in params.in_features {width}"
        )
    return (*shape[:-1], int(params["units"]))


def _add(params: Mapping[str, Any], shapes: Sequence[Shape | None]) -> Shape | None:
    known = [list(s) for s in shapes if s is not None]
    if any(s != known[0] for s in known):
        raise ShapeError("inputs", f"kind 'add' needs inputs of one shape, got {known}")
    return None if len(known) < len(shapes) else tuple(known[0])


def _concat(params: Mapping[str, Any], shapes: Sequence[Shape | None]) -> Shape | None:
    if any(s is None for s in shapes):
        return None
    axis = int(params.get("axis", -1))
    known = [list(s) for s in shapes if s is not None]
    ndim = len(known[0])
    if not -ndim <= axis < ndim:
        raise ShapeError("params.axis", f"{axis} is out of range for inputs of {ndim} dims")
    at = axis % ndim
    others = [s[:at] + s[at + 1 :] for s in known]
    if any(len(s) != ndim for s in known) or any(o != others[0] for o in others):
        raise ShapeError(
            "inputs", f"kind 'concat' needs shapes equal except on axis {axis}, got {known}"
        )
    out = list(known[0])
    out[at] = sum(s[at] for s in known)
    return tuple(out)


def logits_problem(shape: Shape) -> str | None:
    """softmax_cross_entropy's one rule on its logits, shared by the agent and the driver."""
    if len(shape) != 2 or shape[1] < 1:
        return f"logits must have shape [batch, classes], got {list(shape)}"
    return None


def _softmax(params: Mapping[str, Any], shapes: Sequence[Shape | None]) -> Shape | None:
    shape = shapes[0]
    if shape is None:
        return None
    problem = logits_problem(shape)
    if problem is not None:
        raise ShapeError("inputs[0]", problem)
    return shape


_FIELD = Param(
    "field", "string", "the array in the data file (the .npz key; a .npy needs none)"
)
_UNITS = Param(
    "units", "integer", f"the output width, an integer >= 1 and <= {MAX_WIDTH}",
    required=True, minimum=1, maximum=MAX_WIDTH,
)  # fmt: skip
_IN_FEATURES = Param(
    "in_features", "integer", "the input width (inferred from the first input if not given)",
    minimum=1, maximum=MAX_WIDTH,
)  # fmt: skip
_INIT = Param(
    "init", "choice", "the initial weights' uniform bound",
    default="glorot_uniform", choices=("glorot_uniform", "he_uniform"),
)  # fmt: skip
_AXIS = Param(
    "axis", "integer", "the axis to join along", default=-1, minimum=-MAX_AXIS, maximum=MAX_AXIS - 1
)

BUILTIN: dict[str, KindSchema] = {
    s.name: s
    for s in (
        KindSchema(
            "input", "a source: batch indices in training, the caller's tensor in inference",
            params=(_FIELD,), inputs_doc="none (a source)", source_only=True,
            output_shape=_same,
        ),
        KindSchema(
            "dense", "y = x @ W + b over the last axis", params=(_UNITS, _IN_FEATURES, _INIT),
            inputs_doc="1, [..., features]", output_shape=_dense,
            spot_check="freivalds: y @ r == x @ (W @ r) + b @ r for random r",
        ),
        KindSchema("relu", "max(x, 0)", output_shape=_same),
        KindSchema("tanh", "tanh(x)", output_shape=_same),
        KindSchema("sigmoid", "1 / (1 + exp(-x))", output_shape=_same),
        KindSchema(
            "add", "the sum of its inputs", arity=(2, None), inputs_doc=">= 2, same shape",
            output_shape=_add,
        ),
        KindSchema(
            "concat", "its inputs side by side along an axis", params=(_AXIS,),
            arity=(2, None), inputs_doc=">= 2, equal except on axis", output_shape=_concat,
        ),
        KindSchema(
            "softmax_cross_entropy", "outputs [loss, accuracy]; in inference, probabilities",
            arity=(2, 2), inputs_doc="logits [batch, classes], labels [batch] integers",
            is_loss=True, output_shape=_softmax,
        ),
        KindSchema(
            "mse", "outputs [loss, NaN]; in inference, the prediction", arity=(2, 2),
            inputs_doc="prediction, target of one shape", is_loss=True, output_shape=_same,
        ),
    )
}  # fmt: skip


# --- plugins -------------------------------------------------------------------------------


@functools.cache
def _plugin_points() -> dict[str, metadata.EntryPoint]:
    found: dict[str, metadata.EntryPoint] = {}
    for point in metadata.entry_points(group=ENTRY_POINT_GROUP):
        if point.name not in BUILTIN:
            found.setdefault(point.name, point)
    return found


@functools.cache
def _plugin_schema(name: str) -> KindSchema | str:
    """The schema a plugin declares, or why it declares none."""
    point = _plugin_points()[name]
    try:
        loaded = point.load()
    except Exception as exc:  # a broken plugin is a refusal, not a crash of Apply
        return f"its entry point {point.value!r} failed to load: {type(exc).__name__}: {exc}"
    schema = getattr(loaded, "schema", None)
    if not isinstance(schema, KindSchema) or schema.name != name:
        return (
            f"its entry point {point.value!r} declares no params schema (a `schema` "
            f"attribute, an api.kinds.KindSchema named {name!r})"
        )
    return schema


def refresh_plugins() -> None:
    """Forget the scanned entry points (cached: the scan reads every distribution's
    metadata), so kinds installed since are found."""
    _plugin_points.cache_clear()
    _plugin_schema.cache_clear()


def known_kinds() -> list[str]:
    return sorted({*BUILTIN, *_plugin_points()})


def spot_checkable(name: str) -> bool:
    """Whether a built-in kind's result has a cheaper proof than recomputation (its
    schema's `spot_check`); plugin kinds have none: a replica recomputes them."""
    builtin = BUILTIN.get(name)
    return builtin is not None and bool(builtin.spot_check)


#: A dense spot check pays (`spot_pays`) when the product it replaces, b n m multiply-adds,
#: is at least this many times the b n + n m + b m values the check passes over. Measured
#: (benchmarks/README.md, "Validation frontier": CPU seconds per VNode, BLAS on one thread):
#: the check costs 2.8x the product at digits' 64x64x32 (numpy's per-call overhead), 1.4x at
#: 256x1024x10, 0.5x at 256x256x1024 and 0.13-0.18x at 256x1024x1024; the product is 16, 9,
#: 114 and 171 times the passes there.
SPOT_MIN_RATIO = 64


def spot_pays(kind: str, input_shape: Shape | None, output_shape: Shape | None) -> bool:
    """Whether a spot check of a `kind` result with these shapes costs less than
    recomputing it (SPOT_MIN_RATIO); unknown shapes: no (a replica recomputes)."""
    if not spot_checkable(kind) or not input_shape or not output_shape:
        return False
    n, m = input_shape[-1], output_shape[-1]
    b = 1
    for d in input_shape[:-1]:
        b *= d
    return b * n * m >= SPOT_MIN_RATIO * (b * n + n * m + b * m)


def schema_of(name: str) -> KindSchema:
    """The schema of kind `name`; ParamsError("kind", …) naming the known kinds if none."""
    builtin = BUILTIN.get(name)
    if builtin is not None:
        return builtin
    if name in _plugin_points():
        found = _plugin_schema(name)
        if isinstance(found, KindSchema):
            return found
        raise ParamsError("kind", f"kind {json.dumps(name)} is a plugin, but {found}")
    known = known_kinds()
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"did you mean {json.dumps(close[0])}?; " if close else ""
    raise ParamsError("kind", f"unknown kind {json.dumps(name)} ({hint}known: {', '.join(known)})")


def check_vnode(kind: str, params: Mapping[str, Any], parents: int) -> list[ParamsError]:
    """Every problem of one VNode's kind, params and number of parents (0: a source)."""
    try:
        schema = schema_of(kind)
    except ParamsError as exc:
        return [exc]
    found = schema.problems(params)
    if schema.source_only and parents:
        found.append(ParamsError(
            "inputs", f"kind {kind!r} is a source and takes no inputs, got {parents}"
        ))  # fmt: skip
    elif not schema.source_only:
        try:  # a source computes on the one tensor the driver sends it
            schema.check_input_count(max(parents, 1))
        except ShapeError as exc:
            given = parents or "none (a source gets one tensor from the driver)"
            wanted = exc.message.rsplit(", got", 1)[0]
            found.append(ParamsError(exc.field, f"{wanted}, got {given}"))
    return found


# --- shapes through a graph ----------------------------------------------------------------


class GraphShapeError(ValueError):
    """Tensors of these shapes would be refused by VNode `vnode` (kind `kind`) of the graph:
    `problem` is the kind's own words, as the agent hosting it would have logged them."""

    def __init__(self, vnode: str, kind: str, problem: ShapeError) -> None:
        super().__init__(f"vnode {vnode!r} ({kind}) would refuse it: {problem}")
        self.vnode = vnode
        self.kind = kind
        self.problem = problem


def inference_shapes(
    vnodes: Sequence[tuple[str, str, Mapping[str, Any], Sequence[str]]],
    given: Mapping[str, Shape | None],
) -> dict[str, Shape | None]:
    """The output shape of every VNode in inference, from the shapes of the tensors given to
    the sources (None: unknown, e.g. nothing given). `vnodes` is (name, kind, params,
    inputs) of an acyclic graph, as apply accepted it. A kind without a schema or shape
    rule (a plugin) makes its output unknown; unknown shapes are never refused, so this only
    refuses what an agent certainly would. Raises GraphShapeError."""
    shapes: dict[str, Shape | None] = {}
    pending = list(vnodes)
    while pending:
        later = []
        for name, kind, params, inputs in pending:
            if any(parent not in shapes for parent in inputs):
                later.append((name, kind, params, inputs))
                continue
            shapes[name] = _output(name, kind, params, inputs, shapes, given)
        if len(later) == len(pending):  # a cycle apply would have refused: nothing to say
            break
        pending = later
    return shapes


def _output(
    name: str,
    kind: str,
    params: Mapping[str, Any],
    inputs: Sequence[str],
    shapes: Mapping[str, Shape | None],
    given: Mapping[str, Shape | None],
) -> Shape | None:
    schema = BUILTIN.get(kind)
    if schema is None or schema.output_shape is None:
        return None
    if not inputs:
        received: list[Shape | None] = [given.get(name)]
    else:
        received = [shapes[parent] for parent in inputs]
    if schema.is_loss and received[0] is None:
        return None
    try:
        return schema.output_shape(params, received)
    except (ShapeError, KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ShapeError):
            raise GraphShapeError(name, kind, exc) from None
        return None  # params apply would have refused: not this check's to report
