"""Every built-in kind's math against central finite differences, plus params, dtypes and the
registry (built-ins and entry points)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agent.runtime import data, kinds

EPS = 1e-6
RTOL = 1e-5
ATOL = 1e-8


@dataclass
class Case:
    kind: str
    shapes: list[tuple[int, ...]]
    params: dict[str, Any] = field(default_factory=dict)
    #: Input positions that are integer labels, with the number of classes.
    labels: dict[int, int] = field(default_factory=dict)
    #: Input positions that get no gradient by design (labels, regression targets).
    targets: frozenset[int] = frozenset()

    def no_gradient(self, i: int) -> bool:
        return i in self.labels or i in self.targets

    def __str__(self) -> str:
        return f"{self.kind}-{'-'.join('x'.join(map(str, s)) for s in self.shapes)}"


CASES = [
    Case("dense", [(4, 5)], {"units": 3}),
    Case("dense", [(2, 3, 5)], {"units": 2, "in_features": 5, "init": "he_uniform"}),
    Case("relu", [(4, 5)]),
    Case("relu", [(7,)]),
    Case("tanh", [(4, 5)]),
    Case("tanh", [(2, 3, 2)]),
    Case("sigmoid", [(4, 5)]),
    Case("sigmoid", [(7,)]),
    Case("add", [(4, 3), (4, 3)]),
    Case("add", [(2, 2), (2, 2), (2, 2)]),
    Case("concat", [(4, 2), (4, 3)]),
    Case("concat", [(2, 3), (1, 3), (3, 3)], {"axis": 0}),
    Case("softmax_cross_entropy", [(5, 4), (5,)], labels={1: 4}),
    Case("softmax_cross_entropy", [(1, 3), (1,)], labels={1: 3}),
    Case("mse", [(4, 3), (4, 3)], targets=frozenset({1})),
    Case("mse", [(6,), (6,)], targets=frozenset({1})),
]


def make_inputs(case: Case, rng: np.random.Generator) -> list[np.ndarray]:
    inputs = []
    for i, shape in enumerate(case.shapes):
        if i in case.labels:
            inputs.append(rng.integers(0, case.labels[i], size=shape).astype(np.int64))
        else:
            # Away from 0, so relu's kink is never within EPS of a point we differentiate at.
            magnitude = rng.uniform(0.1, 1.5, size=shape)
            inputs.append(np.where(rng.random(shape) < 0.5, -magnitude, magnitude))
    return inputs


def objective(
    kind: kinds.Kind, weights: np.ndarray | None
) -> Callable[[list[np.ndarray], dict[str, np.ndarray]], float]:
    """The scalar we differentiate: a loss's mean loss, or <output, weights> for anything else
    (whose gradient with respect to the output is exactly `weights`)."""

    def f(inputs: list[np.ndarray], params: dict[str, np.ndarray]) -> float:
        out, _ = kind.forward(inputs, params, training=True)
        return float(out[0]) if kind.is_loss else float(np.sum(out * weights))

    return f


def numeric_grad(f: Callable[[], float], array: np.ndarray) -> np.ndarray:
    grad = np.zeros_like(array, dtype=np.float64)
    for index in np.ndindex(array.shape):
        original = array[index]
        array[index] = original + EPS
        up = f()
        array[index] = original - EPS
        down = f()
        array[index] = original
        grad[index] = (up - down) / (2 * EPS)
    return grad


@pytest.mark.parametrize("case", CASES, ids=str)
def test_gradients_match_finite_differences(case: Case) -> None:
    rng = np.random.default_rng(7)
    kind = kinds.kind_class(case.kind)(case.params)
    inputs = make_inputs(case, rng)
    params = kind.init_params(rng, [x.shape for x in inputs])
    # Non-zero biases, so a gradient that ignored them could not pass.
    params = {k: v + rng.normal(0, 0.1, size=v.shape) for k, v in params.items()}
    out, cache = kind.forward(inputs, params, training=True)
    weights = None if kind.is_loss else rng.normal(size=out.shape)
    input_grads, param_grads = kind.backward(weights, cache, params)

    f = objective(kind, weights)
    assert len(input_grads) == len(inputs)
    for i, x in enumerate(inputs):
        if case.no_gradient(i):
            assert input_grads[i] is None, f"target input {i} must get no gradient"
            continue
        expected = numeric_grad(lambda: f(inputs, params), x)
        got = input_grads[i]
        assert got is not None
        assert got.dtype == np.float64
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=ATOL, err_msg=f"input {i}")
    assert set(param_grads) == set(params)
    for name, value in params.items():
        expected = numeric_grad(lambda: f(inputs, params), value)
        np.testing.assert_allclose(param_grads[name], expected, rtol=RTOL, atol=ATOL, err_msg=name)


@pytest.mark.parametrize(
    "case", [c for c in CASES if not kinds.kind_class(c.kind).is_loss], ids=str
)
def test_no_gradient_in_means_no_gradient_out(case: Case) -> None:
    rng = np.random.default_rng(1)
    kind = kinds.kind_class(case.kind)(case.params)
    inputs = make_inputs(case, rng)
    params = kind.init_params(rng, [x.shape for x in inputs])
    _, cache = kind.forward(inputs, params, training=True)
    assert kind.backward(None, cache, params) == ([None] * len(inputs), {})


@pytest.mark.parametrize("case", CASES, ids=str)
def test_float32_stays_float32_on_the_wire(case: Case) -> None:
    rng = np.random.default_rng(2)
    kind = kinds.kind_class(case.kind)(case.params)
    inputs = [
        x if i in case.labels else x.astype(np.float32)
        for i, x in enumerate(make_inputs(case, rng))
    ]
    params = kind.init_params(rng, [x.shape for x in inputs])
    out, cache = kind.forward(inputs, params, training=True)
    assert out.dtype == (np.float64 if kind.is_loss else np.float32)
    grad = None if kind.is_loss else np.ones(out.shape, dtype=np.float32)
    input_grads, _ = kind.backward(grad, cache, params)
    for i, g in enumerate(input_grads):
        if not case.no_gradient(i):
            assert g is not None
            assert g.dtype == np.float32


def test_loss_with_a_gradient_applies_the_chain_rule() -> None:
    kind = kinds.kind_class("mse")({})
    pred, target = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    _, cache = kind.forward([pred, target], {}, training=True)
    [own, _], _ = kind.backward(None, cache, {})
    [scaled, _], _ = kind.backward(np.array([3.0, 0.0]), cache, {})
    assert own is not None
    assert scaled is not None
    np.testing.assert_allclose(scaled, 3.0 * own)


# --- losses: values and inference --------------------------------------------------------


def test_softmax_cross_entropy_loss_and_accuracy() -> None:
    kind = kinds.kind_class("softmax_cross_entropy")({})
    logits = np.array([[2.0, 0.0, 0.0], [0.0, 0.0, 3.0]], dtype=np.float32)
    labels = np.array([0, 1])
    out, _ = kind.forward([logits, labels], {}, training=True)
    p0 = np.exp(2.0) / (np.exp(2.0) + 2.0)
    p1 = 1.0 / (2.0 + np.exp(3.0))
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, [-(np.log(p0) + np.log(p1)) / 2, 0.5], rtol=1e-6)


def test_softmax_cross_entropy_is_stable_for_huge_logits() -> None:
    kind = kinds.kind_class("softmax_cross_entropy")({})
    logits = np.array([[1e4, -1e4, 0.0]])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out, cache = kind.forward([logits, np.array([1])], {}, training=True)
        [grad, _], _ = kind.backward(None, cache, {})
    assert out[0] == pytest.approx(2e4)
    assert grad is not None
    np.testing.assert_allclose(grad, [[1.0, -1.0, 0.0]])


def test_sigmoid_is_stable_for_huge_inputs() -> None:
    kind = kinds.kind_class("sigmoid")({})
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        out, _ = kind.forward([np.array([-1e4, 0.0, 1e4])], {}, training=False)
    np.testing.assert_allclose(out, [0.0, 0.5, 1.0])


def test_softmax_cross_entropy_inference_outputs_probabilities_without_labels() -> None:
    kind = kinds.kind_class("softmax_cross_entropy")({})
    logits = np.random.default_rng(3).normal(size=(6, 4)).astype(np.float32)
    out, cache = kind.forward([logits, np.zeros((0,), np.float32)], {}, training=False)
    assert cache is None
    assert out.dtype == np.float32
    assert out.shape == (6, 4)
    np.testing.assert_allclose(out.sum(axis=1), np.ones(6), rtol=1e-6)
    assert (out.argmax(axis=1) == logits.argmax(axis=1)).all()


def test_mse_loss_and_inference() -> None:
    kind = kinds.kind_class("mse")({})
    pred, target = np.array([[1.0, 2.0]]), np.array([[0.0, 4.0]])
    out, _ = kind.forward([pred, target], {}, training=True)
    assert out[0] == pytest.approx(2.5)
    assert np.isnan(out[1])
    served, _ = kind.forward([pred, np.zeros((0,))], {}, training=False)
    assert served is pred


@pytest.mark.parametrize(
    ("kind", "inputs", "message"),
    [
        ("softmax_cross_entropy", [np.zeros((2, 3)), np.array([0, 3])], r"\[0, 3\)"),
        ("softmax_cross_entropy", [np.zeros((2, 3)), np.array([0.0, 1.0])], "integers"),
        ("softmax_cross_entropy", [np.zeros((2, 3)), np.array([0])], r"shape \[2\]"),
        ("softmax_cross_entropy", [np.zeros((3,)), np.array([0])], "batch, classes"),
        ("mse", [np.zeros((2, 3)), np.zeros((3, 2))], "target shape"),
        ("dense", [np.zeros((2, 4))], "must end in 5"),
        ("add", [np.zeros((2, 3)), np.zeros((3, 2))], "one shape"),
        ("add", [np.zeros((2, 3))], "at least 2 inputs, got 1"),
        ("concat", [np.zeros((2, 3)), np.zeros((3, 3))], "equal except on axis -1"),
        ("relu", [np.zeros(2), np.zeros(2)], "takes 1 inputs, got 2"),
    ],
)
def test_bad_inputs_are_refused(kind: str, inputs: list[np.ndarray], message: str) -> None:
    params = {"units": 2} if kind == "dense" else {}
    instance = kinds.kind_class(kind)(params)
    weights = {"W": np.zeros((5, 2)), "b": np.zeros(2)} if kind == "dense" else {}
    with pytest.raises(kinds.KindError, match=message):
        instance.forward(inputs, weights, training=True)


# --- params ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "params", "message"),
    [
        ("dense", {}, "params.units: required"),
        ("dense", {"units": 0}, "params.units: must be an integer >= 1 .*, got 0 .*'dense'"),
        ("dense", {"units": 2**62}, f"params.units: .* <= 65536, got {2**62}"),
        ("dense", {"units": 32.5}, "params.units: must be an integer .*, got 32.5"),
        ("dense", {"units": "3"}, 'params.units: .*got "3"'),
        ("dense", {"units": True}, "params.units: .*got true"),
        ("dense", {"units": 3, "in_features": -1}, "params.in_features: .*got -1"),
        ("dense", {"units": 3, "init": "zeros"}, 'params.init: .*glorot_uniform.*got "zeros"'),
        ("dense", {"units": 3, "activation": "relu"}, r"params.activation: unknown .*units"),
        ("dense", {"unitz": 3}, r'params.unitz: unknown parameter \(did you mean "units"\?'),
        ("relu", {"alpha": 0.1}, "params.alpha: unknown parameter .*'relu' takes none"),
        ("concat", {"axis": "last"}, 'params.axis: .*got "last"'),
        ("input", {"field": 3}, "params.field: .*got 3"),
    ],
)
def test_invalid_params_name_the_param(kind: str, params: dict[str, Any], message: str) -> None:
    with pytest.raises(kinds.KindError, match=message):
        kinds.kind_class(kind)(params)


def test_dense_init_is_deterministic_and_checks_the_declared_width() -> None:
    kind = kinds.kind_class("dense")({"units": 4, "in_features": 3})
    a = kind.init_params(np.random.default_rng(5), [(8, 3)])
    b = kind.init_params(np.random.default_rng(5), [(8, 3)])
    assert a["W"].shape == (3, 4)
    np.testing.assert_array_equal(a["W"], b["W"])
    np.testing.assert_array_equal(a["b"], np.zeros(4))
    assert np.abs(a["W"]).max() <= np.sqrt(6.0 / 7)
    with pytest.raises(kinds.KindError, match="in_features 3"):
        kind.init_params(np.random.default_rng(5), [(8, 2)])


# --- input -------------------------------------------------------------------------------


@pytest.fixture
def digits_like(tmp_path: Path) -> data.DataSource:
    np.savez(tmp_path / "d.npz", x=np.arange(12, dtype=np.float32).reshape(4, 3), y=np.arange(4))
    return data.DataSource("file://d.npz", workdir=tmp_path)


def test_input_serves_rows_of_its_field_in_training(digits_like: data.DataSource) -> None:
    kind = kinds.kind_class("input")({"field": "x"}, data=digits_like)
    out, _ = kind.forward([np.array([3, 0, 3])], {}, training=True)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, [[9, 10, 11], [0, 1, 2], [9, 10, 11]])
    labels = kinds.kind_class("input")({"field": "y"}, data=digits_like)
    out, _ = labels.forward([np.array([1, 2])], {}, training=True)
    assert out.dtype == np.int64
    assert kind.backward(np.ones((3, 3)), None, {}) == ([None], {})


def test_input_passes_the_callers_tensor_through_in_inference(
    digits_like: data.DataSource,
) -> None:
    kind = kinds.kind_class("input")({"field": "x"}, data=digits_like)
    given = np.ones((2, 3), dtype=np.float32)
    assert kind.forward([given], {}, training=False)[0] is given
    empty = np.zeros((0,), dtype=np.float32)
    assert kind.forward([empty], {}, training=False)[0].shape == (0,)
    bare = kinds.kind_class("input")({})
    assert bare.forward([given], {}, training=False)[0] is given


@pytest.mark.parametrize(
    ("indices", "message"),
    [
        (np.array([0, 4]), r"\[0, 4\) .* got 0..4"),
        (np.array([-1]), r"\[0, 4\)"),
        (np.array([0.0, 1.0]), "1-D integer"),
        (np.array([[0, 1]]), "1-D integer"),
    ],
)
def test_input_refuses_bad_indices(
    digits_like: data.DataSource, indices: np.ndarray, message: str
) -> None:
    kind = kinds.kind_class("input")({"field": "x"}, data=digits_like)
    with pytest.raises(kinds.KindError, match=message):
        kind.forward([indices], {}, training=True)


def test_input_needs_a_field_for_npz_and_data_for_training(
    digits_like: data.DataSource,
) -> None:
    with pytest.raises(kinds.KindError, match=r"params.field: required .* 'file://d.npz'"):
        kinds.kind_class("input")({}, data=digits_like)
    with pytest.raises(kinds.KindError, match="no data ref"):
        kinds.kind_class("input")({}).forward([np.array([0])], {}, training=True)


# --- summing children's gradients -------------------------------------------------------


def test_sum_gradients() -> None:
    a = np.array([1.0, 2.0], dtype=np.float32)
    b = np.array([0.5, 0.5], dtype=np.float32)
    assert kinds.sum_gradients([None, None]) is None
    assert kinds.sum_gradients([]) is None
    total = kinds.sum_gradients([a, None, b])
    assert total is not None
    assert total.dtype == np.float32
    np.testing.assert_array_equal(total, [1.5, 2.5])
    with pytest.raises(kinds.KindError, match="different shapes"):
        kinds.sum_gradients([a, np.zeros(3, dtype=np.float32)])


# --- registry ----------------------------------------------------------------------------

BUILTINS = [
    "add", "concat", "dense", "input", "mse", "relu", "sigmoid", "softmax_cross_entropy", "tanh",
]  # fmt: skip


def test_known_kinds_are_the_builtins() -> None:
    assert kinds.known_kinds() == BUILTINS
    for name in BUILTINS:
        assert kinds.kind_class(name).name == name


def test_unknown_kind_lists_the_known_ones() -> None:
    with pytest.raises(kinds.KindError, match="'conv2d' is not a known VNode kind; known: add, "):
        kinds.kind_class("conv2d")


class Double(kinds.Kind):
    """A plugin kind, as a third-party distribution would ship it."""

    name = "double"

    def forward(self, inputs, params, *, training):
        return inputs[0] * 2, None

    def backward(self, grad_output, cache, params):
        return [None if grad_output is None else grad_output * 2], {}


class NotAKind:
    name = "impostor"


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[metadata.EntryPoint]]:
    """The entry points installed distributions would declare; the scan sees these instead."""
    declared: list[metadata.EntryPoint] = []

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [p for p in declared if p.group == group]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    kinds.refresh_plugins()
    yield declared
    monkeypatch.undo()
    kinds.refresh_plugins()


def entry_point(name: str, value: str) -> metadata.EntryPoint:
    return metadata.EntryPoint(name=name, value=value, group=kinds.ENTRY_POINT_GROUP)


def test_entry_point_kinds_are_found(plugins: list[metadata.EntryPoint]) -> None:
    plugins.append(entry_point("double", f"{__name__}:Double"))
    plugins.append(metadata.EntryPoint(name="other", value="x:Y", group="another.group"))
    assert kinds.kind_class("double") is Double
    assert kinds.known_kinds() == sorted([*BUILTINS, "double"])
    out, _ = kinds.kind_class("double")({}).forward([np.array([1.5])], {}, training=True)
    np.testing.assert_array_equal(out, [3.0])


def test_entry_points_cannot_replace_a_builtin(plugins: list[metadata.EntryPoint]) -> None:
    plugins.append(entry_point("dense", f"{__name__}:Double"))
    assert kinds.kind_class("dense").name == "dense"
    assert kinds.kind_class("dense") is not Double


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("tests.agent.no_such_module:Kind", "failed to load: ModuleNotFoundError"),
        (f"{__name__}:NotAKind", "not a Kind subclass with name 'broken'"),
        (f"{__name__}:Double", "not a Kind subclass with name 'broken'"),
    ],
)
def test_broken_entry_points_are_refused_clearly(
    plugins: list[metadata.EntryPoint], value: str, message: str
) -> None:
    plugins.append(entry_point("broken", value))
    with pytest.raises(kinds.KindError, match=f"'broken' comes from entry point .*{message}"):
        kinds.kind_class("broken")
