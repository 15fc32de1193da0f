"""Events end to end: a real orchestrator and agents; a placement and a fencing show up in
`dcnctl get events` and `describe`, and are counted in `dcnr_events_total`.

A cluster of its own (not the session's): fencing an agent (SIGSTOP past its lease) would
disturb the other dcnctl tests.
"""

from __future__ import annotations

import re
import signal
from pathlib import Path

import pytest
import yaml

from tests.dcnctl.conftest import Dcnctl
from tests.support import agents, metrics, procs, wait

pytestmark = pytest.mark.slow

TIMINGS = [
    "--heartbeat-interval", "0.3",
    "--lease-duration", "1.5",
    "--lost-grace", "30",
    "--replica-lease", "1.5",
    "--metrics-listen", "127.0.0.1:0",
]  # fmt: skip
NET = {
    "apiVersion": "dcnr.io/v1",
    "kind": "Network",
    "metadata": {"name": "seen"},
    "spec": {"vnodes": [
        {"name": "a", "kind": "input", "resources": {"cpu": "100m", "memory": "32Mi"}},
        {"name": "b", "kind": "dense", "inputs": ["a"], "params": {"units": 4},
         "resources": {"cpu": "100m", "memory": "32Mi"}},
    ]},
}  # fmt: skip


def test_placements_and_fencing_are_events(tmp_path: Path) -> None:
    with (
        procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}", extra=TIMINGS) as served,
        agents.agents(served.address, tmp_path, 1, extra=["--drain-deadline", "2"]) as (agent,),
    ):
        cli = Dcnctl(tmp_path / "config", served.address, insecure=True)
        manifest = tmp_path / "seen.yaml"
        manifest.write_text(yaml.safe_dump(NET))
        cli("apply", "-f", str(manifest))

        def rows(*args: str) -> list[str]:
            return cli("get", "events", *args).stdout.splitlines()

        placed = wait_for(
            lambda: rows("--for", "network/seen"), "Placed events of network seen",
            lambda lines: sum(" Placed " in line for line in lines) == 2,
        )  # fmt: skip
        assert re.fullmatch(r"LAST SEEN +TYPE +REASON +OBJECT +MESSAGE", placed[0]), placed
        assert any(
            re.fullmatch(rf"\S+ +Normal +Placed +network/seen +placed seen\.a\.0 on pnode"
                         rf" {agent.name}", line)
            for line in placed
        ), placed  # fmt: skip
        described = cli("describe", "network", "seen").stdout
        events = described[described.index("\nEvents:\n") :]
        assert re.search(r"^  \S+ +Normal +Placed +placed seen\.b\.0 on pnode", events, re.M)

        agent.proc.send_signal(signal.SIGSTOP)  # past its lease: its next heartbeat is fenced
        try:
            wait_for(
                lambda: cli.json("get", "pnode", agent.name)["status"]["phase"],
                "the agent's lease to expire", lambda phase: phase != "Ready",
            )  # fmt: skip
        finally:
            agent.proc.send_signal(signal.SIGCONT)
        fenced = wait_for(
            lambda: cli("describe", "pnode", agent.name).stdout, "a Fenced event",
            lambda text: " Fenced " in text,
        )  # fmt: skip
        assert re.search(
            r"^  \S+ +Warning +Fenced +heartbeat of incarnation 1 refused: the lease expired;",
            fenced,
            re.M,
        ), fenced
        everything = rows()
        assert any(f"pnode/{agent.name}" in line and " Fenced " in line for line in everything)
        assert served.metrics_port is not None
        counted = metrics.scrape(served.metrics_port)
        by_reason = metrics.by_label(counted, "dcnr_events_total", "reason")
        assert by_reason["Placed"] >= 2
        assert by_reason["Fenced"] >= 1


def wait_for(read, what: str, accept):
    return wait.until_sync(read, within=30.0, what=what, accept=accept, every=0.2)
