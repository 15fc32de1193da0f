"""A real moto server process over HTTP, for the DynamoDB backend's tests.

An in-process patch would skip what production actually does: serialize requests, cross a
socket, parse error responses (CancellationReasons, the old Item on a failed condition) and
time out. So the tests talk to moto's server, started from this venv on a free loopback port
(through `serial_moto`, which applies requests one at a time as DynamoDB does atomically).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tests.support import wait

START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
#: Another process may take the free port between our probe and moto's bind; try again.
START_ATTEMPTS = 3


def binary() -> Path:
    """Our launcher of moto's server app; see serial_moto for why not `moto_server` itself."""
    return Path(__file__).with_name("serial_moto.py")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/moto-api/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer means the server is up
    except OSError:
        return False


def _tail(log: Path, lines: int = 30) -> str:
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(log {log} unreadable: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _start(log: Path) -> tuple[subprocess.Popen[bytes], str] | None:
    """One attempt: the process and its URL once it answers, None if it exited early."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with log.open("ab") as out:
        proc = subprocess.Popen(
            # -P: the script directory (which holds our own moto.py) must not shadow moto.
            [sys.executable, "-P", str(binary()), "-H", "127.0.0.1", "-p", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: we can signal it and its children
        )

    def state() -> str:
        if proc.poll() is not None:
            return "exited"
        return "answers" if _answers(url) else "starting"

    try:
        seen = wait.until_sync(
            state,
            within=START_TIMEOUT,
            what=f"moto_server answering on {url}",
            accept=lambda s: s != "starting",
            every=0.05,
        )
    except AssertionError:
        _stop(proc)
        raise RuntimeError(
            f"moto_server did not answer on {url} within {START_TIMEOUT}s; log tail:\n{_tail(log)}"
        ) from None
    return None if seen == "exited" else (proc, url)


class MotoServer:
    """`with MotoServer() as endpoint:` a moto_server process, stopped on exit."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self._dir: tempfile.TemporaryDirectory[str] | None = None
        self.endpoint = ""

    @property
    def pid(self) -> int:
        """The server's process id, for a caller that stalls it (SIGSTOP/SIGCONT)."""
        assert self._proc is not None, "MotoServer is not running"
        return self._proc.pid

    @property
    def log(self) -> Path:
        assert self._dir is not None, "MotoServer is not running"
        return Path(self._dir.name) / "moto_server.log"

    def __enter__(self) -> str:
        self._dir = tempfile.TemporaryDirectory(prefix="dcnr-moto-")
        try:
            for _ in range(START_ATTEMPTS):
                started = _start(self.log)
                if started is not None:
                    self._proc, self.endpoint = started
                    return self.endpoint
            raise RuntimeError(
                f"moto_server exited at startup {START_ATTEMPTS} times; log tail:\n"
                f"{_tail(self.log)}"
            )
        except BaseException:
            self._dir.cleanup()
            self._dir = None
            raise

    def pause(self) -> None:
        """SIGSTOP the server (its whole process group): the store stalls, connections stay
        open and calls hang until `resume`, as a stalled store does."""
        assert self._proc is not None, "MotoServer is not running"
        os.killpg(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None, "MotoServer is not running"
        os.killpg(self._proc.pid, signal.SIGCONT)

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._proc is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self._proc.pid, signal.SIGCONT)  # a paused server cannot stop
                _stop(self._proc)
        finally:
            self._proc = None
            if self._dir is not None:
                self._dir.cleanup()
                self._dir = None
