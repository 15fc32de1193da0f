"""A `dcnr-orchestrator serve` process for benchmarks: like `tests.support.procs`'s, but with
its log level set and stderr going to a file, because a benchmark runs for minutes and an
orchestrator logging into a pipe nobody reads would block once the pipe is full."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

from tests.support import procs


@contextlib.contextmanager
def orchestrator(
    store_url: str, log: Path, *, extra: Sequence[str] = (), level: str = "warning"
) -> Iterator[str]:
    """Yields the gRPC address of a serving orchestrator; stops it on exit."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [procs.script("dcnr-orchestrator"), "--log-level", level, "serve",
             "--store", store_url, "--listen", "127.0.0.1:0", *extra],
            stdout=subprocess.PIPE, stderr=err, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    try:
        try:
            line = procs.read_line(proc)
        except AssertionError as exc:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
            raise AssertionError(f"{exc}\n{tail}") from None
        match = procs._SERVING.search(line)
        assert match, f"unexpected first line from the orchestrator: {line!r}"
        yield f"{match['host']}:{match['port']}"
    finally:
        procs.stop(proc)
