"""A real `dcnr-agent` outlives what happens to the orchestrator replicas it talks to: the
only live replica SIGSTOPped for 10 s (the chaos run's finding: every agent attached to it
exited), then its replica SIGKILLed while another is up. What the agent thinks of its link
is read from its /metrics (`dcnr_agent_orchestrator_connected`); what the orchestrator
thinks of the PNode from the store."""

from __future__ import annotations

import contextlib
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.support import agents as agents_mod
from tests.support import metrics, procs, wait

pytestmark = pytest.mark.slow

LEASE = 5.0
TIMINGS = [
    "--heartbeat-interval", "0.5",
    "--lease-duration", str(LEASE),
    "--lost-grace", "2",
    "--replica-lease", "2",
]  # fmt: skip
STOPPED_FOR = 10.0


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


async def test_an_agent_outlives_a_sigstop_of_its_only_live_replica_then_the_kill_of_it(
    tmp_path: Path,
) -> None:
    """One agent, told of two replicas: `a`, and `b` not started yet. (1) `a`, the only
    one up, is SIGSTOPped for 10 s: the agent reports it lost, rotates over both addresses
    without exiting, and once `a` resumes the PNode is Ready again within a lease. (2) `b`
    starts and `a` is SIGKILLed: the agent moves to `b` and stays up. One agent and two
    replicas started in all: the two faults share them, to keep the suite fast."""
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    b_address = _free_address()
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(
            procs.orchestrator(store_url, extra=[*TIMINGS, "--replica-id", "replica-a"])
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

        # (2) b comes up; a is killed.
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
