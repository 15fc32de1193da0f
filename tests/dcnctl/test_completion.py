"""`dcnctl completion bash|zsh`, run by bash itself: the generated script is sourced and its
function called as bash calls it on TAB (COMP_WORDS, COMP_CWORD), so these test what a
user's shell would offer, not the script's text."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.dcnctl.conftest import REPO, Dcnctl

BIN = Path(sys.executable).parent
TYPES = ["alloc", "allocation", "allocations", "job", "jobs", "net", "nets", "network",
         "networks", "pn", "pnode", "pnodes", "vn", "vnode", "vnodes"]  # fmt: skip


def complete(cli: Dcnctl, *words: str, shell: str = "bash") -> list[str]:
    """What TAB offers after `dcnctl WORDS...` (the last word is the one being completed)."""
    script = cli("completion", shell).stdout
    if shell == "zsh":  # bashcompinit is zsh's; under bash the rest is the same script
        script = script.split("\n", 1)[1]
    if cli.insecure:  # a plaintext server: the user's line says so, and names pass it on
        words = ("--insecure", *words)
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in ("dcnctl", *words))
    program = (
        f"{script}\nCOMP_WORDS=({quoted}); COMP_CWORD={len(words)}; _dcnctl; "
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    env = {**cli.env(), "PATH": f"{BIN}:/usr/bin:/bin"}
    result = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=60, check=True,
    )  # fmt: skip
    return sorted(line for line in result.stdout.splitlines() if line)


@pytest.mark.parametrize("shell", ["bash", "zsh"])
def test_resource_types_and_output_formats(offline: Dcnctl, shell: str) -> None:
    assert complete(offline, "get", "", shell=shell) == TYPES
    assert complete(offline, "get", "ne", shell=shell) == ["net", "nets", "network", "networks"]
    assert complete(offline, "describe", "p", shell=shell) == ["pn", "pnode", "pnodes"]
    assert complete(offline, "delete", "j", shell=shell) == ["job", "jobs"]
    assert complete(offline, "get", "pnodes", "-o", "", shell=shell) == [
        "dot", "json", "name", "wide", "yaml"]  # fmt: skip
    assert complete(offline, "get", "--output", "y", shell=shell) == ["yaml"]
    assert complete(offline, "version", "-o", "", shell=shell) == ["json", "yaml"]


def test_commands_flags_and_files(offline: Dcnctl) -> None:
    assert "cordon" in complete(offline, "")
    assert complete(offline, "get", "pnodes", "--n") == [
        "--network", "--no-headers", "--no-insecure"]  # fmt: skip
    assert complete(offline, "train", "digits", "--optimizer", "") == ["adam", "momentum", "sgd"]
    assert complete(offline, "apply", "--dry-run", "s") == ["server"]
    assert complete(offline, "config", "u") == ["use-context"]
    # A flag without choices takes a file; a flag's value is not counted as a positional.
    assert complete(offline, "apply", "-f", "examples/digits/net") == [
        "examples/digits/network.yaml"]  # fmt: skip
    assert complete(offline, "--server", "x:1", "get", "ne") == [
        "net", "nets", "network", "networks"]  # fmt: skip


def test_names_without_a_server_complete_nothing(offline: Dcnctl) -> None:
    offline.server = "127.0.0.1:1"
    assert complete(offline, "get", "pnodes", "") == []
    assert complete(offline, "cordon", "") == []


@pytest.mark.slow
def test_names_come_from_the_server(dcnctl: Dcnctl) -> None:
    dcnctl("apply", "-f", str(REPO / "examples" / "digits" / "network.yaml"))
    agents = ["agent-0", "agent-1", "agent-2"]
    assert complete(dcnctl, "get", "pnodes", "") == agents
    assert complete(dcnctl, "get", "pn", "agent-1", "agent-") == agents
    assert complete(dcnctl, "cordon", "") == agents
    # The session's cluster is shared: other tests' networks are there too.
    networks = sorted(
        ref.split("/", 1)[1] for ref in dcnctl("get", "networks", "-o", "name").stdout.split()
    )
    assert "digits" in networks
    starting_d = [name for name in networks if name.startswith("d")]
    assert complete(dcnctl, "describe", "network", "d") == starting_d
    assert complete(dcnctl, "train", "d") == starting_d
    assert complete(dcnctl, "explain", "placement", "") == networks
    # The connection flags on the line are the ones the completion asks with.
    server = dcnctl.server
    assert server is not None
    dcnctl.server = "127.0.0.1:1"
    assert complete(dcnctl, "--server", server, "get", "networks", "d") == starting_d
