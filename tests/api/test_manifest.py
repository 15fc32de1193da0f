"""Manifests: what parses, what is refused, and exactly how the refusal reads."""

from __future__ import annotations

import copy
import json
import pathlib
from typing import Any

import pytest
import yaml

from api import manifest, messages
from api.resources import job, meta, network

EXAMPLE = pathlib.Path(__file__).parents[2] / "examples" / "digits" / "network.yaml"


def vnodes() -> list[dict[str, Any]]:
    return [
        {"name": "in", "kind": "input", "data": {"url": "file://d.npz", "dataset": "digits"}},
        {"name": "fc1", "kind": "dense", "inputs": ["in"], "params": {"units": 32}},
        {"name": "fc2", "kind": "dense", "inputs": ["fc1"], "params": {"units": 10},
         "resources": {"cpu": "250m"}},
        {"name": "loss", "kind": "softmax_cross_entropy", "inputs": ["fc2", "in"]},
    ]


def net(**top: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": "mlp", "labels": {"app": "digits"}},
        "spec": {"vnodes": vnodes()},
    }
    doc.update(top)
    return doc


def with_vnode(i: int, **fields: Any) -> dict[str, Any]:
    doc = net()
    doc["spec"]["vnodes"][i].update(fields)
    return doc


def with_vnodes(items: list[Any]) -> dict[str, Any]:
    return net(spec={"vnodes": items})


def with_meta(**fields: Any) -> dict[str, Any]:
    doc = net()
    doc["metadata"].update(fields)
    return doc


def a_job(**spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Job",
        "metadata": {"name": "train-1"},
        "spec": {"network": "mlp", **spec},
    }


def dump(doc: Any) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def errors_of(text: str | bytes, **kwargs: Any) -> list[manifest.FieldError]:
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_documents(text, **kwargs)
    return info.value.errors


# Good manifests ---------------------------------------------------------------------------

GOOD = [
    pytest.param(dump(net()), ["Network"], id="yaml"),
    pytest.param(json.dumps(net()), ["Network"], id="json"),
    pytest.param(json.dumps(net(), indent="\t"), ["Network"], id="json-tabs"),
    pytest.param(dump(net()) + "---\n" + dump(a_job()), ["Network", "Job"], id="multi-doc"),
    pytest.param("---\n" + dump(net()) + "---\n---\n# nothing\n", ["Network"], id="empty-docs"),
    pytest.param("", [], id="empty-stream"),
    pytest.param(
        json.dumps({"apiVersion": "v1", "kind": "List", "items": [net(), a_job()]}),
        ["Network", "Job"],
        id="json-list",
    ),
    pytest.param(dump({"kind": "List", "items": [a_job()]}), ["Job"], id="yaml-list"),
    pytest.param(EXAMPLE.read_text(), ["Network"], id="example"),
    pytest.param("\ufeff" + dump(net()), ["Network"], id="bom"),
    pytest.param(dump(net()).replace("\n", "\r\n"), ["Network"], id="crlf"),
    pytest.param(
        "apiVersion: dcnr.io/v1\nkind: Network\nmetadata: {name: m}\nspec:\n  vnodes:\n"
        "  - &base {name: a, kind: relu, resources: {cpu: 2, memory: 1Gi}}\n"
        "  - {<<: *base, name: b, inputs: [a]}\n",
        ["Network"],
        id="anchor-and-merge",
    ),
    pytest.param(
        dump(
            with_vnode(
                0,
                resources={"cpu": 0.5, "memory": 1024, "accelerator": {"type": "a100", "count": 2}},
            )
        ),
        ["Network"],
        id="numeric-quantities",
    ),
    pytest.param(dump(a_job(epochs=3, learningRate=1, optimizer="adam")), ["Job"], id="job"),
    pytest.param(
        dump(with_meta(creationTimestamp="2024-01-31T12:00:00Z")), ["Network"], id="timestamp"
    ),
    pytest.param(
        dump(with_meta(labels={"app.kubernetes.io/name": "x", "tier": ""})),
        ["Network"],
        id="label-prefix",
    ),
]


