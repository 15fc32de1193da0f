"""`dcnr-orchestrator up`: a local cluster in one command, stopped cleanly by Ctrl-C; it
announces its agents' pids, starts again an agent that dies, and a script that started it
(the demo) touches only its own agents, never another cluster's of the same name."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import types
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import yaml

from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from controller import server, up
from tests.support import procs, wait

REPO = Path(__file__).resolve().parents[2]


def _demo() -> types.ModuleType:
    """examples/demo.py, the script `make demo` runs (examples/ is not a package)."""
    spec = importlib.util.spec_from_file_location("dcnr_demo", REPO / "examples" / "demo.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _channel(address: str, ca: Path | None) -> grpc.Channel:
    if ca is None:
        return grpc.insecure_channel(address)
    return grpc.secure_channel(address, grpc.ssl_channel_credentials(ca.read_bytes()))


def _ready_pnodes(address: str, ca: Path | None) -> dict[str, str]:
    with _channel(address, ca) as channel:
        reply = pnode_pb2_grpc.PNodeServiceStub(channel).ListPNodes(
            pnode_pb2.ListPNodesRequest(header=common_pb2.RequestHeader()), timeout=10
        )
    docs = [json.loads(item.json) for item in reply.items]
    return {d["metadata"]["name"]: d["status"]["phase"] for d in docs}


def _until_ready(address: str, names: list[str], ca: Path | None) -> None:
    wait.until_sync(
        lambda: _ready_pnodes(address, ca),
        within=60,
        what=f"Ready agents {names}",
        accept=lambda phases: phases == dict.fromkeys(names, "Ready"),
        every=0.1,
    )


@pytest.mark.parametrize(
    ("restarts", "ran_for", "expected"),
    [
        (0, 0.5, (1, 1.0)),
        (1, 0.5, (2, 2.0)),
        (4, 3.0, (5, 16.0)),
        (5, 3.0, (6, 30.0)),  # capped
        (40, 3.0, (41, 30.0)),
        (6, up.RESTART_RESET, (1, 1.0)),  # it ran long enough: the count starts over
    ],
)
def test_restart_backoff(restarts: int, ran_for: float, expected: tuple[int, float]) -> None:
    assert up.restart_delay(restarts, ran_for) == expected


def test_exits_are_described() -> None:
    assert up.describe_exit(1) == "exited with status 1"
    assert up.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"


@pytest.mark.slow
def test_up_runs_agents_until_interrupted(tmp_path: Path) -> None:
    """TLS by default: the banner names a dcnctl config whose context carries the local CA,
    the agents `up` starts register over TLS, and a plaintext client is turned away."""
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
        exported = re.search(r"export DCNR_CONFIG=(\S+)$", procs.read_line(proc))
        assert exported, "no dcnctl config in the banner"
        assert "dcnctl get pnodes" in procs.read_line(proc)
        dashboard = re.search(r"dashboard: +(https://127\.0\.0\.1:\d+/)$", procs.read_line(proc))
        assert dashboard, "no dashboard URL in the banner"
        config = yaml.safe_load(Path(exported[1]).read_text())
        (context,) = config["contexts"]
        assert config["current-context"] == context["name"] == "up"
        assert context["server"] == address
        ca = Path(context["tls-ca"])
        assert ca == state / "tls" / "ca.pem"
        assert f"(TLS, CA {ca};" in banner
        pids = {}
        for name in ("agent-0", "agent-1"):
            line = procs.read_line(proc)
            announced = re.match(rf"^  {name}: pid (\d+) \(log (\S+)\)$", line)
            assert announced, line
            assert announced[2] == str(state / name / "agent.log")
            pids[name] = int(announced[1])
        assert procs.read_line(proc).startswith("Ctrl-C stops everything")
        _until_ready(address, ["agent-0", "agent-1"], ca)
        assert all(_alive(pid) for pid in pids.values())
        # The dashboard, on the same local CA (up configures no token: open, as its gRPC is).
        trusted = ssl.create_default_context(cafile=str(ca))
        with urllib.request.urlopen(
            f"{dashboard[1]}api/overview", context=trusted, timeout=10
        ) as reply:
            shown = {p["name"] for p in json.load(reply)["pnodes"]}
        assert shown == {"agent-0", "agent-1"}
        with pytest.raises(grpc.RpcError) as plaintext:
            _ready_pnodes(address, None)
        assert plaintext.value.code() == grpc.StatusCode.UNAVAILABLE
        dcnctl = subprocess.run(
            [procs.script("dcnctl"), "get", "pnodes"],
            env={**os.environ, "DCNR_CONFIG": exported[1], "DCNR_SERVER": ""},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert dcnctl.returncode == 0, dcnctl.stderr
        assert "agent-0" in dcnctl.stdout
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
        assert not [pid for pid in pids.values() if _alive(pid)], "agents left behind"
    finally:
        procs.stop(proc)


@pytest.fixture
def demo() -> Iterator[types.ModuleType]:
    yield _demo()
    sys.modules.pop("dcnr_demo", None)


@pytest.mark.slow
def test_two_clusters_on_one_machine_do_not_disturb_each_other(
    tmp_path: Path, demo: types.ModuleType
) -> None:
    """Both clusters run an `agent-0`; the demo's kill takes only its own cluster's, and that
    cluster's `up` says so and starts it again. The other also serves /metrics (`up
    --metrics-listen`), scraped here."""
    ours = demo.Cluster(tmp_path / "ours", agents=1)
    try:
        theirs = demo.Cluster(
            tmp_path / "theirs", agents=1, extra=("--metrics-listen", "127.0.0.1:0", "--insecure")
        )
        try:
            assert ours.metrics is None
            assert theirs.metrics is not None, theirs.banner
            with urllib.request.urlopen(theirs.metrics[1], timeout=10) as reply:
                assert "dcnr_workqueue_depth" in reply.read().decode()
            _until_ready(ours.address, ["agent-0"], ours.ca)
            _until_ready(theirs.address, ["agent-0"], theirs.ca)
            their_agent = theirs.pids["agent-0"]

            killed = ours.kill_agent("agent-0")
            assert not _alive(killed)
            # Ours comes back as a new process and a new incarnation; theirs never noticed.
            wait.until_sync(
                lambda: ours.pids["agent-0"],
                within=30,
                what="our agent-0 started again",
                accept=lambda pid: pid != killed,
            )
            _until_ready(ours.address, ["agent-0"], ours.ca)
            assert _alive(their_agent)
            assert theirs.pids == {"agent-0": their_agent}
            assert theirs.exited == set()
            assert _ready_pnodes(theirs.address, theirs.ca) == {"agent-0": "Ready"}

            # A name this cluster never announced is refused, not looked for elsewhere.
            with pytest.raises(SystemExit, match="no running agent 'agent-7'"):
                ours.kill_agent("agent-7")
            assert theirs.stop() == 0
            assert not _alive(their_agent)
        finally:
            theirs.stop()
        restarted = ours.pids["agent-0"]
        assert ours.stop() == 0
        assert not _alive(restarted)
    finally:
        ours.stop()


@pytest.mark.slow
def test_up_refuses_a_negative_agent_count() -> None:
    result = subprocess.run(
        [procs.script("dcnr-orchestrator"), "up", "--agents", "-1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 2
    assert "--agents" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("insecure", [False, True])
def test_ups_dcnctl_context_says_how_to_reach_it(tmp_path: Path, insecure: bool) -> None:
    """dcnctl dials TLS unless told: `up --insecure` must write insecure: true, and TLS `up`
    its CA, or the context it hands out could not reach it."""
    from dcnctl import config as dcnctl_config  # the test reads it as dcnctl would

    cfg = up.UpConfig(
        serve=server.ServeConfig(store_url="sqlite:///x.db"), agents=0, state_dir=tmp_path,
        workdir=tmp_path, insecure=insecure,
    )  # fmt: skip
    ca = None if insecure else tmp_path / "ca.pem"
    path = up.write_dcnctl_config(cfg, "127.0.0.1:7070", ca)
    ctx = dcnctl_config.load(path).contexts["up"]
    assert ctx.tls is not insecure
    assert ctx.tls_ca == ("" if insecure else str(ca))
