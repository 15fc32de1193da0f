"""Hostile and random input: the only possible outcomes are resources or a ManifestError.

Invariant 5 of DESIGN.md. The hand-written cases are the known ways to hurt a YAML or JSON
reader (bombs, depth, odd types); the hypothesis cases mutate a good manifest at random.
Any other exception fails the test, and so does the reader's last-resort "internal error",
which exists only so that production never crashes on a bug these tests would catch.

Every error is at most MAX_REPORTED_ERRORS lines (and a count of the rest), each one line
of at most `api.error_text.MAX_LINE_CHARS` characters, through the real `dcnctl` too; and no
accepted input takes more than `reader.MEMORY_PER_BYTE` times its size in memory while it is
read (aliases cannot buy more: they grow a document at most `reader.ALIAS_GROWTH` times).
"""

from __future__ import annotations

import copy
import json
import subprocess
import tracemalloc
from pathlib import Path
from typing import Any

import hypothesis
import pytest
import yaml
from hypothesis import strategies as st

from api import manifest
from api import messages as error_text
from api.manifest import reader
from api.resources import meta
from tests.support import procs

SETTINGS = hypothesis.settings(
    max_examples=120,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[hypothesis.HealthCheck.too_slow],
)

GOOD: dict[str, Any] = {
    "apiVersion": "dcnr.io/v1",
    "kind": "Network",
    "metadata": {"name": "mlp", "labels": {"app": "digits"}},
    "spec": {
        "validation": "replicas",
        "vnodes": [
            {
                "name": "in",
                "kind": "input",
                "data": {"url": "file://d.npz", "dataset": "d"},
                "resources": {"cpu": "100m", "memory": "64Mi"},
            },
            {
                "name": "fc1",
                "kind": "dense",
                "inputs": ["in"],
                "params": {"units": 10},
                "resources": {"accelerator": {"type": "a100", "count": 1}},
                "replicas": 2,
            },
            {
                "name": "loss",
                "kind": "softmax_cross_entropy",
                "inputs": ["fc1", "in"],
                "critical": True,
            },
        ],
    },
}


def outcome(data: bytes | str) -> list[meta.Resource] | manifest.ManifestError:
    try:
        return manifest.parse_documents(data, source="fuzz.yaml")
    except manifest.ManifestError as exc:
        return clean(exc)


def object_outcome(obj: Any) -> meta.Resource | manifest.ManifestError:
    try:
        return manifest.parse_object(obj)
    except manifest.ManifestError as exc:
        return clean(exc)


def clean(exc: manifest.ManifestError) -> manifest.ManifestError:
    assert exc.errors, "a ManifestError must carry at least one error"
    assert "internal error" not in str(exc), str(exc)
    lines = str(exc).split("\n")
    assert len(lines) <= manifest.MAX_REPORTED_ERRORS + 1, len(lines)
    for line in lines:
        assert 0 < len(line) <= error_text.MAX_LINE_CHARS, line
    return exc


def messages(data: bytes | str) -> str:
    result = outcome(data)
    assert isinstance(result, manifest.ManifestError), result
    return str(result)


# Known attacks ---------------------------------------------------------------------------


def billion_laughs() -> str:
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    for i in range(1, 10):
        refs = ", ".join([f"*l{i - 1}"] * 9)
        lines.append(f"l{i}: &l{i} [{refs}]")
    return "\n".join(lines) + "\n"


def long_string_laughs() -> str:
    """Few nodes, much text: one 500 KB string aliased 1,000 times (0.5 GB once built)."""
    refs = ", ".join(["*s"] * 1000)
    return f"s: &s {'x' * 500_000}\nl: [{refs}]\n"