@pytest.mark.parametrize(("text", "kinds"), GOOD)
def test_good_manifests_parse(text: str, kinds: list[str]) -> None:
    found = manifest.parse_documents(text)
    assert [r.KIND for r in found] == kinds


def test_the_example_network_is_the_digits_mlp() -> None:
    (found,) = manifest.load_path(EXAMPLE)
    assert isinstance(found, network.Network)
    assert [v.name for v in found.spec.vnodes] == ["x", "y", "fc1", "act1", "fc2", "loss"]
    for source, field in (("x", "x_train"), ("y", "y_train")):
        vnode = found.vnode(source)
        assert vnode is not None
        assert vnode.params == {"field": field}
        assert vnode.data is not None
        assert (vnode.data.url, vnode.data.dataset) == ("file://examples/digits/data.npz", "digits")
    assert found.spec.vnodes[2].params == {"units": 32}
    assert found.spec.vnodes[4].params == {"units": 10}
    loss = found.spec.vnodes[-1]
    assert (loss.kind, loss.inputs) == ("softmax_cross_entropy", ["fc2", "y"])


def test_parsed_values_are_typed() -> None:
    (found,) = manifest.parse_documents(dump(net()))
    assert isinstance(found, network.Network)
    assert found.spec.vnodes[2].resources.cpu == 250
    assert found.spec.vnodes[0].resources.memory == 64 * 2**20
    assert found.metadata.labels == {"app": "digits"}


# Bad manifests: (document, path, fragment of the message) --------------------------------

