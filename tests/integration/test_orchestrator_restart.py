"""Training survives the orchestrator: SIGKILL it mid-run, start it again on the same
store, and the job resumes from its stored progress to the same result."""

from __future__ import annotations

import signal
import socket
from pathlib import Path

import pytest
import yaml

from tests.integration import cluster
from tests.integration.test_training import MANIFEST, Jobs
from tests.support import agents, procs

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


async def test_a_job_resumes_after_the_orchestrator_is_killed(tmp_path: Path) -> None:
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    address = f"127.0.0.1:{_free_port()}"  # the agents keep talking to the same address
    manifest = yaml.safe_load(MANIFEST.read_text())
    with procs.orchestrator(store_url, listen=address) as first:
        assert first.address == address
        with agents.agents(address, tmp_path, 3, cpu="2", memory="2Gi"):
            api, jobs = cluster.Api(address), Jobs(address)
            await api.apply(manifest)
            every = {v["name"]: 1 for v in manifest["spec"]["vnodes"]}
            await api.wait_resolvable("digits", every, within=60)
            await jobs.train("restarted", "digits")
            await jobs.wait("restarted", phase="Running", within=120, step=60)
            await api.close()
            await jobs.channel.close(None)
            first.proc.send_signal(signal.SIGKILL)
            first.proc.wait(timeout=30)

            with procs.orchestrator(store_url, listen=address):
                api, jobs = cluster.Api(address), Jobs(address)
                try:
                    done = await jobs.wait("restarted", phase="Succeeded", within=300)
                    assert done.status.attempt > 1, "the new orchestrator never took the job over"
                    assert done.status.step == done.status.checkpoint_step > 60
                finally:
                    await api.close()
                    await jobs.channel.close(None)
