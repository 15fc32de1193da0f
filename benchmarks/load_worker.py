"""`benchmarks.load` in its own process: several of these drive one server, so the rate
measured is the server's, not what one client process can send (issue 13 asks that the echo
baseline be shown not to be client-bound), and the load's own pauses (its collector, its
scheduling) are not in the measured process.

`python -m benchmarks.load_worker` reads one JSON command per line on stdin and answers each
with one JSON line on stdout:

- `{"op": "client", "id": ID, "address": A, "method": M, "calls": [[BODY_B64, [[K, V], ...]],
  ...]}`: a `load.Client` of A's method M with those calls; answers `{"ok": true}`.
- `{"op": "closed", "id": ID, "concurrency": C, "seconds": S}` and
  `{"op": "open", "id": ID, "rate": R, "seconds": S}`: one measurement; answers the
  `load.Outcome` as a dict.
- `{"op": "background", "id": ID, "rate": R}`: open-loop calls at R/s until `{"op":
  "stop", "id": ID}`, which answers how many were sent, failed, and the first error.

End of input closes the clients and exits. `Driver` is the parent's side.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import gc
import itertools
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from benchmarks import harness, load


def encode_calls(calls: Sequence[load.Call]) -> list[list[Any]]:
    return [[base64.b64encode(c.body).decode(), [list(m) for m in c.metadata]] for c in calls]


def _decode_calls(raw: list[list[Any]]) -> list[load.Call]:
    return [
        load.Call(base64.b64decode(body), tuple((str(k), str(v)) for k, v in metadata))
        for body, metadata in raw
    ]


def _outcome(outcome: load.Outcome) -> dict[str, Any]:
    fields = dataclasses.asdict(outcome)
    fields["sample"] = base64.b64encode(outcome.sample).decode()
    return fields


class _Background:
    def __init__(self, client: load.Client, calls: list[load.Call], rate: float) -> None:
        self.sent = 0
        self.failed = 0
        self.first_error = ""
        self._task = asyncio.create_task(self._run(client, calls, rate))

    async def _run(self, client: load.Client, calls: list[load.Call], rate: float) -> None:
        # Consecutive 5 s open loops, each going on through the calls where the last
        # stopped, so every PNode's heartbeat comes round at the same cadence.
        source = itertools.cycle(calls)
        while True:
            batch = [next(source) for _ in range(max(1, int(rate * 5)))]
            outcome = await client.open_loop(batch, rate=rate, seconds=5)
            self.sent += outcome.completed + outcome.failed
            self.failed += outcome.failed
            self.first_error = self.first_error or outcome.first_error

    async def stop(self) -> dict[str, Any]:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        return {"sent": self.sent, "failed": self.failed, "first_error": self.first_error}


async def _serve() -> None:
    loop = asyncio.get_running_loop()
    clients: dict[str, tuple[load.Client, list[load.Call]]] = {}
    background: dict[str, _Background] = {}
    try:
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            command = json.loads(line)
            op, ident = command["op"], command["id"]
            answer: dict[str, Any]
            if op == "client":
                calls = _decode_calls(command["calls"])
                clients[ident] = (load.Client(command["address"], command["method"]), calls)
                # What is set up lives as long as the process: out of the collector's walks.
                gc.collect()
                gc.freeze()
                answer = {"ok": True}
            elif op == "closed":
                client, calls = clients[ident]
                answer = _outcome(
                    await client.closed_loop(
                        calls, concurrency=command["concurrency"], seconds=command["seconds"]
                    )
                )
            elif op == "open":
                client, calls = clients[ident]
                answer = _outcome(
                    await client.open_loop(calls, rate=command["rate"], seconds=command["seconds"])
                )
            elif op == "background":
                client, calls = clients[ident]
                background[ident] = _Background(client, calls, command["rate"])
                answer = {"ok": True}
            elif op == "stop":
                answer = await background.pop(ident).stop()
            else:
                raise ValueError(f"load_worker: op {op!r} is unknown")
            sys.stdout.write(json.dumps(answer) + "\n")
            sys.stdout.flush()
    finally:
        for running in background.values():
            await running.stop()
        for client, _ in clients.values():
            await client.close()


class Driver:
    """`processes` load workers: the same command to each, their outcomes merged."""

    def __init__(self, processes: int) -> None:
        command = [sys.executable, "-m", "benchmarks.load_worker"]
        self._procs = [
            subprocess.Popen(
                command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=harness.REPO
            )
            for _ in range(processes)
        ]

    @property
    def processes(self) -> int:
        return len(self._procs)

    async def _ask_all(self, commands: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        for proc, command in zip(self._procs, commands, strict=True):
            assert proc.stdin is not None
            proc.stdin.write(json.dumps(command) + "\n")
            proc.stdin.flush()
        return list(await asyncio.gather(*(asyncio.to_thread(self._read, p) for p in self._procs)))

    @staticmethod
    def _read(proc: subprocess.Popen[str]) -> dict[str, Any]:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            raise AssertionError(f"load worker {proc.pid} exited with {proc.wait()}")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def client(
        self, ident: str, address: str, method: str, calls: Sequence[load.Call]
    ) -> None:
        """Each worker gets every `calls`, shifted so they do not send the same ones."""
        step = max(1, len(calls) // self.processes)
        shifted = [list(calls[i * step :]) + list(calls[: i * step]) for i in range(self.processes)]
        await self._ask_all(
            [
                {"op": "client", "id": ident, "address": address, "method": method,
                 "calls": encode_calls(mine)}
                for mine in shifted
            ]
        )  # fmt: skip

    async def closed_loop(self, ident: str, *, concurrency: int, seconds: float) -> Merged:
        share = max(1, concurrency // self.processes)
        answers = await self._ask_all(
            [{"op": "closed", "id": ident, "concurrency": share, "seconds": seconds}]
            * self.processes
        )
        return Merged.of(answers)

    async def open_loop(self, ident: str, *, rate: float, seconds: float) -> Merged:
        answers = await self._ask_all(
            [{"op": "open", "id": ident, "rate": rate / self.processes, "seconds": seconds}]
            * self.processes
        )
        return Merged.of(answers)

    async def background(self, ident: str, *, rate: float) -> None:
        await self._ask_all([{"op": "background", "id": ident, "rate": rate}] * self.processes)

    async def stop(self, ident: str) -> list[dict[str, Any]]:
        return await self._ask_all([{"op": "stop", "id": ident}] * self.processes)

    def close(self) -> None:
        for proc in self._procs:
            assert proc.stdin is not None
            with contextlib.suppress(OSError):
                proc.stdin.close()
        deadline = time.monotonic() + 10
        for proc in self._procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@dataclasses.dataclass
class Merged:
    """Several workers' `load.Outcome`s of one measurement, run side by side."""

    outcome: load.Outcome
    #: Each worker's CPU as a share of one core over the run.
    client_shares: list[float]

    @classmethod
    def of(cls, answers: Sequence[dict[str, Any]]) -> Merged:
        seconds = max(a["seconds"] for a in answers)
        windows = max(len(a["per_second"]) for a in answers)
        per_second = [
            sum(a["per_second"][i] for a in answers if i < len(a["per_second"]))
            for i in range(windows)
        ]
        completed = sum(a["completed"] for a in answers)
        errors = [a["first_error"] for a in answers if a["first_error"]]
        outcome = load.Outcome(
            completed=completed, failed=sum(a["failed"] for a in answers), seconds=seconds,
            per_second=per_second,
            latencies=[x for a in answers for x in a["latencies"]],
            sample=base64.b64decode(next((a["sample"] for a in answers if a["sample"]), "")),
            first_error=errors[0] if errors else "",
            client_cpu=sum(a["client_cpu"] for a in answers),
        )  # fmt: skip
        shares = [a["client_cpu"] / a["seconds"] if a["seconds"] else 0.0 for a in answers]
        return cls(outcome, shares)


def main() -> None:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve())


if __name__ == "__main__":
    main()
