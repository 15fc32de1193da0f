"""The Dockerfile, checked statically (no container engine runs on the machines this suite
runs on, so the image itself is not built here: `make image` says so), and the wheel it
installs, built for real: it must carry the three console scripts the image runs."""

from __future__ import annotations

import configparser
import re
import zipfile
from pathlib import Path

import pytest

from tests.support import wheel as wheel_mod

REPO = Path(__file__).resolve().parents[2]
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|build-essential|make|cmake|python3?-dev)\b")


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined, comments dropped), by stage."""
    text = (REPO / "Dockerfile").read_text().replace("\\\n", " ")
    stages: list[list[str]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_multi_stage_with_a_slim_python_final_stage() -> None:
    stages = _stages()
    assert len(stages) >= 2
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in (REPO / "Dockerfile").read_text()
    assert stages[-1][0] == "FROM ${PYTHON_IMAGE}"


def test_final_stage_runs_as_non_root() -> None:
    users = [line.split()[1] for line in _stages()[-1] if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"0", "root"}
    assert user.isdigit(), "numeric, so Kubernetes' runAsNonRoot can verify it"


def test_final_stage_has_no_build_tools_and_no_source_tree() -> None:
    final = _stages()[-1]
    for line in final:
        if line.upper().startswith("RUN "):
            assert not BUILD_TOOLS.search(line), line
        if line.upper().startswith(("COPY ", "ADD ")):
            pytest.fail(f"the final stage copies files in (the source tree?): {line}")
    # The wheels come from the build stage by a bind mount, not a layer.
    assert any("from=build" in line for line in final)


def test_oci_labels() -> None:
    final = " ".join(_stages()[-1])
    for label in ("version", "source", "revision", "title", "licenses"):
        assert f"org.opencontainers.image.{label}=" in final, label


@pytest.mark.slow
def test_the_wheel_it_installs_has_the_three_console_scripts(tmp_path: Path) -> None:
    built = wheel_mod.build(tmp_path)
    with zipfile.ZipFile(built) as archive:
        (entry_points,) = [n for n in archive.namelist() if n.endswith("entry_points.txt")]
        parser = configparser.ConfigParser()
        parser.read_string(archive.read(entry_points).decode())
    scripts = dict(parser["console_scripts"])
    assert {
        "dcnr-orchestrator": "controller.main:main",
        "dcnr-agent": "agent.main:main",
        "dcnctl": "dcnctl.main:main",
    }.items() <= scripts.items()
    default = (REPO / "Dockerfile").read_text().split("CMD ", 1)[1]
    assert default.startswith('["dcnr-orchestrator", "serve"')
