"""Every VNode kind's params schema (api.kinds), checked at apply with the field named, and
the same schema read by the agent's kinds: one source of truth."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from importlib import metadata
from typing import Any, ClassVar

import pytest

from agent.runtime import kinds as runtime_kinds
from api import kinds, manifest

DIGITS: dict[str, Any] = {
    "apiVersion": "dcnr.io/v1",
    "kind": "Network",
    "metadata": {"name": "digits"},
    "spec": {
        "vnodes": [
            {"name": "x", "kind": "input", "params": {"field": "x_train"}},
            {"name": "fc1", "kind": "dense", "inputs": ["x"], "params": {"units": 32}},
            {"name": "y", "kind": "input", "params": {"field": "y_train"}},
            {"name": "loss", "kind": "softmax_cross_entropy", "inputs": ["fc1", "y"]},
        ]
    },
}


def refused(vnode: int, **fields: Any) -> str:
    doc = copy.deepcopy(DIGITS)
    doc["spec"]["vnodes"][vnode].update(fields)
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_object(doc, source="n.yaml")
    return str(info.value)


def test_the_fixture_is_valid() -> None:
    manifest.parse_object(copy.deepcopy(DIGITS), source="n.yaml")


@pytest.mark.parametrize(
    ("vnode", "fields", "line"),
    [
        (1, {"kind": "dens"},
         'n.yaml: spec.vnodes[1].kind: unknown kind "dens" (did you mean "dense"?; known: add, '
         "concat, dense, input, mse, relu, sigmoid, softmax_cross_entropy, tanh)"),
        (1, {"params": {"unitz": 32}},
         'n.yaml: spec.vnodes[1].params.unitz: unknown parameter (did you mean "units"?; '
         "known: units, in_features, init)\n"
         "n.yaml: spec.vnodes[1].params.units: required: the output width, an integer >= 1 "
         "and <= 65536"),
        (1, {"params": {"units": 0}},
         "n.yaml: spec.vnodes[1].params.units: must be an integer >= 1 and <= 65536, got 0"),
        (1, {"params": {"units": 32.5}},
         "n.yaml: spec.vnodes[1].params.units: must be an integer >= 1 and <= 65536, got 32.5"),
        (1, {"params": {"units": 2**62}},
         "n.yaml: spec.vnodes[1].params.units: must be an integer >= 1 and <= 65536, "
         f"got {2**62}"),
        (1, {"params": {"units": 4, "init": "zeros"}},
         "n.yaml: spec.vnodes[1].params.init: must be one of glorot_uniform, he_uniform, "
         'got "zeros"'),
        (0, {"params": {"field": ""}},
         "n.yaml: spec.vnodes[0].params.field: must be a non-empty string of at most 256 "
         'characters, got ""'),
        (1, {"inputs": ["x", "y"]},
         "n.yaml: spec.vnodes[1].inputs: kind 'dense' takes 1 inputs, got 2"),
        (3, {"inputs": ["fc1"]},
         "n.yaml: spec.vnodes[3].inputs: kind 'softmax_cross_entropy' takes 2 inputs, got 1"),
        (2, {"inputs": ["x"]},
         "n.yaml: spec.vnodes[2].inputs: kind 'input' is a source and takes no inputs, got 1"),
        (3, {"params": {"weight": 2}},
         "n.yaml: spec.vnodes[3].params.weight: unknown parameter (kind "
         "'softmax_cross_entropy' takes none)"),
    ],
)  # fmt: skip
def test_wrong_kinds_and_params_are_refused_naming_the_field(
    vnode: int, fields: dict[str, Any], line: str
) -> None:
    assert refused(vnode, **fields) == line


def test_a_source_of_a_kind_that_needs_several_inputs_is_refused() -> None:
    doc = copy.deepcopy(DIGITS)
    doc["spec"]["vnodes"].append({"name": "sum", "kind": "add"})
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_object(doc, source="n.yaml")
    assert str(info.value) == (
        "n.yaml: spec.vnodes[4].inputs: kind 'add' takes at least 2 inputs, "
        "got none (a source gets one tensor from the driver)"
    )


def test_every_builtin_kind_of_the_agent_reads_the_contracts_schema() -> None:
    found = {name: runtime_kinds.kind_class(name) for name in kinds.BUILTIN}
    assert sorted(found) == sorted(runtime_kinds.known_kinds())
    for name, cls in found.items():
        assert cls.schema is kinds.BUILTIN[name]


def test_the_agent_and_apply_say_the_same_about_a_param() -> None:
    with pytest.raises(runtime_kinds.KindError) as info:
        runtime_kinds.kind_class("dense")({"units": 0})
    assert str(info.value).startswith(refused(1, params={"units": 0}).split("spec.vnodes[1].")[1])


# --- plugins --------------------------------------------------------------------------------


class Declared(runtime_kinds.Kind):
    """A plugin kind that declares its schema."""

    name = "scale"
    schema: ClassVar[kinds.KindSchema | None] = kinds.KindSchema(
        "scale", "x * factor", params=(kinds.Param("factor", "integer", "", required=True),)
    )

    def forward(self, inputs, params, *, training):
        return inputs[0] * self.values["factor"], None

    def backward(self, grad_output, cache, params):
        return [grad_output], {}


class Undeclared(Declared):
    name = "legacy"
    schema = None


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[metadata.EntryPoint]]:
    declared: list[metadata.EntryPoint] = []

    def entry_points(*, group: str) -> list[metadata.EntryPoint]:
        return [p for p in declared if p.group == group]

    monkeypatch.setattr(metadata, "entry_points", entry_points)
    kinds.refresh_plugins()
    yield declared
    monkeypatch.undo()
    kinds.refresh_plugins()


def test_a_plugin_kind_is_checked_against_the_schema_it_declares(
    plugins: list[metadata.EntryPoint],
) -> None:
    plugins.append(metadata.EntryPoint("scale", f"{__name__}:Declared", kinds.ENTRY_POINT_GROUP))
    plugins.append(metadata.EntryPoint("legacy", f"{__name__}:Undeclared", kinds.ENTRY_POINT_GROUP))
    doc = copy.deepcopy(DIGITS)
    doc["spec"]["vnodes"][1] = {"name": "fc1", "kind": "scale", "inputs": ["x"],
                                "params": {"factor": 2}}  # fmt: skip
    manifest.parse_object(doc, source="n.yaml")
    assert refused(1, kind="scale", params={"factor": "2"}) == (
        'n.yaml: spec.vnodes[1].params.factor: must be an integer, got "2"'
    )
    assert refused(1, kind="legacy", params={}) == (
        'n.yaml: spec.vnodes[1].kind: kind "legacy" is a plugin, but its entry point '
        f"'{__name__}:Undeclared' declares no params schema (a `schema` attribute, an "
        "api.kinds.KindSchema named 'legacy')"
    )