BAD = [
    pytest.param(
        net(apiVersion="v2"),
        "apiVersion",
        "unsupported apiVersion 'v2' (valid: dcnr.io/v1)",
        id="api-version",
    ),
    pytest.param(
        {k: v for k, v in net().items() if k != "apiVersion"},
        "apiVersion",
        "required field is missing (valid: dcnr.io/v1)",
        id="api-version-missing",
    ),
    pytest.param(
        {k: v for k, v in net().items() if k != "kind"},
        "kind",
        "required field is missing (one of: Network, Job)",
        id="kind-missing",
    ),
    pytest.param(
        net(kind="Pod"), "kind", "unknown kind 'Pod' (allowed: Network, Job)", id="kind-unknown"
    ),
    pytest.param(net(kind="network"), "kind", "did you mean Network?", id="kind-case"),
    pytest.param(
        net(kind="PNode"),
        "kind",
        "PNode records are written by the system and cannot be applied (allowed: Network, Job)",
        id="kind-pnode",
    ),
    pytest.param(
        net(kind="Allocation"),
        "kind",
        "Allocation records are written by the system",
        id="kind-allocation",
    ),
    pytest.param(net(kind="Orchestrator"), "kind", "Orchestrator records", id="kind-orch"),
    pytest.param(net(kind=["Network"]), "kind", "must be a string", id="kind-list"),
    pytest.param(
        net(spek={}), "spek", 'unknown field "spek"; did you mean "spec"?', id="unknown-top-field"
    ),
    pytest.param(
        {k: v for k, v in net().items() if k != "metadata"},
        "metadata",
        "required field is missing",
        id="metadata-missing",
    ),
    pytest.param(
        net(metadata=["mlp"]), "metadata", "must be a mapping, got a list", id="metadata-list"
    ),
    pytest.param(
        with_meta(name="MLP"),
        "metadata.name",
        "invalid name 'MLP': must be a DNS-1123",
        id="name-uppercase",
    ),
    pytest.param(
        with_meta(name="a.b"), "metadata.name", "must be a DNS-1123 label", id="name-dotted"
    ),
    pytest.param(
        with_meta(name="a" * 64), "metadata.name", "at most 63 characters", id="name-64-chars"
    ),
    pytest.param(
        with_meta(name=None), "metadata.name", "must be a string, got null", id="name-null"
    ),
    pytest.param(
        with_meta(labels={"app": "-x"}),
        "metadata.labels",
        "invalid label value '-x' for key 'app'",
        id="label-value",
    ),
    pytest.param(
        with_meta(labels={"app": 1}),
        "metadata.labels.app",
        "must be a string, got 1",
        id="label-int",
    ),
    pytest.param(
        with_meta(creationTimestamp="yesterday"),
        "metadata.creationTimestamp",
        "must be an RFC 3339 timestamp",
        id="timestamp",
    ),
    pytest.param(
        with_meta(generation=-1),
        "metadata.generation",
        "must be at least 0, got -1",
        id="generation-negative",
    ),
    pytest.param(
        {k: v for k, v in net().items() if k != "spec"},
        "spec",
        "required field is missing",
        id="spec-missing",
    ),
    pytest.param(
        with_vnodes([]), "spec.vnodes", "must have at least 1 item, got 0", id="vnodes-empty"
    ),
    pytest.param(
        net(spec={"vnodes": None}), "spec.vnodes", "must be a list, got null", id="vnodes-null"
    ),
    pytest.param(
        net(spec={"vnodes": {"in": {}}}),
        "spec.vnodes",
        "must be a list, got a mapping",
        id="vnodes-mapping",
    ),
    pytest.param(
        with_vnodes([*vnodes(), "fc3"]),
        "spec.vnodes[4]",
        "must be a mapping, got 'fc3'",
        id="vnode-string",
    ),
    pytest.param(
        with_vnodes([*vnodes(), {"kind": "relu", "inputs": ["fc2"]}]),
        "spec.vnodes[4].name",
        "required field is missing",
        id="vnode-name-missing",
    ),
    pytest.param(
        with_vnode(1, name="FC1"),
        "spec.vnodes[1].name",
        "invalid name 'FC1'",
        id="vnode-name-invalid",
    ),
    pytest.param(
        with_vnode(1, kind="Dense"),
        "spec.vnodes[1].kind",
        "invalid vnode kind 'Dense'",
        id="vnode-kind",
    ),
    pytest.param(
        with_vnode(1, replica=2),
        "spec.vnodes[1].replica",
        'unknown field "replica"; did you mean "replicas"? (known: name, kind, params,',
        id="unknown-vnode-field",
    ),
    pytest.param(
        with_vnode(1, replicas=40),
        "spec.vnodes[1].replicas",
        "must be at most 16, got 40",
        id="replicas-too-many",
    ),
    pytest.param(
        with_vnode(1, replicas=0),
        "spec.vnodes[1].replicas",
        "must be at least 1, got 0",
        id="replicas-zero",
    ),
    pytest.param(
        with_vnode(1, replicas="3"),
        "spec.vnodes[1].replicas",
        "must be an integer, got '3'",
        id="replicas-string",
    ),
    pytest.param(
        with_vnode(1, replicas=1.5),
        "spec.vnodes[1].replicas",
        "must be an integer, got 1.5",
        id="replicas-float",
    ),
    pytest.param(
        with_vnode(1, critical="yes"),
        "spec.vnodes[1].critical",
        "must be true or false, got 'yes'",
        id="critical-string",
    ),
    pytest.param(
        with_vnode(1, params=[1, 2]),
        "spec.vnodes[1].params",
        "must be a mapping, got a list",
        id="params-list",
    ),
    pytest.param(
        with_vnode(1, params={"w": "x" * network.MAX_PARAMS_BYTES}),
        "spec.vnodes[1].params",
        "more than the limit of 65536",
        id="params-too-big",
    ),
    pytest.param(
        with_vnode(0, resources={"memory": "12Qi"}),
        "spec.vnodes[0].resources.memory",
        "invalid memory quantity '12Qi': unknown suffix 'Qi' (known: Ki, Mi,",
        id="memory-suffix",
    ),
    pytest.param(
        with_vnode(0, resources={"memory": [1]}),
        "spec.vnodes[0].resources.memory",
        "memory must be a number or a quantity string, got list",
        id="memory-list",
    ),
    pytest.param(
        with_vnode(0, resources={"cpu": "-1"}),
        "spec.vnodes[0].resources.cpu",
        "invalid cpu quantity '-1'",
        id="cpu-negative",
    ),
    pytest.param(
        with_vnode(0, resources={"cpu": "0.0005"}),
        "spec.vnodes[0].resources.cpu",
        "finer than 1m",
        id="cpu-too-fine",
    ),
    pytest.param(
        with_vnode(0, resources={"cpu": True}),
        "spec.vnodes[0].resources.cpu",
        "not a boolean",
        id="cpu-bool",
    ),
    pytest.param(
        with_vnode(0, resources={"accelerator": {"type": "a100", "count": 0}}),
        "spec.vnodes[0].resources.accelerator.count",
        "must be at least 1, got 0",
        id="accelerator-count",
    ),
    pytest.param(
        with_vnode(0, resources={"accelerator": {"type": "a 100"}}),
        "spec.vnodes[0].resources.accelerator.type",
        "invalid accelerator type 'a 100'",
        id="accelerator-type",
    ),
    pytest.param(
        with_vnode(0, data={"url": "http://x/d.npz"}),
        "spec.vnodes[0].data.url",
        "must start with file:// or s3://",
        id="data-scheme",
    ),
    pytest.param(
        with_vnode(0, data={"url": "s3:///key"}),
        "spec.vnodes[0].data.url",
        "s3:// needs a bucket",
        id="data-bucket",
    ),
    pytest.param(
        with_vnode(0, data={"url": "file://d", "dataset": "Digits"}),
        "spec.vnodes[0].data.dataset",
        "invalid name 'Digits'",
        id="data-dataset",
    ),
    pytest.param(
        net(spec={"vnodes": vnodes(), "validation": "all"}),
        "spec.validation",
        "must be 'none', 'replicas' or 'adaptive', got 'all'",
        id="validation",
    ),
    pytest.param(
        net(spec={"vnodes": vnodes(), "validation": "adaptive", "spotCheck": "sometimes"}),
        "spec.spotCheck",
        "must be 'auto', 'always' or 'never', got 'sometimes'",
        id="spot-check",
    ),
    pytest.param(
        with_vnode(1, inputs="in"),
        "spec.vnodes[1].inputs",
        "must be a list, got 'in'",
        id="inputs-string",
    ),
    pytest.param(
        with_vnode(1, inputs=[f"x{i}" for i in range(65)]),
        "spec.vnodes[1].inputs",
        "must have at most 64 items",
        id="inputs-too-many",
    ),
    pytest.param(
        with_vnode(1, inputs=[7]),
        "spec.vnodes[1].inputs[0]",
        "must be a string, got 7",
        id="input-int",
    ),
    pytest.param(
        with_vnode(3, name="fc1"),
        "spec.vnodes[3].name",
        'duplicate vnode name "fc1" (first at spec.vnodes[1])',
        id="duplicate-name",
    ),
    pytest.param(
        with_vnode(2, inputs=["fc9"]),
        "spec.vnodes[2].inputs[0]",
        'unknown vnode "fc9" (known: in, fc1, fc2, loss)',
        id="unknown-input",
    ),
    pytest.param(
        with_vnode(2, inputs=["fc2"]),
        "spec.vnodes[2].inputs[0]",
        'vnode "fc2" lists itself as an input',
        id="self-loop",
    ),
    pytest.param(
        with_vnode(2, inputs=["fc1", "in", "fc1"]),
        "spec.vnodes[2].inputs[2]",
        'duplicate input "fc1" (also at inputs[0])',
        id="duplicate-input",
    ),
    pytest.param(
        with_vnode(1, inputs=["in", "fc2"]), "spec.vnodes", "cycle fc1 -> fc2 -> fc1", id="cycle"
    ),
    pytest.param(
        with_vnode(0, inputs=["loss"]),
        "spec.vnodes",
        "cycle in -> fc1 -> fc2 -> loss -> in",
        id="cycle-through-all",
    ),
    pytest.param(
        with_vnodes([{"name": "a", "kind": "relu", "inputs": ["ghost"]}]),
        "spec.vnodes",
        "no source vnode: at least one vnode must have no inputs",
        id="no-source",
    ),
    pytest.param(
        with_vnodes(
            [
                {"name": "a", "kind": "relu", "inputs": ["b"]},
                {"name": "b", "kind": "relu", "inputs": ["a"]},
            ]
        ),
        "spec.vnodes",
        "no sink vnode",
        id="no-sink",
    ),
    pytest.param(
        net(status={"phase": "Happy"}),
        "status.phase",
        "must be 'Pending', 'Allocating', 'Ready', 'Degraded' or 'Terminating'",
        id="status-phase",
    ),
    pytest.param(
        {k: v for k, v in a_job().items() if k != "spec"} | {"spec": {}},
        "spec.network",
        "required field is missing",
        id="job-network-missing",
    ),
    pytest.param(a_job(epochs=0), "spec.epochs", "must be at least 1, got 0", id="job-epochs"),
    pytest.param(
        a_job(optimizer="rmsprop"),
        "spec.optimizer",
        "must be 'sgd', 'momentum' or 'adam', got 'rmsprop'",
        id="job-optimizer",
    ),
    pytest.param(
        a_job(learningRate="fast"),
        "spec.learningRate",
        "must be a number, got 'fast'",
        id="job-learning-rate",
    ),
    pytest.param(
        {"apiVersion": "v1", "kind": "List", "items": [net(), with_vnode(1, replicas=0)]},
        "items[1].spec.vnodes[1].replicas",
        "must be at least 1",
        id="list-item",
    ),
    pytest.param(
        {"kind": "List", "items": [net(), 3]},
        "items[1]",
        "a manifest must be a mapping",
        id="list-item-scalar",
    ),
    pytest.param(
        {"kind": "List", "items": {"a": net()}},
        "items",
        "must be a list, got a mapping",
        id="list-items-mapping",
    ),
    pytest.param(
        {"kind": "List", "items": [{"kind": "List", "items": []}]},
        "items[0].kind",
        "a List may not contain another List",
        id="list-nested",
    ),
    pytest.param(
        {"kind": "List", "apiVersion": "v9", "items": []},
        "apiVersion",
        "unsupported apiVersion 'v9' for a List",
        id="list-api-version",
    ),
    pytest.param(
        ["not", "a", "mapping"],
        "",
        "a manifest must be a mapping with apiVersion, kind",
        id="document-list",
    ),
    pytest.param("just a string", "", "got 'just a string'", id="document-scalar"),
]


