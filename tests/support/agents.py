"""Real `dcnr-agent` processes for end-to-end tests, always stopped afterwards.

stderr goes to a file, never an unread pipe: an agent logging while nobody reads would
block on a full pipe and look like a hung VNode."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import procs

REPO = Path(__file__).resolve().parents[2]
#: How long a stopped agent waits for its VNodes to move away. The last agent of a cluster
#: that still holds a network's VNodes has nowhere to move them, so with the default (30 s)
#: every such teardown waited out `procs.stop`'s 20 s and ended in SIGKILL. Tests that are
#: about draining pass their own `--drain-deadline` (argparse keeps the last one).
DRAIN_DEADLINE = "2"
_SERVING = re.compile(r"dcnr-agent: (?P<name>\S+) serving the data plane on (?P<address>\S+) ")


class Agent:
    def __init__(
        self,
        orchestrator: str,
        name: str,
        state_dir: Path,
        *,
        cpu: str = "1",
        memory: str = "1Gi",
        extra: Sequence[str] = (),
        command: Sequence[str] = (),
    ) -> None:
        """`command`: what runs instead of `dcnr-agent` (e.g. the test-only liar), given the
        same flags. Plaintext to the orchestrator (`--insecure`) unless `extra` gives
        TLS flags; `--drain-deadline` is DRAIN_DEADLINE unless `extra` says otherwise."""
        state_dir.mkdir(parents=True, exist_ok=True)
        self.log = state_dir / "agent.log"
        with self.log.open("ab") as err:
            self.proc = subprocess.Popen(
                [
                    *(command or [procs.script("dcnr-agent")]), "--orchestrator", orchestrator,
                    "--listen", "127.0.0.1:0", "--name", name, "--state-dir", str(state_dir),
                    "--workdir", str(REPO), "--cpu", cpu, "--memory", memory,
                    "--log-level", "warning", "--drain-deadline", DRAIN_DEADLINE,
                    *(() if any(a.startswith("--tls-") for a in extra) else ("--insecure",)),
                    *extra,
                ],
                stdout=subprocess.PIPE, stderr=err, text=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )  # fmt: skip
        try:
            line = procs.read_line(self.proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.log_tail()}") from None
        match = _SERVING.search(line)
        assert match, f"unexpected first line from dcnr-agent: {line!r}"
        self.name = match["name"]
        self.address = match["address"]
        metrics = procs.METRICS_PORT.search(line)
        #: With `--metrics-listen`: the port its /metrics is served on.
        self.metrics_port = int(metrics["port"]) if metrics else None

    def log_tail(self, lines: int = 20) -> str:
        text = self.log.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> int:
        return procs.stop(self.proc)


@contextlib.contextmanager
def agents(
    orchestrator: str,
    root: Path,
    count: int,
    *,
    prefix: str = "agent",
    cpu: str = "1",
    memory: str = "1Gi",
    extra: Sequence[str] = (),
    command: Sequence[str] = (),
) -> Iterator[list[Agent]]:
    started: list[Agent] = []
    try:
        for i in range(count):
            name = f"{prefix}-{i}"
            started.append(
                Agent(
                    orchestrator,
                    name,
                    root / name,
                    cpu=cpu,
                    memory=memory,
                    extra=extra,
                    command=command,
                )
            )
        yield started
    finally:
        # All told to leave at once, then waited for: one drain deadline in all, not one
        # each (each stop() re-sends SIGTERM, which a leaving agent ignores).
        for agent in started:
            if agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGTERM)
        for agent in started:
            agent.stop()
