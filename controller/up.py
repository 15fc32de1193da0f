"""`dcnr-orchestrator up`: a whole local cluster in one command.

The orchestrator runs in this process on the embedded store; each agent is a real
`dcnr-agent` process (as on a volunteer's machine), with varied capabilities so placement
has choices to make. Ctrl-C or SIGTERM stops the agents first (they deregister), then the
orchestrator. Agent output goes to log files in the state directory, not the terminal.

`up` announces each agent's pid on stdout (`  agent-0: pid 1234 ...`), so a script that
started this `up` can act on exactly its own agents and never on another cluster's agent of
the same name. An agent that exits on its own is a machine that crashed: `up` says so on
stdout and starts it again after a backoff (as a volunteer's machine comes back), so the
cluster keeps its size; the orchestrator meanwhile sees the PNode's lease expire and
re-places its VNodes, exactly as for a real machine.

TLS by default, so the first path people try is the secure one: `up` keeps a throwaway CA
and a certificate for this machine's loopback names in `STATE_DIR/tls/` (`local_ca`),
serves with it, starts its agents with `--tls-ca`, and writes a dcnctl config
(`STATE_DIR/dcnctl.config`, context "up", with `tls-ca`) for `export DCNR_CONFIG=...`.
`up --insecure` serves plaintext instead, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import sys
import time
from pathlib import Path

import yaml

from api import tls as api_tls
from controller import local_ca, server

log = logging.getLogger("dcnr.up")

#: (cpu, memory, labels) of agent i, cycled: a small, a medium and a large machine.
SHAPES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("2", "2Gi", ("topology.dcnr.io/zone=home-a",)),
    ("1", "1Gi", ("topology.dcnr.io/zone=home-b",)),
    ("4", "4Gi", ("topology.dcnr.io/zone=home-a",)),
)
STOP_GRACE = 30.0
#: Restart backoff: the first restart waits RESTART_FIRST, each next one twice as long, up
#: to RESTART_MAX; an agent that ran RESTART_RESET before it exited starts the count over,
#: so one crash a day never waits the maximum, and a crash loop does not spin.
RESTART_FIRST = 1.0
RESTART_MAX = 30.0
RESTART_RESET = 60.0


@dataclasses.dataclass(frozen=True, slots=True)
class UpConfig:
    serve: server.ServeConfig
    agents: int
    state_dir: Path
    workdir: Path
    #: Plaintext instead of TLS with the local CA.
    insecure: bool = False


def agent_name(index: int) -> str:
    return f"agent-{index}"


def dcnctl_config_path(config: UpConfig) -> Path:
    return config.state_dir / "dcnctl.config"


def _wildcard(host: str) -> bool:
    return host.strip("[]") in ("", "0.0.0.0", "::")


def dial_address(listen_host: str, port: int) -> str:
    """Where clients on this machine reach a listener bound to `listen_host`."""
    return f"{'127.0.0.1' if _wildcard(listen_host) else listen_host}:{port}"


def certificate_hosts(listen_host: str) -> tuple[str, ...]:
    host = listen_host.strip("[]")
    if _wildcard(host) or host in local_ca.LOCAL_HOSTS:
        return local_ca.LOCAL_HOSTS
    return (*local_ca.LOCAL_HOSTS, host)


def write_dcnctl_config(config: UpConfig, address: str, ca: Path | None) -> Path:
    """A dcnctl config with one context, "up", for this cluster (readable by its owner)."""
    context: dict[str, str | bool] = {"name": "up", "server": address}
    if ca is not None:
        context["tls-ca"] = str(ca)
    else:  # `up --insecure`: dcnctl dials TLS unless the context says plaintext
        context["insecure"] = True
    body = {
        "apiVersion": "dcnr.io/v1",
        "kind": "Config",
        "current-context": "up",
        "contexts": [context],
    }
    path = dcnctl_config_path(config)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        yaml.safe_dump(body, f, sort_keys=False)
    return path


def agent_command(
    config: UpConfig, orchestrator: str, index: int, *, tls_ca: Path | None = None
) -> list[str]:
    cpu, memory, labels = SHAPES[index % len(SHAPES)]
    name = agent_name(index)
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
    command += ["--tls-ca", str(tls_ca)] if tls_ca is not None else ["--insecure"]
    return command


def restart_delay(restarts: int, ran_for: float) -> tuple[int, float]:
    """(the restart count after this exit, seconds to wait before starting it again).

    `restarts` counts the exits in a row so far; `ran_for` is how long the process that just
    exited had run. Pure, so the policy is tested without processes or time passing."""
    if ran_for >= RESTART_RESET:
        restarts = 0
    return restarts + 1, min(RESTART_FIRST * 2**restarts, RESTART_MAX)


def describe_exit(returncode: int) -> str:
    """`exited with status 1`, or `was killed by SIGKILL` for a negative return code."""
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _say(text: str) -> None:
    print(text, flush=True)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """SIGTERM (the agent deregisters), then SIGKILL after STOP_GRACE."""
    if proc.returncode is None:
        proc.send_signal(signal.SIGTERM)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(proc.wait(), STOP_GRACE)
    if proc.returncode is None:
        proc.kill()
        await proc.wait()


class _Agent:
    """One agent process and its restarts. `current` is the live process, if any; the
    supervising task is cancelled before the cluster stops it."""

    def __init__(
        self, config: UpConfig, orchestrator: str, index: int, *, tls_ca: Path | None
    ) -> None:
        self._config = config
        self._orchestrator = orchestrator
        self._tls_ca = tls_ca
        self.index = index
        self.name = agent_name(index)
        self.directory = config.state_dir / self.name
        self.current: asyncio.subprocess.Process | None = None

    async def start(self) -> asyncio.subprocess.Process:
        self.directory.mkdir(parents=True, exist_ok=True)
        with (self.directory / "agent.log").open("ab") as logfile:
            self.current = await asyncio.create_subprocess_exec(
                *agent_command(self._config, self._orchestrator, self.index, tls_ca=self._tls_ca),
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self.current

    def announce(self, proc: asyncio.subprocess.Process, note: str = "") -> None:
        _say(f"  {self.name}: pid {proc.pid}{note} (log {self.directory / 'agent.log'})")

    async def supervise(self, proc: asyncio.subprocess.Process) -> None:
        """Wait for the agent to exit on its own; say so, and start it again after the
        backoff. Cancelled when the cluster stops (the stop is not an exit on its own)."""
        restarts = 0
        started = time.monotonic()
        while True:
            returncode = await proc.wait()
            restarts, delay = restart_delay(restarts, time.monotonic() - started)
            _say(
                f"dcnr-orchestrator: {self.name} (pid {proc.pid}) {describe_exit(returncode)}; "
                f"starting it again in {delay:g}s (restart {restarts}; "
                f"log {self.directory / 'agent.log'})"
            )
            log.warning(
                "agent exited",
                extra={"fields": {"agent": self.name, "pid": proc.pid, "code": returncode}},
            )
            await asyncio.sleep(delay)
            proc = await self.start()
            started = time.monotonic()
            self.announce(proc, f" (restart {restarts})")


async def run(config: UpConfig) -> None:
    from store import url

    # The cluster's state directory is up's own to create (serve refuses a missing one).
    config.state_dir.mkdir(parents=True, exist_ok=True)
    listen_host = config.serve.listen.rsplit(":", 1)[0]
    serve = config.serve
    ca: Path | None = None
    if config.insecure:
        log.warning("--insecure: gRPC is plaintext; credentials and tensors cross unencrypted")
    else:
        found = await asyncio.to_thread(
            local_ca.ensure, config.state_dir, hosts=certificate_hosts(listen_host)
        )
        ca = found.ca
        serve = dataclasses.replace(serve, tls=api_tls.ServerFiles(found.cert, found.key))
    store = await url.open_store(serve.store_url)
    orchestrator = server.Orchestrator(serve, store)
    agents: list[_Agent] = []
    supervisors: list[asyncio.Task[None]] = []
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await orchestrator.start()
        address = dial_address(listen_host, orchestrator.port)
        dcnctl_config = write_dcnctl_config(config, address, ca)
        started = []
        for index in range(config.agents):
            agent = _Agent(config, address, index, tls_ca=ca)
            agents.append(agent)
            started.append(await agent.start())
        metrics = (
            f", metrics on http://{config.serve.metrics_listen.rsplit(':', 1)[0]}:"
            f"{orchestrator.metrics_port}/metrics"
            if config.serve.metrics_listen and orchestrator.metrics_port is not None
            else ""
        )
        transport = f"TLS, CA {ca}" if ca is not None else "plaintext, --insecure"
        _say(
            f"dcnr-orchestrator: local cluster up: orchestrator on {address} "
            f"({transport}; store {config.serve.store_url}{metrics}), {config.agents} agents "
            f"(logs in {config.state_dir}/agent-*/agent.log)\n"
            f"  point dcnctl at it:  export DCNR_CONFIG={dcnctl_config}\n"
            f"  then try:            dcnctl get pnodes"
            + (f"\n  dashboard:           {orchestrator.ui_url}" if orchestrator.ui_url else "")
        )
        for agent, proc in zip(agents, started, strict=True):
            agent.announce(proc)
            supervisors.append(asyncio.create_task(agent.supervise(proc)))
        _say("Ctrl-C stops everything; an agent that exits on its own is started again.")
        await stopping.wait()
    finally:
        print("dcnr-orchestrator: stopping the agents, then the orchestrator", flush=True)
        for task in supervisors:
            task.cancel()
        await asyncio.gather(*supervisors, return_exceptions=True)
        await asyncio.gather(*(_stop(a.current) for a in agents if a.current is not None))
        await orchestrator.stop()