@pytest.mark.parametrize("form", ["yaml", "json"])
@pytest.mark.parametrize(("doc", "path", "fragment"), BAD)
def test_bad_manifests_name_the_field(doc: Any, path: str, fragment: str, form: str) -> None:
    text = dump(doc) if form == "yaml" else json.dumps(doc)
    found = errors_of(text, source="network.yaml")
    messages = [(e.path, e.message) for e in found]
    assert any(p == path and fragment in m for p, m in messages), messages
    assert all(e.source == "network.yaml" for e in found)


def test_vnodes_per_network_are_limited() -> None:
    items = [{"name": f"v{i}", "kind": "relu"} for i in range(network.MAX_VNODES + 1)]
    (err,) = errors_of(json.dumps(with_vnodes(items)))
    assert (err.path, err.message) == ("spec.vnodes", "must have at most 10000 items, got 10001")
    assert manifest.parse_documents(json.dumps(with_vnodes(items[:-1])))


def test_every_problem_is_reported_at_once() -> None:
    doc = net(apiVersion="v2")
    doc["metadata"]["name"] = "a.b"
    doc["spec"]["vnodes"][0]["resources"] = {"memory": "12Qi"}
    doc["spec"]["vnodes"][1]["replicas"] = 40
    doc["spec"]["vnodes"][2]["inputs"] = ["fc9"]
    doc["spec"]["vnodes"][3]["name"] = "fc1"
    paths = {e.path for e in errors_of(dump(doc))}
    assert paths == {
        "apiVersion",
        "metadata.name",
        "spec.vnodes[0].resources.memory",
        "spec.vnodes[1].replicas",
        "spec.vnodes[2].inputs[0]",
        "spec.vnodes[3].name",
    }


