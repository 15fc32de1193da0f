"""A real `dcnr-agent` outlives what happens to the orchestrator replicas it talks to and to
their store: the only live replica SIGSTOPped for 10 s (the chaos run's finding: every
agent attached to it exited), the store (a moto server of the test's own) SIGSTOPped for
3 s, then its replica SIGKILLed while another is up. What the agent thinks of its link is
read from its /metrics (`dcnr_agent_orchestrator_connected`); what the orchestrator thinks
of the PNode from the store."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.support import agents as agents_mod
from tests.support import metrics, moto, procs, wait

pytestmark = pytest.mark.slow

LEASE = 5.0
TIMINGS = [
    "--heartbeat-interval", "0.5",
    "--lease-duration", str(LEASE),
    "--lost-grace", "2",
    "--replica-lease", "2",
]  # fmt: skip
STOPPED_FOR = 10.0
#: How long the store is held stopped: the chaos run's stalls.
STALL = 3.0


def _link(agent: agents_mod.Agent) -> tuple[float, float, float]:
    """(connected 0/1, heartbeats answered ok, heartbeats failed), scraped from the agent;
    AssertionError if the agent has exited."""
    assert agent.proc.poll() is None, f"the agent exited:\n{agent.log_tail()}"
    assert agent.metrics_port is not None
    samples = metrics.scrape(agent.metrics_port)
    beats = metrics.by_label(samples, "dcnr_agent_heartbeats_total", "result")
    return (
        samples[("dcnr_agent_orchestrator_connected", ())],
        beats["ok"],
        beats["failed"],
    )


async def _ready(store_url: str, name: str) -> bool:
    pnodes, _, _ = await cluster.read_state(store_url)
    return any(p.name == name and p.status.phase == "Ready" for p in pnodes)


@contextlib.contextmanager
def _agent(addresses: str, state_dir: Path) -> Iterator[agents_mod.Agent]:
    agent = agents_mod.Agent(
        addresses,
        "agent-r",
        state_dir,
        extra=["--metrics-listen", "127.0.0.1:0", "--drain-deadline", "1"],
    )
    try:
        yield agent
    finally:
        agent.stop()


def _free_address() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


def _stalled_seconds(port: int) -> float:
    return metrics.scrape(port).get(("dcnr_store_stalled_seconds", ()), 0.0)


async def test_an_agent_outlives_a_sigstop_of_its_replica_a_store_stall_and_a_kill(
    tmp_path: Path, aws_test_env: None
) -> None:
    """One agent, told of two replicas: `a`, and `b` not started yet, on a DynamoDB store
    (moto). (1) `a`, the only one up, is SIGSTOPped for 10 s: the agent reports it lost,
    rotates over both addresses without exiting, and once `a` resumes the PNode is Ready
    again within a lease. (2) The store is SIGSTOPped for 3 s: the agent stays up and the
    PNode Ready within a lease of the resume. (3) `b` starts and `a` is SIGKILLed: the agent
    moves to `b` and stays up. One agent and two replicas started in all: the faults share
    them, to keep the suite fast."""
    b_address = _free_address()
    with contextlib.ExitStack() as stack:
        server = moto.MotoServer()
        endpoint = stack.enter_context(server)
        store_url = f"dynamodb://outlive-{uuid.uuid4().hex[:8]}?endpoint={endpoint}"
        init = await asyncio.to_thread(
            subprocess.run,
            [procs.script("dcnr-orchestrator"), "init-store", "--store", store_url],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert init.returncode == 0, init.stderr
        a = stack.enter_context(
            procs.orchestrator(
                store_url,
                extra=[*TIMINGS, "--replica-id", "replica-a", "--metrics-listen", "127.0.0.1:0"],
            )
        )
        agent = stack.enter_context(_agent(f"{a.address},{b_address}", tmp_path / "agent"))
        await wait.until(
            lambda: _ready(store_url, agent.name), within=30, what="the PNode Ready", every=0.1
        )
        await wait.until(
            lambda: _link(agent)[0] == 1, within=30, what="the agent connected", every=0.1
        )

        # (1) SIGSTOP the only live replica, held until the agent says it lost it and
        # 10 s have passed; the agent is checked alive at every look.
        a.proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        try:
            await wait.until(
                lambda: _link(agent)[0] == 0 and time.monotonic() - stopped >= STOPPED_FOR,
                within=STOPPED_FOR + 30,
                what="the agent reporting the orchestrator lost, 10 s into the stop",
                every=0.2,
            )
        finally:
            a.proc.send_signal(signal.SIGCONT)
        _, ok_at_resume, failed = _link(agent)
        assert failed > 0, "no heartbeat failed while the orchestrator was stopped"

        async def ready_again() -> bool:
            connected, ok, _ = _link(agent)
            return connected == 1 and ok > ok_at_resume and await _ready(store_url, agent.name)

        await wait.until(
            ready_again, within=LEASE, what="the PNode Ready again within a lease", every=0.1
        )
        log = agent.log.read_text()
        assert f"lost orchestrator {a.address}" in log, agent.log_tail()

        # (2) The store stalls for 3 s, held until the replica itself reports no store
        # round trip for that long.
        port = a.metrics_port
        assert port is not None
        server.pause()
        try:
            await wait.until(
                lambda: _stalled_seconds(port),
                accept=lambda seconds: seconds >= STALL,
                within=STALL + 30,
                what=f"replica a observes the store stalled for {STALL} s",
                every=0.1,
            )
            assert agent.proc.poll() is None, f"the agent exited:\n{agent.log_tail()}"
        finally:
            server.resume()
        _, ok_at_heal, _ = _link(agent)

        async def ready_after_stall() -> bool:
            connected, ok, _ = _link(agent)
            return connected == 1 and ok > ok_at_heal and await _ready(store_url, agent.name)

        await wait.until(
            ready_after_stall,
            within=LEASE,
            what="the PNode Ready within a lease of the store's resume",
            every=0.1,
        )

        # (3) b comes up; a is killed.
        b = stack.enter_context(
            procs.orchestrator(
                store_url, listen=b_address, extra=[*TIMINGS, "--replica-id", "replica-b"]
            )
        )
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=30)
        _, ok_at_kill, _ = _link(agent)

        async def on_b() -> bool:
            connected, ok, _ = _link(agent)
            return connected == 1 and ok > ok_at_kill + 3 and await _ready(store_url, agent.name)

        await wait.until(on_b, within=30, what="heartbeats answered by replica b", every=0.1)
        log = agent.log.read_text()
        assert f"reconnecting to orchestrator {b.address}" in log, agent.log_tail()
        assert "Traceback" not in log, agent.log_tail()
        assert agent.stop() == 0  # it leaves on our SIGTERM, cleanly
