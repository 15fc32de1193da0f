"""`dcnr-orchestrator up`: a whole local cluster in one command.

The orchestrator runs in this process on the embedded store; each agent is a real
`dcnr-agent` process (as on a volunteer's machine), with varied capabilities so placement
has choices to make. Ctrl-C or SIGTERM stops the agents first (they deregister), then the
orchestrator. Agent output goes to log files in the state directory, not the terminal.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
from pathlib import Path

from controller import server

log = logging.getLogger("dcnr.up")

#: (cpu, memory, labels) of agent i, cycled: a small, a medium and a large machine.
SHAPES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("2", "2Gi", ("topology.dcnr.io/zone=home-a",)),
    ("1", "1Gi", ("topology.dcnr.io/zone=home-b",)),
    ("4", "4Gi", ("topology.dcnr.io/zone=home-a",)),
)
STOP_GRACE = 30.0


@dataclasses.dataclass(frozen=True, slots=True)
class UpConfig:
    serve: server.ServeConfig
    agents: int
    state_dir: Path
    workdir: Path


def agent_command(config: UpConfig, orchestrator: str, index: int) -> list[str]:
    cpu, memory, labels = SHAPES[index % len(SHAPES)]
    name = f"agent-{index}"
    command = [
        str(Path(sys.executable).with_name("dcnr-agent")),
        "--orchestrator", orchestrator,
        "--listen", "127.0.0.1:0",
        "--name", name,
        "--state-dir", str(config.state_dir / name),
        "--workdir", str(config.workdir),
        "--cpu", cpu,
        "--memory", memory,
        "--log-level", "warning",
        # The whole cluster is going away: there is nowhere to drain to.
        "--drain-deadline", "2",
    ]  # fmt: skip
    for label in labels:
        command += ["--label", label]
    return command


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the agent deregisters), then SIGKILL after STOP_GRACE."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


async def run(config: UpConfig) -> None:
    from store import url

    # The cluster's state directory is up's own to create (serve refuses a missing one).
    config.state_dir.mkdir(parents=True, exist_ok=True)
    store = await url.open_store(config.serve.store_url)
    orchestrator = server.Orchestrator(config.serve, store)
    agents: list[asyncio.subprocess.Process] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await orchestrator.start()
        host = config.serve.listen.rsplit(":", 1)[0]
        address = f"{host}:{orchestrator.port}"
        for index in range(config.agents):
            directory = config.state_dir / f"agent-{index}"
            directory.mkdir(parents=True, exist_ok=True)
            with (directory / "agent.log").open("ab") as logfile:
                agents.append(
                    await asyncio.create_subprocess_exec(
                        *agent_command(config, address, index),
                        stdout=logfile,
                        stderr=asyncio.subprocess.STDOUT,
                        stdin=asyncio.subprocess.DEVNULL,
                        env={**os.environ, "PYTHONUNBUFFERED": "1"},
                    )
                )
        print(
            f"dcnr-orchestrator: local cluster up: orchestrator on {address} "
            f"(store {config.serve.store_url}), {config.agents} agents "
            f"(logs in {config.state_dir}/agent-*/agent.log)\n"
            f"  point dcnctl at it:  export DCNR_SERVER={address}\n"
            f"  then try:            dcnctl get pnodes\n"
            "Ctrl-C stops everything.",
            flush=True,
        )
        await stopping.wait()
    finally:
        print("dcnr-orchestrator: stopping the agents, then the orchestrator", flush=True)
        await asyncio.gather(*(_stop(proc) for proc in agents))
        await orchestrator.stop()