def test_error_lines_name_file_document_and_path() -> None:
    bad = with_vnodes([*vnodes()[:3], {"name": "out", "kind": "relu", "inputs": ["fc9"]}])
    bad["spec"]["vnodes"][3]["inputs"] = ["fc9"]
    text = dump(net()) + "---\n" + dump(bad)
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_documents(text, source="network.yaml")
    assert str(info.value) == (
        'network.yaml: document 2: spec.vnodes[3].inputs[0]: unknown vnode "fc9" '
        "(known: in, fc1, fc2, out)"
    )
    assert isinstance(info.value, ValueError)


def test_a_single_document_file_omits_the_document_number() -> None:
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_documents(dump(with_vnode(1, replicas=40)), source="n.yaml")
    assert str(info.value) == "n.yaml: spec.vnodes[1].replicas: must be at most 16, got 40"


def test_too_many_errors_are_summarized() -> None:
    items = [{"name": f"v{i}", "kind": "relu", "replicas": 0} for i in range(80)]
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_documents(json.dumps(with_vnodes(items)))
    assert len(info.value.errors) == 80
    lines = str(info.value).splitlines()
    assert len(lines) == manifest.MAX_REPORTED_ERRORS + 1
    assert lines[-1] == "... and 30 more errors"


def test_unknown_vnode_lists_at_most_twenty_known_names() -> None:
    items: list[dict[str, Any]] = [{"name": f"v{i}", "kind": "relu"} for i in range(30)]
    items.append({"name": "out", "kind": "relu", "inputs": ["nope"]})
    (err,) = errors_of(json.dumps(with_vnodes(items)))
    assert err.message.endswith("v18, v19, ... and 11 more)")


