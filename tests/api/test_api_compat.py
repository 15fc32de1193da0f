"""The contract's promise of compatibility is checked by a tool, not by hope.

`buf breaking` (the buf CLI, pinned in the Makefile and installed from npm into .tools/)
compares api/proto with the last released contract, api/released/dcnr-v1.binpb, under the
FILE rules (docs/api-versioning.md). Never skipped: without npm this fails, loudly.
"""

from __future__ import annotations

import pathlib
import re
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
RELEASED = REPO / "api" / "released" / "dcnr-v1.binpb"
BUF = REPO / ".tools" / "node_modules" / ".bin" / "buf"


@pytest.fixture(scope="module")
def buf() -> pathlib.Path:
    """The pinned buf, installed by `make buf` if it is not there yet."""
    done = subprocess.run(
        ["make", "-s", "buf"], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"make buf failed:\n{done.stdout}{done.stderr}"
    assert BUF.is_file(), f"make buf installed no {BUF}"
    return BUF


def breaking(buf: pathlib.Path, workdir: pathlib.Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(buf), "breaking", "--against", str(RELEASED)],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=120,
    )


def copy_of_contract(tmp_path: pathlib.Path) -> pathlib.Path:
    """The module (buf.yaml and api/proto) in a scratch directory, to break it there."""
    shutil.copy(REPO / "buf.yaml", tmp_path / "buf.yaml")
    shutil.copytree(REPO / "api" / "proto", tmp_path / "api" / "proto")
    return tmp_path


def test_the_protos_are_compatible_with_the_released_contract(buf) -> None:
    done = breaking(buf, REPO)
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_renumbered_field_is_caught(buf, tmp_path) -> None:
    root = copy_of_contract(tmp_path)
    common = root / "api" / "proto" / "dcnr" / "v1" / "common.proto"
    text, count = re.subn("string client_name = 2;", "string client_name = 20;", common.read_text())
    assert count == 1
    common.write_text(text)
    done = breaking(buf, root)
    assert done.returncode != 0
    assert "RequestHeader" in done.stdout, done.stdout
    assert "client_name" in done.stdout, done.stdout


def test_a_removed_rpc_is_caught(buf, tmp_path) -> None:
    root = copy_of_contract(tmp_path)
    job = root / "api" / "proto" / "dcnr" / "v1" / "job.proto"
    text, count = re.subn(r"\n\s*rpc WatchJob\([^;]*;", "", job.read_text())
    assert count == 1
    job.write_text(text)
    done = breaking(buf, root)
    assert done.returncode != 0
    assert "WatchJob" in done.stdout, done.stdout


def test_an_added_field_is_allowed(buf, tmp_path) -> None:
    """Additive changes are what dcnr.v1 may do."""
    root = copy_of_contract(tmp_path)
    common = root / "api" / "proto" / "dcnr" / "v1" / "common.proto"
    text = common.read_text().replace(
        "  string request_id = 4;\n}", "  string request_id = 4;\n  string trace_id = 5;\n}", 1
    )
    assert "trace_id = 5" in text
    common.write_text(text)
    done = breaking(buf, root)
    assert done.returncode == 0, done.stdout + done.stderr
