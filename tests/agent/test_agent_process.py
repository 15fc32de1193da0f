"""`dcnr-agent` as a process, against a real `dcnr-orchestrator serve`.

What each agent hosts is asked of the agent itself, over its data plane: a Forward with a
deliberately wrong target_epoch is refused FAILED_PRECONDITION naming the epoch the agent
hosts (so it hosts that VNode at that epoch), or NOT_FOUND (it does not host it). That is
compared with what the orchestrator resolves.
"""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import grpc
import numpy as np
import pytest
from grpc import aio

from api import tensors
from api.dcnr.v1 import job_pb2, job_pb2_grpc, vnode_pb2
from tests.integration import cluster
from tests.support import agents as agents_mod
from tests.support import identities, procs, wait

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
TIMINGS = [
    "--heartbeat-interval", "0.3",
    "--lease-duration", "1.5",
    "--lost-grace", "0.5",
    "--replica-lease", "1.5",
    "--unschedulable-retry", "1",
]  # fmt: skip
_SERVING = re.compile(r"dcnr-agent: (?P<name>\S+) serving the data plane on (?P<address>\S+) ")
NET = "agents"
VNODES = ["x", "fc", "act"]
MANIFEST = {
    "apiVersion": "dcnr.io/v1",
    "kind": "Network",
    "metadata": {"name": NET},
    "spec": {
        "vnodes": [
            {"name": "x", "kind": "input", "params": {"field": "x_train"},
             "data": {"url": "file://examples/digits/data.npz"},
             "resources": {"cpu": "100m", "memory": "32Mi"}},
            {"name": "fc", "kind": "dense", "inputs": ["x"], "params": {"units": 4},
             "resources": {"cpu": "100m", "memory": "32Mi"}},
            {"name": "act", "kind": "relu", "inputs": ["fc"],
             "resources": {"cpu": "100m", "memory": "32Mi"}},
        ]
    },
}  # fmt: skip


def AgentProc(orchestrator: str, name: str, state_dir: Path) -> agents_mod.Agent:
    return agents_mod.Agent(orchestrator, name, state_dir, extra=["--drain-deadline", "20"])


@pytest.fixture
def orchestrator(tmp_path: Path) -> Iterator[str]:
    flags = [*TIMINGS, *identities.ca_flags(tmp_path)]
    with procs.orchestrator(f"sqlite:///{tmp_path}/state.db", extra=flags) as served:
        yield served.address


async def hosted_epoch(address: str, pnode: str, vnode: str) -> int | None:
    """The epoch at which the agent `pnode` at `address` hosts `vnode`, or None."""
    async with identities.data_plane_channel(address, pnode) as channel:
        stub = identities.SignedVNodeStub(channel, identities.orchestrator_signer())
        probe = vnode_pb2.ForwardRequest(
            job="probe", step=1, network=NET, sender_vnode="__driver__", target_vnode=vnode,
            target_epoch=-1, tensor=tensors.empty(),
        )  # fmt: skip
        refusal: aio.AioRpcError | None = None
        try:
            await stub.Forward(probe, timeout=5)
        except aio.AioRpcError as exc:
            refusal = exc
    if refusal is not None and refusal.code() == grpc.StatusCode.NOT_FOUND:
        return None
    if refusal is not None and refusal.code() == grpc.StatusCode.FAILED_PRECONDITION:
        match = re.search(r"which is (\d+)", refusal.details() or "")
        assert match, refusal.details()
        return int(match[1])
    raise AssertionError(f"a probe with epoch -1 was not refused as stale: {refusal}")


class Hosting(NamedTuple):
    """What the orchestrator resolves, and what the agents say they host."""

    want: dict[tuple[str, str], int | None]
    got: dict[tuple[str, str], int | None]
    endpoints: dict[str, list[tuple[str, int]]]