def test_label_keys_with_dots_are_quoted_in_paths() -> None:
    (err,) = errors_of(dump(with_meta(labels={"app.kubernetes.io/name": 5})))
    assert err.path == 'metadata.labels["app.kubernetes.io/name"]'


@pytest.mark.parametrize(
    ("annotations", "fragment"),
    [
        ({"note": "x" * meta.MAX_ANNOTATIONS_BYTES}, "more than the limit of 262144"),
        ({f"k{i}": "x" * 1000 for i in range(300)}, "more than the limit of 262144"),
        ({"bad key!": "x"}, "invalid annotation key 'bad key!'"),
        ({"UPPER.example/x": "x"}, "must be a DNS-1123 subdomain"),
    ],
)
def test_annotations_are_bounded_and_keys_checked(
    annotations: dict[str, str], fragment: str
) -> None:
    (err,) = errors_of(dump(with_meta(annotations=annotations)))
    assert err.path == "metadata.annotations"
    assert fragment in err.message


def test_annotations_within_the_limit_are_kept() -> None:
    fine = {"dcnr.io/owner": "vision", "note": "x" * 1000}
    (found,) = manifest.parse_documents(dump(with_meta(annotations=fine)))
    assert found.metadata.annotations == fine


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        pytest.param(
            "a: 1\nb: 2\na: 3\n",
            "line 3, column 1: duplicate key 'a' (first at line 1)",
            id="duplicate-key",
        ),
        pytest.param("on: 1\n", "key 'on' is read as true, not a string", id="bool-key"),
        pytest.param("1: x\n", "key '1' is read as 1, not a string", id="int-key"),
        pytest.param("? [a]\n: x\n", "mapping keys must be strings", id="list-key"),
        pytest.param("a: [1\nb: 2\n", "invalid YAML at line", id="syntax"),
        pytest.param(
            '{"a": [1, 2}', "invalid JSON at line 1, column 12: Expecting ','", id="json-syntax"
        ),
        pytest.param('{"a": 1, "a": 2}', "duplicate key", id="json-duplicate-key"),
    ],
)
def test_unreadable_text_is_refused(text: str, fragment: str) -> None:
    messages = [str(e) for e in errors_of(text)]
    assert any(fragment in m for m in messages), messages


