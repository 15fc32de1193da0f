"""Real processes for integration tests: start our console scripts, read what they say
with a deadline, and always stop them (SIGTERM, then SIGKILL)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple

BIN = Path(sys.executable).parent


def script(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: run `make venv` to install the console scripts"
        )
    return str(path)


_readers: dict[int, queue.Queue[str | None]] = {}
_readers_lock = threading.Lock()


def _lines(proc: subprocess.Popen[str]) -> queue.Queue[str | None]:
    """A thread per process reads its stdout into a queue (None at EOF): select() on the
    pipe would miss lines Python already buffered from one multi-line write."""
    with _readers_lock:
        lines = _readers.get(proc.pid)
        if lines is None:
            lines = _readers[proc.pid] = queue.Queue()
            stream = proc.stdout
            assert stream is not None

            def pump() -> None:
                with contextlib.suppress(ValueError, OSError):
                    for line in stream:
                        lines.put(line)
                lines.put(None)

            threading.Thread(target=pump, name=f"stdout-{proc.pid}", daemon=True).start()
        return lines


def read_line(proc: subprocess.Popen[str], *, timeout: float = 30.0) -> str:
    """The next line of proc's stdout, or an AssertionError naming what happened instead."""
    try:
        line = _lines(proc).get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"no line from {proc.args!r} within {timeout}s") from None
    if line is None:
        proc.wait(timeout=timeout)
        err = proc.stderr.read() if proc.stderr else ""
        raise AssertionError(f"process exited with {proc.returncode}: {err}")
    return line


def stop(proc: subprocess.Popen[str], *, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()
    with _readers_lock:
        _readers.pop(proc.pid, None)  # pids are reused
    return proc.returncode


_SERVING = re.compile(r"serving dcnr\.v1 on (?P<host>[^ ]+):(?P<port>\d+)")
#: "metrics on port N", in the first line of `serve` and of `dcnr-agent --metrics-listen`.
METRICS_PORT = _METRICS = re.compile(r"metrics on port (?P<port>\d+)")


def dashboard_url(served: Served) -> str:
    """The URL `serve --ui-listen` printed its dashboard at ("dashboard on URL", first line)."""
    record = next(
        (
            json.loads(line)
            for line in served.log.read_text(errors="replace").splitlines()
            if '"serving dcnr.v1"' in line
        ),
        None,
    )
    assert record is not None, f"no 'serving dcnr.v1' record in {served.log}"
    url = record.get("ui_url")
    assert url, f"the orchestrator serves no dashboard (--ui-listen missing?): {record}"
    return str(url)


class Served(NamedTuple):
    proc: subprocess.Popen[str]
    address: str
    metrics_port: int | None
    #: The orchestrator's stderr (its logs): a file, because a pipe nobody drains fills
    #: up and blocks the process once it has logged 64 KiB.
    log: Path


@contextlib.contextmanager
def orchestrator(
    store_url: str,
    *,
    extra: Sequence[str] = (),
    listen: str = "127.0.0.1:0",
    log: Path | None = None,
    log_level: str = "info",
    cwd: Path | None = None,
) -> Iterator[Served]:
    """A `dcnr-orchestrator serve` process, on a free loopback port unless told `listen`,
    logging to `log` (default: a new temporary file), started in `cwd` (default: this
    process's working directory). Plaintext (`--insecure`) unless `extra` gives TLS flags."""
    if log is None:
        log = Path(tempfile.mkdtemp(prefix="dcnr-orchestrator-")) / "stderr.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as err:
        proc = subprocess.Popen(
            [
                script("dcnr-orchestrator"),
                "--log-level",
                log_level,
                "serve",
                "--store",
                store_url,
                "--listen",
                listen,
                *(() if any(a.startswith("--tls-") for a in extra) else ("--insecure",)),
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
            cwd=cwd,
        )
    try:
        try:
            line = read_line(proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{log.read_text(errors='replace')[-3000:]}") from None
        match = _SERVING.search(line)
        assert match, f"unexpected first line from the orchestrator: {line!r}"
        metrics = _METRICS.search(line)
        yield Served(
            proc,
            f"{match['host']}:{match['port']}",
            int(metrics["port"]) if metrics else None,
            log,
        )
    finally:
        stop(proc)