HOSTILE = [
    pytest.param(
        billion_laughs(), "expands to more than 16384 characters of text", id="billion-laughs"
    ),
    pytest.param(
        long_string_laughs(),
        f"expands to more than {4 * len(long_string_laughs())} characters of text",
        id="long-string-laughs",
    ),
    pytest.param("a: &a [*a]\n", "refers to a node that contains it", id="recursive-alias"),
    pytest.param("&a {b: [c, *a]}\n", "refers to a node that contains it", id="recursive-map"),
    pytest.param("a: *nope\n", "found undefined alias", id="undefined-alias"),
    pytest.param(
        "a: " + "[" * 70 + "]" * 70 + "\n", "nested more than 64 levels deep", id="deep-yaml-flow"
    ),
    pytest.param(
        "".join("  " * i + f"k{i}:\n" for i in range(70)),
        "nested more than 64",
        id="deep-yaml-block",
    ),
    pytest.param("a: " + "[" * 200_000, "invalid YAML", id="deeper-than-libyaml"),
    pytest.param(
        '{"a":' * 100_000 + "1" + "}" * 100_000, "nested more than 64 levels deep", id="deep-json"
    ),
    pytest.param(
        "!!python/object/apply:os.system [echo hi]\n",
        "could not determine a constructor",
        id="python-tag",
    ),
    pytest.param(
        "a: !!binary aGVsbG8=\n", "a: binary data (!!binary) is not supported", id="binary-tag"
    ),
    pytest.param("a: .nan\n", "a: number nan is not finite", id="yaml-nan"),
    pytest.param('{"a": 1e400}', "a: number inf is not finite", id="json-infinity"),
    pytest.param(
        "a: " + "9" * 5000 + "\n", "an integer has more than 4300 digits", id="yaml-int-5000-digits"
    ),
    pytest.param(
        '{"a": ' + "9" * 5000 + "}",
        "an integer has more than 4300 digits",
        id="json-int-5000-digits",
    ),
    pytest.param("a: 9223372036854775808\n", "does not fit in 64 bits", id="int-over-int64"),
    pytest.param('{"a": "\\ud800"}', "a: string has an unpaired surrogate", id="json-surrogate"),
    pytest.param('{"a": "\ud800"}', "unpaired surrogate at offset 7", id="str-surrogate"),
    pytest.param(bytes(range(256)), "not UTF-8 text: byte 0x80 at offset 128", id="binary"),
    pytest.param("a: b\x00c\n", "character U+0000 at offset 4 is not allowed", id="nul"),
    pytest.param(
        b"#" * (manifest.MAX_DOCUMENT_BYTES + 1), "more than the limit of 1048576", id="oversized"
    ),
    pytest.param("- a\n- b\n", "a manifest must be a mapping", id="top-level-list"),
    pytest.param("42\n", "got 42", id="top-level-int"),
    pytest.param("? !!set {a, b}\n: 1\n", "mapping keys must be strings", id="set-key"),
    pytest.param("a: !!omap [{b: 1}]\nkind: Network\n", "apiVersion: required", id="omap"),
    pytest.param(
        "metadata: {name: 2024-01-01}\napiVersion: dcnr.io/v1\nkind: Job\n",
        "spec: required field is missing",
        id="date-becomes-string",
    ),
]


@pytest.mark.parametrize(("data", "fragment"), HOSTILE)
def test_hostile_input_is_a_manifest_error(data: str | bytes, fragment: str) -> None:
    assert fragment in messages(data)


def test_aliases_within_the_limit_are_fine() -> None:
    text = (
        yaml.safe_dump(GOOD, sort_keys=False).replace(
            "resources:\n      cpu: 100m\n      memory: 64Mi",
            "resources: &r {cpu: 100m, memory: 64Mi}",
        )
        + ""
    )
    text = text.replace("critical: true", "critical: true\n    resources: *r")
    (found,) = manifest.parse_documents(text)
    assert found.to_dict()["spec"]["vnodes"][2]["resources"] == {"cpu": "100m", "memory": "64Mi"}


# Random mutations ------------------------------------------------------------------------

SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "12Qi",
            "500m",
            "1.5Gi",
            "",
            "in",
            "fc1",
            "dcnr.io/v1",
            "Network",
            "PNode",
            "List",
            "s3://",
            "file://x",
            "-",
            "a" * 70,
            "\u00e9\u4e2d",
        ]
    )
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    found = [prefix]
    if isinstance(doc, dict):
        for key, value in doc.items():
            found += paths(value, (*prefix, key))
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            found += paths(value, (*prefix, i))
    return found