def test_size_limit_is_a_keyword() -> None:
    text = dump(net())
    assert manifest.parse_documents(text, max_bytes=len(text.encode()))
    (err,) = errors_of(text, max_bytes=100)
    assert "more than the limit of 100 bytes" in err.message


# Decoded objects (the API's path) --------------------------------------------------------


def test_parse_object_applies_the_same_rules() -> None:
    found = manifest.parse_object(copy.deepcopy(a_job()))
    assert isinstance(found, job.Job)
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_object(with_vnode(2, inputs=["fc2"]), source="Apply")
    assert str(info.value).startswith('Apply: spec.vnodes[2].inputs[0]: vnode "fc2" lists itself')


@pytest.mark.parametrize(
    "obj",
    [None, 3, "x", [net()], {"kind": object()}, {"apiVersion": b"dcnr.io/v1"}],
    ids=["none", "int", "str", "list", "object", "bytes"],
)
def test_parse_object_refuses_anything_else(obj: Any) -> None:
    with pytest.raises(manifest.ManifestError):
        manifest.parse_object(obj)


def test_parse_object_refuses_a_recursive_structure() -> None:
    obj: dict[str, Any] = net()
    obj["metadata"]["annotations"] = obj
    with pytest.raises(manifest.ManifestError) as info:
        manifest.parse_object(obj)
    assert "nested more than 64 levels deep" in str(info.value)


def test_api_version_constant_matches_the_models() -> None:
    assert meta.API_VERSION == "dcnr.io/v1"
    assert set(manifest.USER_KINDS) == {"Network", "Job"}


# Error text is bounded -------------------------------------------------------------------


def _cycle(size: int) -> dict[str, Any]:
    items: list[dict[str, Any]] = [{"name": "src", "kind": "input"}]
    items += [
        {"name": f"v{i}", "kind": "relu", "inputs": [f"v{(i + 1) % size}"]} for i in range(size)
    ]
    items.append({"name": "sink", "kind": "relu", "inputs": ["src"]})
    return with_vnodes(items)


@pytest.mark.parametrize(
    "doc",
    [
        pytest.param(with_meta(name="a" * 10_000), id="10k-name"),
        pytest.param(_cycle(3000), id="3000-vnode-cycle"),
        pytest.param(with_meta(labels={"k": "v" * 10_000}), id="10k-label"),
    ],
)
def test_every_error_is_one_line_of_bounded_length(doc: dict[str, Any]) -> None:
    with pytest.raises(manifest.ManifestError) as caught:
        manifest.parse_documents(json.dumps(doc))
    lines = str(caught.value).splitlines()
    assert lines
    for line in lines:
        assert len(line) <= messages.MAX_LINE_CHARS, line[:80]
        assert "characters left out" in line or len(line) < messages.MAX_LINE_CHARS


def test_clip_keeps_short_text_and_marks_what_it_cut() -> None:
    assert messages.clip("spec.vnodes[0]:\n  bad\tvalue") == "spec.vnodes[0]: bad value"
    long = "head " + "x" * 2000 + " what is wrong"
    clipped = messages.clip(long)
    assert len(clipped) <= messages.MAX_LINE_CHARS
    assert clipped.startswith("head xxx")
    assert clipped.endswith("xxx what is wrong")  # the end says what is wrong: it stays
    cut = int(clipped.split("...(")[1].split(" ")[0])
    assert len(clipped) - len(f" ...({cut} characters left out)... ") + cut == len(long)