async def wait_hosting(
    api: cluster.Api, agents: list[agents_mod.Agent], *, avoid: str | None = None
) -> dict[str, list[tuple[str, int]]]:
    """Until every VNode resolves to one endpoint (none on `avoid`) and the agents host
    exactly that: the resolved agent at the resolved epoch, the others not at all."""

    async def look() -> Hosting:
        _, endpoints = await api.wait_resolvable(
            NET, dict.fromkeys(VNODES, 1), within=20, avoid=avoid
        )
        want = {
            (a.name, v): (endpoints[v][0][1] if endpoints[v][0][0] == a.name else None)
            for a in agents
            for v in VNODES
        }
        got = {
            (a.name, v): await hosted_epoch(a.address, a.name, v) for a in agents for v in VNODES
        }
        return Hosting(want, got, endpoints)

    hosting = await wait.until(
        look,
        within=20,
        what="agents host what the orchestrator assigned",
        accept=lambda h: h.got == h.want,
        every=0.1,
    )
    return hosting.endpoints


async def test_agents_follow_their_assignments_through_leave_and_death(orchestrator, tmp_path):
    api = cluster.Api(orchestrator)
    started: list[agents_mod.Agent] = []
    try:
        a = AgentProc(orchestrator, "agent-a", tmp_path / "a")
        started.append(a)
        b = AgentProc(orchestrator, "agent-b", tmp_path / "b")
        started.append(b)
        agents = [a, b]
        assert (tmp_path / "a" / "credential.json").stat().st_mode & 0o777 == 0o600
        await api.apply(MANIFEST)
        await wait_hosting(api, agents)

        # SIGTERM: a deregisters, its VNodes move to b, then it exits 0.
        a.proc.send_signal(signal.SIGTERM)
        endpoints = await wait_hosting(api, [b], avoid="agent-a")
        assert all(endpoints[v][0][0] == "agent-b" for v in VNODES)
        assert await asyncio.to_thread(a.proc.wait, 30) == 0
        assert "still assigned" not in a.log.read_text()  # left drained, not timed out

        # SIGKILL: b's VNodes are re-placed on a newcomer c.
        c = AgentProc(orchestrator, "agent-c", tmp_path / "c")
        started.append(c)
        b.proc.send_signal(signal.SIGKILL)
        await asyncio.to_thread(b.proc.wait, 10)
        endpoints = await wait_hosting(api, [c], avoid="agent-b")
        assert all(endpoints[v][0][0] == "agent-c" for v in VNODES)
    finally:
        await api.close()
        for agent in started:
            procs.stop(agent.proc)


def test_a_restarted_agent_keeps_its_name(orchestrator, tmp_path):
    first = AgentProc(orchestrator, "agent-r", tmp_path / "r")
    assert procs.stop(first.proc) == 0
    second = AgentProc(orchestrator, "agent-r", tmp_path / "r")  # presents the kept credential
    assert procs.stop(second.proc) == 0


