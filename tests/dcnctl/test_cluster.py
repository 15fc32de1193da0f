"""dcnctl against a live orchestrator and agents: apply, get (every format), describe,
explain, watch, delete, and the server's errors in kubectl's words."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.dcnctl import goldens
from tests.dcnctl.conftest import REPO, Dcnctl, started_cluster
from tests.support import procs, wait

pytestmark = pytest.mark.slow

AGE = {"AGE": goldens.whole("<AGE>")}


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """This file's own cluster, not the session's: its golden tables show agents nothing
    has trained on yet (TRUST 0), and under xdist the session's cluster may already have
    served tests/dcnctl/test_jobs.py, whose training earns the agents trust."""
    with started_cluster(tmp_path_factory.mktemp("dcnctl-golden-cluster")) as address:
        yield address


def chain(name: str, label: str, *, cpu: str = "100m") -> dict[str, Any]:
    return {
        "apiVersion": "dcnr.io/v1",
        "kind": "Network",
        "metadata": {"name": name, "labels": {"suite": label}},
        "spec": {"vnodes": [
            {"name": "a", "kind": "input", "resources": {"cpu": cpu, "memory": "32Mi"}},
            {"name": "b", "kind": "dense", "inputs": ["a"], "params": {"units": 4},
             "resources": {"cpu": "100m", "memory": "32Mi"}},
            {"name": "c", "kind": "relu", "inputs": ["b"]},
        ]},
    }  # fmt: skip


def write(path: Path, manifest: dict[str, Any]) -> str:
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


def ready(name: str) -> Any:
    return lambda body: body["status"].get("phase") == "Ready"


@pytest.fixture(scope="module")
def golden_net(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("golden")
    cli = Dcnctl(root / "config", cluster, insecure=True)
    cli("apply", "-f", write(root / "golden.yaml", chain("golden", "golden")))
    cli.until("golden Ready", ready("golden"), "get", "network", "golden")
    cli.until(
        "golden's VNodes Running on their agents",
        lambda body: {i["status"]["phase"] for i in body["items"]} == {"Running"},
        *("get", "vnodes", "--network", "golden"),
    )
    return "golden"


def test_apply_outcomes(dcnctl: Dcnctl, tmp_path: Path) -> None:
    manifest = chain("outcomes", "outcomes")
    path = write(tmp_path / "n.yaml", manifest)
    assert dcnctl("apply", "-f", path).stdout == "network.dcnr.io/outcomes created\n"
    assert dcnctl("apply", "-f", path).stdout == "network.dcnr.io/outcomes unchanged\n"
    manifest["spec"]["vnodes"][1]["params"]["units"] = 8
    write(tmp_path / "n.yaml", manifest)
    out = dcnctl("apply", "-f", path, "--dry-run=server").stdout
    assert out == "network.dcnr.io/outcomes configured (server dry run)\n"
    assert dcnctl.json("get", "network", "outcomes")["metadata"]["generation"] == 1
    assert dcnctl("apply", "-f", "-", input=Path(path).read_text()).stdout == (
        "network.dcnr.io/outcomes configured\n"
    )
    assert dcnctl.json("get", "network", "outcomes")["metadata"]["generation"] == 2
    # A directory applies every manifest in it; a stale resourceVersion is a Conflict.
    manifest["metadata"]["resourceVersion"] = 1
    write(tmp_path / "n.yaml", manifest)
    err = dcnctl.fails("apply", "-f", str(tmp_path))
    assert err.startswith("Error from server (Conflict): metadata.resourceVersion: 1 given")


def test_tables_match_golden_files(dcnctl: Dcnctl, golden_net: str) -> None:
    goldens.check("networks.txt", dcnctl("get", "networks", "-l", "suite=golden").stdout, AGE)
    wide = dcnctl("get", "net", golden_net, "-o", "wide").stdout
    goldens.check("networks-wide.txt", wide, AGE)
    vnodes = dcnctl("get", "vnodes", "--network", golden_net).stdout
    goldens.check("vnodes.txt", vnodes, {**AGE, "PNODE": goldens.whole("<PNODE>")})
    pnode_masks = {
        **AGE,
        "CPU": goldens.allocated_part,
        "MEMORY": goldens.allocated_part,
        "ALLOCATIONS": goldens.whole("<N>"),
        "ADDRESS": goldens.whole("<ADDRESS>"),
        "IDENTITY": goldens.whole("<VALID-FOR>"),
    }
    goldens.check("pnodes.txt", dcnctl("get", "pnodes").stdout, pnode_masks)
    goldens.check("pnodes-wide.txt", dcnctl("get", "pn", "-o", "wide").stdout, pnode_masks)
    bare = dcnctl("get", "networks", "-l", "suite=golden", "--no-headers").stdout
    assert bare.split()[:3] == ["golden", "3/3", "Ready"]


def test_structured_output(dcnctl: Dcnctl, golden_net: str) -> None:
    listed = dcnctl.json("get", "networks", "-l", "suite=golden")
    assert (listed["apiVersion"], listed["kind"]) == ("dcnr.io/v1", "List")
    assert [n["metadata"]["name"] for n in listed["items"]] == [golden_net]
    single = dcnctl.json("get", "network", golden_net)
    assert (single["kind"], single["spec"]["vnodes"][1]["params"]) == ("Network", {"units": 4})
    as_yaml = yaml.safe_load(dcnctl("get", "network/golden", "-o", "yaml").stdout)
    assert as_yaml == dcnctl.json("get", "network", golden_net)
    assert dcnctl("get", "networks", "-l", "suite=golden", "-o", "name").stdout == (
        "network.dcnr.io/golden\n"
    )
    vnodes = dcnctl.json("get", "vnodes", "--network", golden_net)["items"]
    assert {v["kind"] for v in vnodes} == {"Allocation"}
    assert sorted((v["spec"]["vnode"], v["spec"]["replica"], v["spec"]["epoch"]) for v in vnodes) \
        == [("a", 0, 1), ("b", 0, 1), ("c", 0, 1)]  # fmt: skip
    assert all(v["spec"]["pnode"].startswith("agent-") and v["status"]["phase"] for v in vnodes)
    pnodes = dcnctl.json("get", "pnodes")["items"]
    assert [p["status"]["phase"] for p in pnodes] == ["Ready"] * 3
    assert all(p["spec"]["capacity"] == {"cpu": 2, "memory": "2Gi", "accelerators": []}
               and "allocated" in p["status"] and "credentialHash" not in p["spec"]
               for p in pnodes)  # fmt: skip
    empty = dcnctl("get", "networks", "-l", "suite=nothing-has-this")
    assert (empty.stdout, empty.stderr) == ("", "No resources found\n")
    assert json.loads(dcnctl("get", "jobs", "-l", "x=y", "-o", "json").stdout)["items"] == []


def test_server_errors_read_like_kubectl(dcnctl: Dcnctl) -> None:
    not_found = "Error from server (NotFound): "
    cases = {
        ("get", "network", "nope"): not_found + 'networks.dcnr.io "nope" not found',
        ("get", "job", "nope"): not_found + 'jobs.dcnr.io "nope" not found',
        ("describe", "pnode", "nope"): not_found + 'pnodes.dcnr.io "nope" not found',
        ("get", "vnodes", "nope"): not_found + 'allocations.dcnr.io "nope" not found',
        ("delete", "network", "nope"): not_found + 'networks.dcnr.io "nope" not found',
        ("get", "networks", "-l", "a in b"): "Error from server (Invalid): label_selector: ",
        ("explain", "placement", "nope", "a"): not_found + "network 'nope' not found",
    }
    for args, line in cases.items():
        err = dcnctl.fails(*args)
        assert err.startswith(line), (args, err)
        assert len(err.splitlines()) == 1, err
    assert dcnctl("delete", "network", "nope", "--ignore-not-found").stdout == ""


def test_describe_and_explain_say_why(dcnctl: Dcnctl, golden_net: str, tmp_path: Path) -> None:
    # Events are written a moment after they happen (the recorder flushes every second).
    text = wait.until_sync(
        lambda: dcnctl("describe", "network", golden_net).stdout,
        within=30.0, what="golden's Placed events", every=0.2,
        accept=lambda t: re.search(r"^  \S+ +Normal +Placed +placed golden\.c\.0 on pnode"
                                   r" agent-\d$", t, re.M) is not None,
    )  # fmt: skip
    for expected in ("Name:           golden", "Labels:         suite=golden", "VNodes:",
                     "Conditions:", "Placement:", "Events:\n  LAST SEEN   TYPE"):  # fmt: skip
        assert expected in text, text
    assert [line.split()[0] for line in text.split("Placement:\n")[1].splitlines()[1:4]] == [
        "a",
        "b",
        "c",
    ]
    dcnctl("apply", "-f", write(tmp_path / "big.yaml", chain("too-big", "big", cpu="64")))
    dcnctl.until("unschedulable", lambda b: b["status"]["conditions"], "get", "network", "too-big")
    text = dcnctl("describe", "network", "too-big").stdout
    assert "<unplaced>" in text
    assert "Unschedulable:  0/3 pnodes" in text, text
    wait.until_sync(
        lambda: dcnctl("get", "events", "--for", "network/too-big").stdout,
        within=30.0, what="a FailedScheduling event", every=0.2,
        accept=lambda t: re.search(r"Warning +FailedScheduling +network/too-big +0/3 pnodes", t),
    )  # fmt: skip
    explained = dcnctl("explain", "placement", "too-big", "a").stdout
    rows = goldens.cells(explained.split("\n\n")[0])
    assert rows[0][:4] == ["PNODE", "FEASIBLE", "REASON", "SCORE"]
    assert sorted(r[0] for r in rows[1:]) == ["agent-0", "agent-1", "agent-2"]
    assert all(r[1] == "no" and "cpu" in r[2] for r in rows[1:]), rows
    assert "Placed on:  <unplaced>" in explained
    assert "Summary:" in explained
    placed = dcnctl("explain", "placement", golden_net, "b").stdout
    marked = [r[0] for r in goldens.cells(placed.split("\n\n")[0])[1:] if r[0].endswith(" *")]
    assert len(marked) == 1, placed
    described = dcnctl("describe", "pnode", "agent-0").stdout
    assert "Capacity:" in described
    assert re.search(r"^  \S+ +Normal +Registered +agent registered, incarnation 1$",
                     described, re.M), described  # fmt: skip
    dcnctl("delete", "network", "too-big")


def test_watch_prints_changes_until_interrupted(dcnctl: Dcnctl, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "dcnctl", "--insecure", "get", "networks", "-l", "suite=watched",
         "-w"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dcnctl.env(), cwd=REPO,
    )  # fmt: skip
    try:
        dcnctl("apply", "-f", write(tmp_path / "w.yaml", chain("watched", "watched")))
        first = procs.read_line(proc)
        assert first.split() == ["NAME", "READY", "PHASE", "AGE"] or first.startswith("watched")
        seen = first
        while "Ready" not in seen:
            seen = procs.read_line(proc)
            assert seen.startswith("watched"), seen
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err
    assert err.count("warning: --insecure: plaintext gRPC") == 1  # once, reconnects or not
    dcnctl("delete", "network", "watched")


def test_delete_waits_until_gone(dcnctl: Dcnctl, tmp_path: Path) -> None:
    path = write(tmp_path / "d.yaml", chain("doomed", "doomed"))
    dcnctl("apply", "-f", path)
    out = dcnctl("delete", "-f", path, "--wait", "--timeout", "30s").stdout
    assert out == 'network.dcnr.io "doomed" deleted\n'
    assert "NotFound" in dcnctl.fails("get", "network", "doomed")
    err = dcnctl.fails("delete", "pnode", "agent-0")
    assert err.startswith("error: pnodes cannot be deleted with dcnctl")


def test_version_asks_the_server(dcnctl: Dcnctl) -> None:
    lines = dcnctl("version").stdout.splitlines()
    assert lines[0].startswith("Client Version: v")
    assert lines[1].startswith("Server Version: v0.1.0 (dcnr.io/v1)")
