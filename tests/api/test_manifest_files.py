"""Manifest files and directories on disk, and resources dumped back to manifests."""

from __future__ import annotations

import json
import pathlib
from typing import Any

import pytest

from api import manifest
from tests.api import test_manifest as cases

# Files and directories -------------------------------------------------------------------


def test_a_directory_loads_every_manifest_in_name_order(tmp_path: pathlib.Path) -> None:
    (tmp_path / "b.json").write_text(json.dumps(cases.a_job()))
    (tmp_path / "a.yaml").write_text(cases.dump(cases.net()))
    second = cases.a_job(epochs=2) | {"metadata": {"name": "train-2"}}
    (tmp_path / "c.yml").write_text(cases.dump(second))
    (tmp_path / "notes.txt").write_text("not a manifest")
    found = manifest.load_path(tmp_path)
    assert [(r.KIND, r.name) for r in found] == [
        ("Network", "mlp"),
        ("Job", "train-1"),
        ("Job", "train-2"),
    ]


def test_directory_errors_name_each_file(tmp_path: pathlib.Path) -> None:
    (tmp_path / "a.yaml").write_text(cases.dump(cases.with_vnode(1, replicas=0)))
    (tmp_path / "b.yaml").write_text(cases.dump(cases.net()))
    (tmp_path / "c.json").write_text("{")
    with pytest.raises(manifest.ManifestError) as info:
        manifest.load_path(tmp_path)
    sources = [pathlib.Path(e.source).name for e in info.value.errors]
    assert sources == ["a.yaml", "c.json"]
    assert str(info.value).startswith(f"{tmp_path / 'a.yaml'}: spec.vnodes[1].replicas:")


@pytest.mark.parametrize(
    ("setup", "fragment"),
    [
        pytest.param(lambda p: p / "missing.yaml", "cannot read: No such file", id="missing"),
        pytest.param(lambda p: p, "no *.yaml, *.yml, *.json files", id="empty-dir"),
        pytest.param(
            lambda p: (p / "big.yaml").write_bytes(b"#" * 2000) and p / "big.yaml",
            "more than the limit of 1000 bytes",
            id="too-big",
        ),
    ],
)
def test_unloadable_paths_are_manifest_errors(
    tmp_path: pathlib.Path, setup: Any, fragment: str
) -> None:
    with pytest.raises(manifest.ManifestError) as info:
        manifest.load_path(setup(tmp_path), max_bytes=1000)
    assert fragment in str(info.value)


def test_load_file_reads_one_file(tmp_path: pathlib.Path) -> None:
    path = tmp_path / "n.yaml"
    path.write_text(cases.dump(cases.net()) + "---\n" + cases.dump(cases.a_job()))
    assert [r.KIND for r in manifest.load_file(path)] == ["Network", "Job"]


# Output ----------------------------------------------------------------------------------


def test_dump_yaml_uses_kubernetes_field_order_and_round_trips() -> None:
    found = manifest.load_path(cases.EXAMPLE)
    text = manifest.dump_yaml(found)
    assert [line.split(":")[0] for line in text.splitlines() if not line[:1].isspace()] == [
        "apiVersion",
        "kind",
        "metadata",
        "spec",
        "status",
    ]
    assert "memory: 64Mi" in text
    assert manifest.parse_documents(text) == found


def test_dump_json_of_several_is_a_list_that_round_trips() -> None:
    text = cases.dump(cases.net()) + "---\n" + cases.dump(cases.a_job(epochs=7))
    found = manifest.parse_documents(text)
    text = manifest.dump_json(found)
    assert json.loads(text)["kind"] == "List"
    assert manifest.parse_documents(text) == found
    single = manifest.dump_json(found[1])
    assert list(json.loads(single)) == ["apiVersion", "kind", "metadata", "spec", "status"]
    assert manifest.parse_documents(single) == [found[1]]


def test_dump_yaml_of_several_is_a_stream() -> None:
    found = manifest.parse_documents(cases.dump(cases.a_job()) + "---\n" + cases.dump(cases.net()))
    assert manifest.parse_documents(manifest.dump_yaml(found)) == found
