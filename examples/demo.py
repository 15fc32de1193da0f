"""The five-minute tour, run by `make demo`: the whole system, with a failure in the middle.

1. `dcnr-orchestrator up`: an orchestrator and three agents on this machine;
2. `dcnctl apply -f examples/digits/network.yaml` and the placement it gets;
3. `dcnctl train digits` with its live progress bar — and, a third of the way in, one
   agent is SIGKILLed: the job pauses, the VNodes it hosted are re-placed, every VNode
   rolls back to the last checkpoint, and training carries on;
4. the placement after, the held-out accuracy, and predictions for a few test images;
5. everything is shut down. Exit code 0 only if all of that worked.

It drives the system only through its commands, exactly as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
DATA = REPO / "examples" / "digits" / "data.npz"
JOB = "digits-demo"
TRAIN = ["--epochs", "15", "--batch-size", "64", "--optimizer", "adam", "--lr", "0.01"]


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m" if sys.stdout.isatty() else f"\n==> {text}", flush=True)


def dcnctl(*args: str, capture: bool = False) -> str:
    command = [str(BIN / "dcnctl"), *args]
    if not capture:
        print("$ dcnctl " + " ".join(args), flush=True)
    result = subprocess.run(command, capture_output=capture, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"demo: `dcnctl {' '.join(args)}` failed: {result.stderr or ''}")
    return result.stdout if capture else ""


def get_json(*args: str) -> dict:  # type: ignore[type-arg]
    return json.loads(dcnctl("get", *args, "-o", "json", capture=True))


def job_step(name: str) -> int:
    """The job's step, 0 while it does not exist yet."""
    result = subprocess.run(
        [str(BIN / "dcnctl"), "get", "job", name, "-o", "json"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return int(json.loads(result.stdout)["status"].get("step", 0)) if result.returncode == 0 else 0


def wait_for(what: str, check, within: float) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"demo: {what} did not happen within {within:.0f}s")
        time.sleep(0.3)


def agent_pid(name: str) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if any(part.endswith(b"dcnr-agent") for part in cmdline[:2]) and name.encode() in cmdline:
            return int(entry.name)
    raise SystemExit(f"demo: no process for {name}")


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="dcnr-demo-"))
    say("Starting a local cluster: an orchestrator and three agents")
    up = subprocess.Popen(
        [str(BIN / "dcnr-orchestrator"), "up", "--agents", "3", "--listen", "127.0.0.1:0",
         "--state-dir", str(state), "--workdir", str(REPO)],
        stdout=subprocess.PIPE, stderr=(state / "orchestrator.log").open("wb"), text=True,
    )  # fmt: skip
    try:
        assert up.stdout is not None
        banner = up.stdout.readline()
        match = re.search(r"orchestrator on (\S+) ", banner)
        if not match:
            raise SystemExit(f"demo: the cluster did not start: {banner!r}")
        print(banner.rstrip(), flush=True)
        os.environ["DCNR_SERVER"] = match[1]
        wait_for(
            "three Ready agents",
            lambda: sum(
                i["status"]["phase"] == "Ready" for i in get_json("pnodes")["items"]
            ) == 3,
            60,
        )  # fmt: skip
        dcnctl("get", "pnodes")

        say("Applying the digits network: six VNodes, placed by capability and load")
        dcnctl("apply", "-f", str(REPO / "examples" / "digits" / "network.yaml"))
        wait_for(
            "placement", lambda: get_json("network", "digits")["status"]["phase"] == "Ready", 60
        )
        dcnctl("get", "vnodes", "--network", "digits")

        say("Training, with one agent killed a third of the way through")
        trainer = subprocess.Popen([str(BIN / "dcnctl"), "train", "digits", "--name", JOB, *TRAIN])
        wait_for(
            "training a third of the way",
            lambda: job_step(JOB) >= 115 or trainer.poll() is not None,
            120,
        )
        hosts = Counter(
            a["spec"]["pnode"] for a in get_json("vnodes", "--network", "digits")["items"]
        )
        victim, count = hosts.most_common(1)[0]
        print(f"\n*** SIGKILL {victim} (hosting {count} of 6 VNodes) ***", flush=True)
        os.kill(agent_pid(victim), signal.SIGKILL)
        if trainer.wait(timeout=180) != 0:
            raise SystemExit("demo: training did not succeed")

        say(f"Placement after {victim} died: its VNodes moved, with new epochs")
        dcnctl("get", "vnodes", "--network", "digits")
        dcnctl("get", "job", JOB)

        say("Held-out accuracy, through the orchestrator")
        data = np.load(DATA)
        np.save(state / "x_test.npy", data["x_test"])
        dcnctl("infer", "digits", "--input", str(state / "x_test.npy"), "--source", "x",
               "-o", str(state / "p.npy"))  # fmt: skip
        probabilities = np.load(state / "p.npy")
        predictions = probabilities.argmax(axis=1)
        accuracy = float(np.mean(predictions == data["y_test"]))
        print(f"held-out accuracy: {accuracy:.1%} on {len(predictions)} images")
        print(f"first 12 predictions: {predictions[:12].tolist()}")
        print(f"first 12 labels:      {data['y_test'][:12].tolist()}")
        if accuracy < 0.9:
            raise SystemExit(f"demo: accuracy {accuracy:.1%} is too low")
    finally:
        say("Shutting down")
        if up.poll() is None:
            up.send_signal(signal.SIGINT)
            try:
                up.wait(timeout=60)
            except subprocess.TimeoutExpired:
                up.kill()
    print("demo complete.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