@pytest.mark.parametrize(
    ("flag", "value"),
    [("--cpu", "lots"), ("--memory", "5Xi"), ("--listen", "nowhere"), ("--label", "novalue")],
)
def test_a_bad_flag_is_one_line_naming_it_and_exit_2(flag, value):
    proc = subprocess.run(
        [procs.script("dcnr-agent"), "--orchestrator", "127.0.0.1:1", flag, value],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert flag in lines[0]
    assert value in lines[0]
    assert "Traceback" not in proc.stderr


def test_agent_logs_are_json_lines_when_stderr_is_not_a_terminal(orchestrator, tmp_path):
    """Operators ship agent logs like the orchestrator's: one JSON object a line."""
    agent = agents_mod.Agent(orchestrator, "agent-j", tmp_path / "j", extra=["--log-level", "info"])
    assert agent.stop() == 0  # SIGTERM: it deregisters, and says so, before exiting
    entries = [json.loads(line) for line in agent.log.read_text().splitlines()]
    assert entries
    for entry in entries:
        assert {"ts", "level", "logger", "msg"} <= entry.keys(), entry
    messages = [entry["msg"] for entry in entries]
    assert "deregistered agent-j" in messages, messages


async def test_agents_survive_sigterm_of_the_orchestrator_and_follow_its_successor(tmp_path):
    """SIGTERM on `serve` (a Kubernetes rollout, systemd) cancels every agent's open
    WatchAssignments stream; that must cost an agent a reconnect, never its life."""
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{probe.getsockname()[1]}"  # both servers, one address
    quick = ["--drain-deadline", "2"]
    flags = [*TIMINGS, *identities.ca_flags(tmp_path)]  # `hosted_epoch` signs as the driver
    with (
        procs.orchestrator(store_url, listen=address, extra=flags) as first,
        agents_mod.agents(address, tmp_path, 2, extra=quick) as started,
    ):
        assert procs.stop(first.proc) == 0  # clean stop: their streams are cancelled
        with procs.orchestrator(store_url, listen=address, extra=flags):
            api = cluster.Api(address)
            try:
                # Work placed by the successor reaches the agents' data planes: they
                # reconnected, rather than merely being still on record.
                await api.apply(MANIFEST)
                await wait_hosting(api, started)
            finally:
                await api.close()
            for agent in started:
                assert agent.proc.poll() is None, agent.log_tail()
                assert "Traceback" not in agent.log.read_text(), agent.log_tail()


async def _pnode(store_url: str, name: str, check, *, within: float = 30.0):
    """The PNode record once `check(record)` holds."""

    async def look():
        pnodes, _, _ = await cluster.read_state(store_url)
        return next((p for p in pnodes if p.name == name), None)

    return await wait.until(
        look,
        within=within,
        what=f"pnode {name} to meet the condition",
        accept=lambda p: p is not None and check(p),
        every=0.1,
    )


async def test_a_fenced_agent_registers_once(tmp_path):
    """Both the heartbeat and the watch stream learn of a fence; one registration follows,
    so the incarnation moves by one, not two."""
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    with (
        procs.orchestrator(store_url, extra=TIMINGS) as served,
        agents_mod.agents(served.address, tmp_path, 1, extra=["--drain-deadline", "2"]) as (a,),
    ):
        before = await _pnode(store_url, a.name, lambda p: p.status.phase == "Ready")
        a.proc.send_signal(signal.SIGSTOP)  # past its lease: the orchestrator fences it
        try:
            await _pnode(store_url, a.name, lambda p: p.status.phase != "Ready")
        finally:
            a.proc.send_signal(signal.SIGCONT)
        after = await _pnode(store_url, a.name, lambda p: p.status.phase == "Ready")
        assert after.status.incarnation == before.status.incarnation + 1


async def test_agents_resolve_each_other_with_their_credential_when_the_server_has_tokens(
    tmp_path: Path,
) -> None:
    """With tokens, ResolutionService answers only PNodes hosting part of the network: an
    inference crossing from one agent to the other works because each agent resolves its
    neighbour with the credential Register gave it (room for two of the three VNodes
    each, so at least one hop crosses agents)."""
    (tmp_path / "tokens").write_text("admin-token\n")
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    with (
        procs.orchestrator(
            store_url,
            extra=[
                *TIMINGS,
                *identities.ca_flags(tmp_path),
                "--admin-token-file",
                str(tmp_path / "tokens"),
            ],
        ) as served,
        agents_mod.agents(
            served.address, tmp_path, 2, cpu="250m", extra=["--drain-deadline", "2"]
        ) as started,
    ):
        api = cluster.Api(served.address, token="admin-token")
        try:
            await api.apply(MANIFEST)
            endpoints = await wait_hosting(api, started)
            assert len({eps[0][0] for eps in endpoints.values()}) == 2
            stub = job_pb2_grpc.JobServiceStub(api.channel)
            x = np.load(REPO / "examples" / "digits" / "data.npz")["x_test"][:3]
            reply = await stub.Infer(
                job_pb2.InferRequest(
                    header=cluster.HEADER,
                    network=NET,
                    tensors=job_pb2.NamedTensors(tensors={"x": tensors.encode(x)}),
                ),
                metadata=api.metadata,
                timeout=60,
            )
            assert tensors.decode(reply.outputs["act"]).shape == (3, 4)
        finally:
            await api.close()
        for agent in started:
            assert "UNAUTHENTICATED" not in agent.log.read_text()
            assert "PERMISSION_DENIED" not in agent.log.read_text()
