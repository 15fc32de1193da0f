"""`dcnr-orchestrator up`: a local cluster in one command, stopped cleanly by Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import subprocess
from pathlib import Path

import grpc
import pytest

from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from tests.support import procs, wait

pytestmark = pytest.mark.slow


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if text in (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _ready_pnodes(address: str) -> dict[str, str]:
    with grpc.insecure_channel(address) as channel:
        reply = pnode_pb2_grpc.PNodeServiceStub(channel).ListPNodes(
            pnode_pb2.ListPNodesRequest(header=common_pb2.RequestHeader()), timeout=10
        )
    docs = [json.loads(item.json) for item in reply.items]
    return {d["metadata"]["name"]: d["status"]["phase"] for d in docs}


def test_up_runs_agents_until_interrupted(tmp_path: Path) -> None:
    state = tmp_path / "cluster"
    proc = subprocess.Popen(
        [procs.script("dcnr-orchestrator"), "up", "--agents", "2", "--listen", "127.0.0.1:0",
         "--state-dir", str(state)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        banner = procs.read_line(proc)
        match = re.search(r"orchestrator on (\S+) ", banner)
        assert match, banner
        address = match[1]
        assert "export DCNR_SERVER=" in procs.read_line(proc)
        wait.until_sync(
            lambda: _ready_pnodes(address),
            within=60,
            what="two Ready agents",
            accept=lambda phases: phases == {"agent-0": "Ready", "agent-1": "Ready"},
            every=0.1,
        )
        assert _processes_mentioning(str(state / "agent-0"))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not _processes_mentioning(str(state / "agent-")), "agents left behind"
    finally:
        procs.stop(proc)


def test_up_refuses_a_negative_agent_count() -> None:
    result = subprocess.run(
        [procs.script("dcnr-orchestrator"), "up", "--agents", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--agents" in result.stderr
    assert "Traceback" not in result.stderr
