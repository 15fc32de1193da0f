"""The orchestrator needs no training data: the agents hold it (issue 14, item 2).

Real processes: `dcnr-orchestrator serve` started in an empty directory (where the digits
network's relative data url `file://examples/digits/data.npz` means nothing) and three
`dcnr-agent`s started with `--workdir` the repository, where it does. Through dcnctl:

- `train digits` succeeds: the driver learned the data's length from the agents;
- `train digits --data file:///ABS/PATH` trains on that data, not the network's: a copy of
  the digits with 300 samples gives ceil(300 / 64) = 5 steps an epoch, where the
  network's 1437 give 23;
- `train --data` naming a file no agent has fails the job with the agents' words.
"""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from api.resources import network as network_model
from tests.integration import cluster
from tests.support import agents, procs

pytestmark = pytest.mark.slow

MANIFEST = agents.REPO / "examples" / "digits" / "network.yaml"
DATA = np.load(agents.REPO / "examples" / "digits" / "data.npz")
BATCH = 64
SUBSET = 300


def dcnctl(server: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [procs.script("dcnctl"), "--server", server, "--insecure", *args],  # serve --insecure
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def job(server: str, name: str) -> dict[str, object]:
    got = dcnctl(server, "get", "job", name, "-o", "json")
    assert got.returncode == 0, got.stderr
    status: dict[str, object] = json.loads(got.stdout)["status"]
    return status


async def test_serve_in_an_empty_directory_trains_on_the_agents_data_and_honors_data(
    tmp_path: Path,
) -> None:
    empty = tmp_path / "cwd"
    empty.mkdir()
    subset = tmp_path / "elsewhere" / "digits-300.npz"
    subset.parent.mkdir()
    np.savez(subset, x_train=DATA["x_train"][:SUBSET], y_train=DATA["y_train"][:SUBSET])
    manifest = yaml.safe_load(MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    with (
        procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}", cwd=empty) as served,
        agents.agents(served.address, tmp_path, 3, cpu="2", memory="2Gi"),
    ):
        api = cluster.Api(served.address)
        try:
            await api.apply(manifest)
            every = {v.name: 1 for v in network.spec.vnodes}
            await api.wait_resolvable(network.name, every, within=60)
        finally:
            await api.close()
        train = ("train", "digits", "--epochs", "1", "--batch-size", str(BATCH), "--name")
        server = served.address

        own = dcnctl(server, *train, "on-agents")
        assert own.returncode == 0, own.stdout + own.stderr
        steps = math.ceil(len(DATA["y_train"]) / BATCH)
        assert job(server, "on-agents")["totalSteps"] == steps

        given = dcnctl(server, *train, "given", "--data", f"file://{subset}")
        assert given.returncode == 0, given.stdout + given.stderr
        status = job(server, "given")
        assert (status["totalSteps"], status["step"]) == (math.ceil(SUBSET / BATCH),) * 2

        missing = dcnctl(server, *train, "missing", "--data", f"file://{tmp_path}/none.npz")
        assert missing.returncode != 0
        assert "failed" in missing.stderr
        assert "none.npz" in missing.stderr
        warning, failure = missing.stderr.strip().splitlines()  # --insecure's, then one line
        assert warning.startswith("warning: --insecure: plaintext gRPC to ")
        assert "none.npz" in failure
    assert not any(empty.iterdir()), "the orchestrator wrote nothing where it ran"
