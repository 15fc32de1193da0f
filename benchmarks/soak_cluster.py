"""The soak's processes: a moto server (DynamoDB, serialized like the service), N
`dcnr-orchestrator serve` replicas on it and M `dcnr-agent`s, all on free loopback ports,
over TLS (a local CA, as `dcnr-orchestrator up` makes) with an admin token. Only processes
started here are ever signalled, by the `Popen` that started them; `close()` resumes any
stopped one and stops them all.

Every process is in one of the states the soak put it in (`up`, `stopped`, `killed`); one
found exited while the soak believed it `up` or `stopped` exited on its own, which is what
`unexpected_exits()` reports (and the soak restarts it, so one crash does not end the run).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Literal

from tests.support import agents as agent_procs
from tests.support import moto, procs, tls

State = Literal["up", "stopped", "killed", "exited"]


@dataclasses.dataclass(slots=True)
class Member:
    name: str
    role: Literal["replica", "agent", "store"]
    log: Path
    proc: subprocess.Popen[str] | None = None
    pid: int = 0
    state: State = "up"
    #: For replicas: the fixed address agents and clients know it by.
    address: str = ""
    starts: int = 0


class Cluster:
    def __init__(
        self,
        root: Path,
        *,
        replicas: int,
        agents: int,
        agent_cpu: str = "1",
        agent_memory: str = "1Gi",
        serve_args: tuple[str, ...] = (),
    ) -> None:
        if replicas < 1 or agents < 1:
            raise ValueError(f"Cluster: replicas={replicas} and agents={agents} must be >= 1")
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self.agent_cpu, self.agent_memory = agent_cpu, agent_memory
        self.serve_args = serve_args
        self.token = secrets.token_hex(16)
        self.replicas = [
            Member(f"replica-{i}", "replica", root / f"replica-{i}.log") for i in range(replicas)
        ]
        self.agents = [Member(f"agent-{i}", "agent", root / f"agent-{i}" / "agent.log")
                       for i in range(agents)]  # fmt: skip
        self.store = Member("store", "store", root / "moto.log")
        self._moto: moto.MotoServer | None = None
        self._agent_procs: dict[str, agent_procs.Agent] = {}
        self.store_url = ""
        self.pki: tls.Pki | None = None

    @property
    def ca(self) -> bytes:
        assert self.pki is not None
        return self.pki.paths.ca.read_bytes()

    def members(self) -> list[Member]:
        return [self.store, *self.replicas, *self.agents]

    def member(self, name: str) -> Member:
        return next(m for m in self.members() if m.name == name)

    # -- start --------------------------------------------------------------------------

    def start_store(self) -> None:
        # The store is the moto server, never AWS: its fake credentials, in this process's
        # environment, which every process started here inherits.
        os.environ.update(
            AWS_ACCESS_KEY_ID="testing", AWS_SECRET_ACCESS_KEY="testing",
            AWS_DEFAULT_REGION="us-east-1", AWS_EC2_METADATA_DISABLED="true",
        )  # fmt: skip
        self._moto = moto.MotoServer()
        endpoint = self._moto.__enter__()
        self.store.pid = self._moto.pid
        self.store_url = f"dynamodb://soak-{uuid.uuid4().hex[:8]}?endpoint={endpoint}"
        init = subprocess.run(
            [procs.script("dcnr-orchestrator"), "init-store", "--store", self.store_url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        if init.returncode != 0:
            raise RuntimeError(f"init-store failed: {init.stderr[-2000:]}")
        self.pki = tls.Pki.create(self.root / "pki")
        token_file = self.root / "admin-token"
        token_file.write_text(self.token + "\n")
        token_file.chmod(0o600)
        for replica in self.replicas:
            replica.address = f"127.0.0.1:{moto.free_port()}"

    def start_replica(self, replica: Member) -> None:
        assert self.pki is not None
        with replica.log.open("ab") as err:
            proc = subprocess.Popen(
                [
                    procs.script("dcnr-orchestrator"), "--log-level", "info", "serve",
                    "--store", self.store_url, "--listen", replica.address,
                    "--replica-id", replica.name,
                    "--tls-cert", str(self.pki.paths.cert), "--tls-key", str(self.pki.paths.key),
                    "--admin-token-file", str(self.root / "admin-token"),
                    "--blob-store", f"file://{self.root / 'checkpoints'}/",
                    *self.serve_args,
                ],
                stdout=subprocess.PIPE, stderr=err, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            line = procs.read_line(proc, timeout=60)
        except AssertionError as exc:
            procs.stop(proc)
            raise RuntimeError(
                f"{replica.name} did not start: {exc}\n{tail(replica.log)}"
            ) from None
        if "serving dcnr.v1" not in line:
            procs.stop(proc)
            raise RuntimeError(f"{replica.name}: unexpected first line {line!r}")
        replica.proc, replica.pid, replica.state = proc, proc.pid, "up"
        replica.starts += 1

    def start_agent(self, agent: Member) -> None:
        assert self.pki is not None
        index = self.agents.index(agent)
        # Each agent lists the replicas from a different first one, so they spread.
        order = self.replicas[index % len(self.replicas):] + self.replicas[
            : index % len(self.replicas)
        ]
        started = agent_procs.Agent(
            ",".join(r.address for r in order), agent.name, agent.log.parent,
            cpu=self.agent_cpu, memory=self.agent_memory,
            extra=["--tls-ca", str(self.pki.paths.ca)],
        )  # fmt: skip
        self._agent_procs[agent.name] = started
        agent.proc, agent.pid, agent.state = started.proc, started.proc.pid, "up"
        agent.starts += 1

    def restart(self, member: Member) -> None:
        if member.proc is not None:
            procs.stop(member.proc)  # already gone: closes its pipes and forgets its reader
        if member.role == "replica":
            self.start_replica(member)
        elif member.role == "agent":
            self.start_agent(member)
        else:
            raise ValueError(f"restart: {member.name} ({member.role}) cannot be restarted")

    # -- faults ---------------------------------------------------------------------------

    def kill(self, member: Member) -> None:
        if member.role == "store":
            raise ValueError("kill: the store is only ever stalled, never killed")
        assert member.proc is not None
        member.state = "killed"
        member.proc.send_signal(signal.SIGKILL)
        member.proc.wait(timeout=30)

    def stop(self, member: Member) -> None:
        member.state = "stopped"
        os.kill(member.pid, signal.SIGSTOP)

    def cont(self, member: Member) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(member.pid, signal.SIGCONT)
        if member.state == "stopped":
            member.state = "up"

    def unexpected_exits(self) -> list[tuple[Member, int | None]]:
        """Members found exited that the soak had not killed; each reported once."""
        found: list[tuple[Member, int | None]] = []
        for m in [*self.replicas, *self.agents]:
            if m.proc is not None and m.state in ("up", "stopped") and m.proc.poll() is not None:
                m.state = "exited"
                found.append((m, m.proc.returncode))
        if self._moto is not None and self.store.state != "exited":
            try:
                os.kill(self.store.pid, 0)
            except ProcessLookupError:
                self.store.state = "exited"
                found.append((self.store, None))
        return found

    # -- stop -----------------------------------------------------------------------------

    def close(self) -> None:
        for m in self.members():
            if m.state == "stopped" and m.pid:
                self.cont(m)
        for m in self.agents:
            if m.proc is not None and m.proc.poll() is None:
                m.proc.send_signal(signal.SIGTERM)
        for m in [*self.agents, *self.replicas]:
            if m.proc is not None:
                procs.stop(m.proc)
        if self._moto is not None:
            self._moto.__exit__(None, None, None)
            self._moto = None


def tail(log: Path, lines: int = 20) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(log {log} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])