ALL_PATHS = paths(GOOD)
INNER_PATHS = [p for p in ALL_PATHS if p]


def parent_of(doc: Any, path: tuple[Any, ...]) -> Any:
    for part in path[:-1]:
        doc = doc[part]
    return doc


@st.composite
def mutated(draw: st.DrawFn) -> Any:
    doc = copy.deepcopy(GOOD)
    for _ in range(draw(st.integers(1, 3))):
        live = [p for p in paths(doc) if p]
        path = draw(st.sampled_from(live))
        parent = parent_of(doc, path)
        action = draw(st.sampled_from(["delete", "replace", "rename", "vnodes"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(VALUES)
        elif action == "rename" and isinstance(parent, dict):
            parent[draw(st.text(max_size=10))] = parent.pop(path[-1])
        elif isinstance(doc.get("spec"), dict) and isinstance(doc["spec"].get("vnodes"), list):
            items = doc["spec"]["vnodes"]
            items = draw(st.permutations(items)) + draw(
                st.lists(st.sampled_from(items or [0]), max_size=2)
            )
            doc["spec"]["vnodes"] = copy.deepcopy(items)
    return doc


def as_yaml(doc: Any) -> str:
    try:
        return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    except (yaml.YAMLError, UnicodeError):
        return json.dumps(doc)


@SETTINGS
@hypothesis.given(mutated())
def test_mutated_manifests_parse_or_fail_cleanly(doc: Any) -> None:
    outcome(as_yaml(doc))
    outcome(json.dumps(doc))
    object_outcome(doc)


@SETTINGS
@hypothesis.given(mutated(), st.data())
def test_truncated_and_corrupted_text_fails_cleanly(doc: Any, data: st.DataObject) -> None:
    text = as_yaml(doc)
    cut = data.draw(st.integers(0, len(text)))
    outcome(text[:cut])
    raw = text.encode("utf-8", "surrogatepass")
    at = data.draw(st.integers(0, len(raw)))
    junk = data.draw(st.binary(max_size=8))
    outcome(raw[:at] + junk + raw[at:])


@SETTINGS
@hypothesis.given(st.binary(max_size=200) | st.text(max_size=200))
def test_random_input_fails_cleanly(data: bytes | str) -> None:
    outcome(data)


@SETTINGS
@hypothesis.given(VALUES)
def test_random_objects_fail_cleanly(obj: Any) -> None:
    object_outcome(obj)
    object_outcome({**GOOD, "spec": obj})


def test_the_unmutated_manifest_is_good() -> None:
    """Without this, every mutation test could pass on a base that never parses."""
    assert [r.KIND for r in manifest.parse_documents(as_yaml(GOOD))] == ["Network"]
    assert manifest.parse_object(GOOD).name == "mlp"


# Memory ----------------------------------------------------------------------------------


def peak_bytes(data: str) -> tuple[bool, int]:
    """(accepted, peak bytes allocated while reading and checking `data`)."""
    tracemalloc.start()
    try:
        accepted = not isinstance(outcome(data), manifest.ManifestError)
        return accepted, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def within_multiple(data: str) -> None:
    accepted, peak = peak_bytes(data)
    if accepted:
        size = max(len(data.encode("utf-8", "surrogatepass")), reader.ALIAS_FLOOR)
        assert peak <= reader.MEMORY_PER_BYTE * size, (peak, size)


def network(vnodes: str) -> str:
    return (
        "apiVersion: dcnr.io/v1\nkind: Network\nmetadata: {name: m}\nspec:\n  vnodes:\n"
        "  - {name: in, kind: input, data: {url: 'file://d.npz'}}\n" + vnodes
    )


def aliased_params(anchor: str, count: int) -> str:
    """VNode v0's params hold `&p anchor`; `count` more VNodes alias it."""
    first = f"  - {{name: v0, kind: dense, inputs: [in], params: {{w: &p {anchor}}}}}\n"
    rest = "".join(
        f"  - {{name: v{i}, kind: dense, inputs: [in], params: {{w: *p}}}}\n"
        for i in range(1, count + 1)
    )
    return network(first + rest)


def nested_anchors(levels: int, count: int) -> str:
    """8**levels numbers in 60 bytes a level, aliased by `count` VNodes: 2.7 KB that was
    accepted as 6 MB in memory before aliases were bounded by the text's size."""
    anchors = ["a0: &a0 [1,1,1,1,1,1,1,1]"] + [
        f"a{i}: &a{i} [{','.join([f'*a{i - 1}'] * 8)}]" for i in range(1, levels + 1)
    ]
    first = f"  - {{name: v0, kind: dense, inputs: [in], params: {{{', '.join(anchors)}}}}}\n"
    rest = "".join(
        f"  - {{name: v{i}, kind: dense, inputs: [in], params: {{w: *a{levels}}}}}\n"
        for i in range(1, count + 1)
    )
    return network(first + rest)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(as_yaml(GOOD), id="good-yaml"),
        pytest.param(json.dumps(GOOD), id="good-json"),
        pytest.param(aliased_params("[" + ",".join(["1"] * 30000) + "]", 15), id="big-anchor"),
        pytest.param(aliased_params("[" + ",".join(["1"] * 16) + "]", 119), id="small-anchor"),
        pytest.param(nested_anchors(3, 39), id="nested-anchors"),
    ],
)
def test_accepted_input_takes_at_most_its_documented_multiple_in_memory(data: str) -> None:
    within_multiple(data)


def test_aliases_grow_a_document_at_most_a_few_times_its_text() -> None:
    assert "aliases expanding too far" in messages_of(nested_anchors(3, 39))
    assert "aliases expanding too far" in messages_of(
        aliased_params("[" + ",".join(["1"] * 30000) + "]", 15)
    )
    # Honest anchors stay welcome: one VNode's (valid) params aliased by 119 more.
    shared = "  - {name: v0, kind: dense, inputs: [in], params: &p {units: 4}}\n" + "".join(
        f"  - {{name: v{i}, kind: dense, inputs: [in], params: *p}}\n" for i in range(1, 120)
    )
    (found,) = manifest.parse_documents(network(shared))
    assert len(found.to_dict()["spec"]["vnodes"]) == 121


def messages_of(data: str) -> str:
    return messages(data)


@hypothesis.settings(SETTINGS, max_examples=40)
@hypothesis.given(mutated())
def test_mutated_manifests_stay_within_the_memory_multiple(doc: Any) -> None:
    within_multiple(as_yaml(doc))
    within_multiple(json.dumps(doc))


# Through the real CLI ------------------------------------------------------------------


@pytest.mark.slow
def test_dcnctl_prints_each_manifest_error_on_one_bounded_line(tmp_path: Path) -> None:
    """A few seeded bad manifests through `dcnctl apply` (parsed before any server is
    asked): exit 1, no traceback, every stderr line at most MAX_LINE_CHARS."""
    cases = {
        "long-name": network("  - {name: '" + "x" * 10_000 + "', kind: dense, inputs: [in]}\n"),
        "bomb": billion_laughs(),
        "nested-anchors": nested_anchors(3, 39),
        "many-errors": network(
            "".join(f"  - {{name: v{i}, kind: dense, inputs: [nope{i}]}}\n" for i in range(200))
        ),
        "deep-json": '{"a":' * 100_000 + "1" + "}" * 100_000,
        "binary": "\x00\x01 not yaml",
    }
    for name, text in cases.items():
        path = tmp_path / f"{name}.yaml"
        path.write_text(text, encoding="utf-8", errors="surrogatepass")
        done = subprocess.run(
            [procs.script("dcnctl"), "apply", "-f", str(path), "--server", "127.0.0.1:1"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 1, (name, done.stderr)
        assert "Traceback" not in done.stderr, (name, done.stderr[-2000:])
        lines = done.stderr.splitlines()
        assert 0 < len(lines) <= manifest.MAX_REPORTED_ERRORS + 1, (name, len(lines))
        for line in lines:
            assert len(line) <= error_text.MAX_LINE_CHARS, (name, len(line))
