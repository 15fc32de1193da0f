"""dcnctl train, infer and PNode administration against live agents, on the digits
example (one short epoch: these test the CLI, tests/integration test the learning)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.dcnctl import goldens
from tests.dcnctl.conftest import REPO, Dcnctl
from tests.support import wait

pytestmark = pytest.mark.slow

DIGITS = REPO / "examples" / "digits"
BAR = re.compile(r"^\[[#.]{20}\] step \d+/6 epoch [01]/1( loss \S+)?( acc \S+)? ETA \S+$")


@pytest.fixture(scope="module")
def digits(cluster: str, tmp_path_factory: pytest.TempPathFactory) -> Dcnctl:
    cli = Dcnctl(tmp_path_factory.mktemp("digits") / "config", cluster, insecure=True)
    cli("apply", "-f", str(DIGITS / "network.yaml"))
    cli.until("digits Ready", lambda b: b["status"].get("phase") == "Ready",
              "get", "network", "digits")  # fmt: skip
    return cli


def test_train_follows_the_job_to_the_end(digits: Dcnctl) -> None:
    out = digits("train", "digits", "--epochs", "1", "--batch-size", "256", "--optimizer",
                 "adam", "--lr", "0.01", "--seed", "1", "--name", "cli-train").stdout  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "job.dcnr.io/cli-train created"
    bars = [line for line in lines if line.startswith("[")]
    assert bars, lines
    assert all(BAR.match(line) for line in bars), lines
    assert bars[-1].startswith("[####################] step 6/6 epoch 1/1 loss ")
    assert re.match(r"^job\.dcnr\.io/cli-train succeeded: loss \d+\.\d{4} accuracy \d\.\d{3}$",
                    lines[-1]), lines  # fmt: skip
    table = digits("get", "jobs", "cli-train").stdout
    volatile = {"AGE": goldens.whole("<AGE>"), "LOSS": goldens.whole("<LOSS>"),
                "ACCURACY": goldens.whole("<ACC>")}  # fmt: skip
    goldens.check("jobs.txt", table, volatile)
    described = wait.until_sync(
        lambda: digits("describe", "job", "cli-train").stdout,
        within=30.0, what="the job's Succeeded event", every=0.2,
        accept=lambda t: re.search(r"^  \S+ +Normal +Succeeded +trained 6 steps$", t, re.M),
    )  # fmt: skip
    assert re.search(r"^  Phase: +Succeeded$", described, re.M), described
    assert "Optimizer:" in described
    events = described[described.index("\nEvents:\n") :]
    for reason in ("Created", "Started", "Succeeded"):
        assert re.search(rf"^  \S+ +Normal +{reason} ", events, re.M), events


def test_train_detach_prints_the_job_name(digits: Dcnctl) -> None:
    name = digits("train", "digits", "--detach", "--epochs", "1", "--batch-size", "512").stdout
    assert re.fullmatch(r"digits-[0-9a-f]{8}\n", name), name
    job = digits.until("detached job done", lambda b: b["status"]["phase"] == "Succeeded",
                       "get", "job", name.strip(), within=60)  # fmt: skip
    assert (job["spec"]["network"], job["spec"]["batchSize"]) == ("digits", 512)
    listed = digits("get", "jobs", "--network", "digits", "-o", "name").stdout.split()
    assert f"job.dcnr.io/{name.strip()}" in listed


def test_delete_job_cancels_a_running_one_and_one_job_trains_a_network(digits: Dcnctl) -> None:
    digits("train", "digits", "--detach", "--epochs", "100", "--batch-size", "8",
           "--name", "long-run")  # fmt: skip
    busy = digits.fails("train", "digits", "--detach", "--name", "second")
    assert re.fullmatch(
        r"Error from server \(BadRequest\): network 'digits' is busy: job 'long-run'"
        r" is (Pending|Running|Paused); cancel it with dcnctl delete job long-run\n",
        busy,
    ), busy
    out = digits("delete", "job", "long-run", "--wait").stdout
    assert out.startswith('job.dcnr.io "long-run" cancelled (was '), out
    assert digits.json("get", "job", "long-run")["status"]["phase"] == "Cancelled"
    assert digits("get", "jobs", "-o", "name").stdout.count("second") == 0
    # The network is free: the next run starts; the cancelled one's record is deleted.
    digits("train", "digits", "--detach", "--epochs", "1", "--batch-size", "512",
           "--name", "after")  # fmt: skip
    assert digits("delete", "job", "long-run").stdout == 'job.dcnr.io "long-run" deleted\n'
    err = digits.fails("get", "job", "long-run")
    assert err == 'Error from server (NotFound): jobs.dcnr.io "long-run" not found\n'
    digits.until("after done", lambda b: b["status"]["phase"] == "Succeeded",
                 "get", "job", "after", within=60)  # fmt: skip


def test_train_errors(digits: Dcnctl) -> None:
    err = digits.fails("train", "nope", "--detach")
    assert err == "Error from server (NotFound): network: 'nope' not found; apply it before " \
                  "training on it\n"  # fmt: skip
    err = digits.fails("train", "digits", "--detach", "--lr", "-1")
    assert err.startswith("Error from server (Invalid): learning_rate: ")


def test_infer_from_npy_json_and_stdin(digits: Dcnctl, tmp_path: Path) -> None:
    x = np.load(DIGITS / "data.npz")["x_test"][:5].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = digits("infer", "digits", "--input", str(tmp_path / "x.npy"), "--source", "x").stdout
    assert out.startswith("loss: shape (5, 10) float32\n  predictions: [")
    predictions = json.loads(out.splitlines()[1].split(":", 1)[1])
    assert len(predictions) == 5
    assert all(0 <= p < 10 for p in predictions)
    (tmp_path / "x.json").write_text(json.dumps({"x": x[:3].tolist()}))
    from_json = digits("infer", "digits", "-i", str(tmp_path / "x.json")).stdout
    assert from_json.startswith("loss: shape (3, 10) float32\n")
    assert json.loads(from_json.splitlines()[1].split(":", 1)[1]) == predictions[:3]
    from_stdin = digits("infer", "digits", "-i", "-", input=json.dumps({"x": x[:2].tolist()}))
    assert from_stdin.stdout.startswith("loss: shape (2, 10) float32\n")
    target = tmp_path / "out.npy"
    wrote = digits("infer", "digits", "-i", str(tmp_path / "x.npy"), "--source", "x", "-o",
                   str(target)).stdout  # fmt: skip
    assert wrote == f"wrote the output of sink VNode loss (5, 10) float32 to {target}\n"
    written = np.load(target)
    assert written.shape == (5, 10)
    assert np.allclose(written.sum(axis=1), 1.0, atol=1e-4)
    assert np.argmax(written, axis=1).tolist() == predictions
    err = digits.fails("infer", "digits", "-i", str(tmp_path / "x.npy"))
    assert err.startswith("error: network 'digits' has sources x, y: name the one")


def test_infer_answers_with_the_agents_words_when_a_vnode_cannot_compute(
    digits: Dcnctl, tmp_path: Path
) -> None:
    """A 50-wide input fits every shape the kinds declare (fc1 has no in_features), so only
    fc1's agent can find that its weights are 64 wide: its words reach the caller at once,
    not "got no answer within 10 s"."""
    x = np.load(DIGITS / "data.npz")["x_test"][:2].astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    digits("infer", "digits", "-i", str(tmp_path / "x.npy"), "--source", "x")  # fc1 has weights
    np.save(tmp_path / "narrow.npy", x[:, :50])
    err = digits.fails("infer", "digits", "-i", str(tmp_path / "narrow.npy"), "--source", "x")
    assert re.fullmatch(
        r"Error from server \(Invalid\): inference on 'digits': vnode 'fc1' replica 0 on pnode "
        r"'agent-\d': kind 'dense' of 'fc1': inputs\[0\]: shape \[2, 50\] must end in 64 \(the "
        r"input width this dense layer was initialized with\)\n",
        err,
    ), err


def test_infer_warns_on_an_untrained_network_and_refuses_bad_input_with_the_reason(
    digits: Dcnctl, tmp_path: Path
) -> None:
    text = (DIGITS / "network.yaml").read_text().replace("name: digits\n", "name: fresh\n", 1)
    digits("apply", "-f", "-", input=text)
    try:
        digits.until("fresh Ready", lambda b: b["status"].get("phase") == "Ready",
                     "get", "network", "fresh")  # fmt: skip
        x = np.load(DIGITS / "data.npz")["x_test"][:2].astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        answered = digits("infer", "fresh", "-i", str(tmp_path / "x.npy"), "--source", "x")
        assert answered.stdout.startswith("loss: shape (2, 10) float32\n")
        assert answered.stderr == (
            "warning: network 'fresh' has not been trained (no training job of it succeeded); "
            "answers come from initial weights\n"
        )
        np.save(tmp_path / "flat.npy", x[0])  # one image without its batch axis
        err = digits.fails("infer", "fresh", "-i", str(tmp_path / "flat.npy"), "--source", "x")
        assert err == (
            "Error from server (Invalid): tensors: x [64]: does not fit network 'fresh': vnode "
            "'loss' (softmax_cross_entropy) would refuse it: inputs[0]: logits must have shape "
            "[batch, classes], got [10]\n"
        )
        err = digits.fails("infer", "fresh", "-i", "-", input="{}")  # no tensor at all
        assert err == (
            "Error from server (Invalid): input: give tensors (by source VNode) or a data "
            "reference, got None\n"
        )
    finally:
        digits("delete", "network", "fresh", "--wait")


def test_cordon_uncordon_drain(digits: Dcnctl) -> None:
    assert digits("cordon", "agent-0").stdout == "pnode.dcnr.io/agent-0 cordoned\n"
    assert digits("get", "pn", "agent-0", "--no-headers").stdout.split()[1] == (
        "Ready,SchedulingDisabled"
    )
    assert digits("uncordon", "pnode", "agent-0").stdout == "pnode.dcnr.io/agent-0 uncordoned\n"
    drained = digits("drain", "pnode/agent-1", "--reason", "test").stdout.splitlines()
    assert drained[0] == "pnode.dcnr.io/agent-1 cordoned"
    assert drained[-1] == "pnode.dcnr.io/agent-1 drained"
    status = digits("get", "pn", "agent-1", "--no-headers").stdout.split()[1]
    assert status == "Ready,SchedulingDisabled,Draining"
    digits.until("agent-1 empty",
                 lambda b: all(a["spec"]["pnode"] != "agent-1" for a in b["items"]),
                 "get", "vnodes")  # fmt: skip
    digits("uncordon", "agent-1")
    assert digits("get", "pn", "agent-1", "--no-headers").stdout.split()[1] == "Ready"
    err = digits.fails("cordon", "pnode", "nope")
    assert err == 'Error from server (NotFound): pnodes.dcnr.io "nope" not found\n'
    assert digits.fails("cordon", "network", "x").startswith("error: this command does not take")
