"""dcnctl runs as a subprocess (`python -m dcnctl`) against a real orchestrator and real
agents; one cluster serves the whole dcnctl test session, since starting one costs
seconds. Tests that change the cluster's shared state (cordon, drain) undo it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import agents, procs, wait

REPO = agents.REPO


#: dcnctl's one stderr line when it dials plaintext (--insecure), before anything else.
INSECURE_WARNING = re.compile(
    r"warning: --insecure: plaintext gRPC to \S+; the token and everything else cross the "
    r"network readable\n"
)


class Dcnctl:
    """Runs dcnctl with its own config file and, by default, the cluster's server.
    `insecure`: the server is plaintext (`serve --insecure`), so every command that connects
    says --insecure, as a user must; its warning is checked to come once, first, and is
    taken out of the stderr returned, so tests compare the rest exactly."""

    def __init__(self, config: Path, server: str | None, *, insecure: bool) -> None:
        self.config = config
        self.server = server
        self.insecure = insecure

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("DCNR_")}
        env["DCNR_CONFIG"] = str(self.config)
        if self.server is not None:
            env["DCNR_SERVER"] = self.server
        return env

    def __call__(
        self, *args: str, input: str | bytes | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        connects = self.insecure and args[:1] not in (("config",), ("completion",))
        flags = ("--insecure",) if connects else ()
        proc = subprocess.run(
            [sys.executable, "-m", "dcnctl", *flags, *args],
            input=input.decode() if isinstance(input, bytes) else input,
            capture_output=True, text=True, env=self.env(), cwd=REPO, timeout=120,
        )  # fmt: skip
        assert "Traceback" not in proc.stderr, proc.stderr
        warned = INSECURE_WARNING.findall(proc.stderr)
        assert len(warned) <= 1, proc.stderr
        if warned:
            assert proc.stderr.startswith(warned[0]), proc.stderr
            proc.stderr = proc.stderr[len(warned[0]) :]
        assert "warning: --insecure" not in proc.stdout, proc.stdout
        if check:
            assert proc.returncode == 0, f"dcnctl {' '.join(args)}: {proc.stderr}"
        return proc

    def fails(self, *args: str, code: int = 1, input: str | None = None) -> str:
        """Runs a command that must fail; returns its stderr, checked to be kubectl-like."""
        proc = self(*args, input=input, check=False)
        assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
        return proc.stderr

    def json(self, *args: str) -> Any:
        return json.loads(self(*args, "-o", "json").stdout)

    def until(self, what: str, check: Any, *args: str, within: float = 30.0) -> Any:
        """Poll `get ... -o json` until check(body) is true; AssertionError otherwise."""
        return wait.until_sync(
            lambda: self.json(*args), within=within, what=what, accept=check, every=0.2
        )


@contextlib.contextmanager
def started_cluster(root: Path) -> Iterator[str]:
    """An orchestrator and three agents (2 cpu, 2Gi each); yields the server address."""
    with (
        procs.orchestrator(f"sqlite:///{root / 'state.db'}") as served,
        agents.agents(served.address, root, 3, cpu="2", memory="2Gi"),
    ):
        cli = Dcnctl(root / "config", served.address, insecure=True)
        cli.until(
            "3 ready pnodes",
            lambda body: [p["status"]["phase"] for p in body["items"]] == ["Ready"] * 3,
            "get", "pnodes",
        )  # fmt: skip
        yield served.address


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The cluster the session's dcnctl tests share. Under xdist each worker has its own,
    and which other files ran on it before a test depends on how files were dealt out: a
    test that needs a cluster nobody has trained on yet starts its own (`started_cluster`)."""
    with started_cluster(tmp_path_factory.mktemp("dcnctl-cluster")) as address:
        yield address


@pytest.fixture
def dcnctl(cluster: str, tmp_path: Path) -> Dcnctl:
    return Dcnctl(tmp_path / "config", cluster, insecure=True)


@pytest.fixture
def offline(tmp_path: Path) -> Dcnctl:
    """dcnctl with no server configured at all (and so TLS, the default)."""
    return Dcnctl(tmp_path / "config", None, insecure=False)
