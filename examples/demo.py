"""The five-minute tour, run by `make demo`: the whole system, with a failure in the middle.

1. `dcnr-orchestrator up`: an orchestrator and three agents on this machine;
2. `dcnctl apply -f examples/digits/network.yaml` and the placement it gets;
3. `dcnctl train digits` with its live progress bar — and, a third of the way in, one
   agent of this cluster (by the pid its own `up` announced, never by a name another
   cluster on this machine may share) is SIGKILLed: the job pauses, the VNodes it hosted
   are placed again with new epochs, every VNode rolls back to the last checkpoint, and
   training carries on (`up` starts the dead agent again, as a new incarnation);
4. the placement after, the held-out accuracy, and predictions for a few test images;
5. everything is shut down. Exit code 0 only if all of that worked (and the agent it
   killed did die).

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
import threading
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


class Cluster:
    """A `dcnr-orchestrator up` this script started, known by what it said on stdout.

    `up` announces each agent's pid (`  agent-0: pid 1234 ...`) and each agent that exits
    on its own (`dcnr-orchestrator: agent-0 (pid 1234) was killed by SIGKILL; ...`). Those
    lines, from this script's own child, are the only way it finds an agent: another
    cluster on the same machine may run an `agent-2` too, and it is not ours to touch.
    """

    _AGENT = re.compile(r"^  (?P<name>agent-\d+): pid (?P<pid>\d+)")
    _EXIT = re.compile(r"^dcnr-orchestrator: (?P<name>agent-\d+) \(pid (?P<pid>\d+)\) ")

    def __init__(self, state: Path, *, agents: int, extra: tuple[str, ...] = ()) -> None:
        self.state = state
        state.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(
            [str(BIN / "dcnr-orchestrator"), "up", "--agents", str(agents),
             "--listen", "127.0.0.1:0", "--state-dir", str(state), *extra],
            stdout=subprocess.PIPE, stderr=(state / "orchestrator.log").open("wb"), text=True,
        )  # fmt: skip
        self.banner: list[str] = []
        self.pids: dict[str, int] = {}
        self.exited: set[int] = set()
        self._changed = threading.Condition()
        self._eof = False
        threading.Thread(target=self._read, name="up-stdout", daemon=True).start()
        self._wait(
            "the cluster's banner", lambda: "Ctrl-C stops everything" in "".join(self.banner), 60
        )
        match = re.search(r"orchestrator on (\S+) ", self.banner[0])
        if not match:
            raise SystemExit(f"demo: the cluster did not start: {self.banner!r}")
        self.address = match[1]
        # `up` is TLS by default: its CA and a dcnctl config naming it are in the banner.
        tls = re.search(r"\(TLS, CA (\S+);", self.banner[0])
        self.ca = Path(tls[1]) if tls else None
        config = re.search(r"export DCNR_CONFIG=(\S+)", "".join(self.banner))
        if not config:
            raise SystemExit(f"demo: the cluster's banner names no dcnctl config: {self.banner!r}")
        self.config = Path(config[1])
        self.metrics = re.search(r"metrics on (\S+/metrics)", self.banner[0])

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                if not self.banner or "Ctrl-C stops everything" not in self.banner[-1]:
                    self.banner.append(line)
                elif self._EXIT.match(line) or self._AGENT.match(line):
                    print(line.rstrip(), flush=True)
                if found := self._AGENT.match(line):
                    self.pids[found["name"]] = int(found["pid"])
                if found := self._EXIT.match(line):
                    self.exited.add(int(found["pid"]))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    def _wait(self, what: str, check, within: float) -> None:  # type: ignore[no-untyped-def]
        with self._changed:
            if not self._changed.wait_for(lambda: check() or self._eof, timeout=within):
                raise SystemExit(f"demo: {what} did not happen within {within:.0f}s")
            if not check():
                raise SystemExit(f"demo: the cluster exited ({self.proc.wait()}) before {what}")

    def kill_agent(self, name: str, *, within: float = 30.0) -> int:
        """SIGKILL this cluster's agent `name`; its pid, once `up` has seen it die.

        Raises SystemExit (the demo fails) if this `up` never announced such an agent, or
        did not report it dead within `within` seconds."""
        with self._changed:
            pid = self.pids.get(name)
            if pid is None or pid in self.exited:
                raise SystemExit(f"demo: this cluster has no running agent {name!r} "
                                 f"(its agents: {self.pids})")  # fmt: skip
            os.kill(pid, signal.SIGKILL)
        self._wait(f"{name} (pid {pid}) dying", lambda: pid in self.exited, within)
        return pid

    def stop(self) -> int:
        """SIGINT, as Ctrl-C would: the agents deregister, then the orchestrator stops."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="dcnr-demo-"))
    say("Starting a local cluster: an orchestrator and three agents")
    cluster = Cluster(state, agents=3, extra=("--workdir", str(REPO)))
    try:
        print("".join(cluster.banner).rstrip(), flush=True)
        os.environ["DCNR_CONFIG"] = str(cluster.config)  # server and CA, context "up"
        os.environ.pop("DCNR_SERVER", None)
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
        cluster.kill_agent(victim)
        if trainer.wait(timeout=180) != 0:
            raise SystemExit("demo: training did not succeed")

        say(f"Placement after {victim} died: its VNodes were placed again, with new epochs")
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
        cluster.stop()
    print("demo complete.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
