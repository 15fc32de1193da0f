"""The README's tour, run as written: every ```sh block after a `<!-- tour -->` marker is
extracted and its commands run in order, in one bash (exports and the background cluster
carry over, as in a user's terminal), in a fresh $HOME and an empty directory holding only
the clone's `.venv` — the tour's own commands put it on PATH, write the example there and
start the cluster. Each command must exit 0 and print the line its `# → …` comment shows.

Nothing is substituted: the one knob, DCNR_PORT, is the README's own (so this test does
not take port 7070 from whoever uses it on this machine).
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
VENV = Path(sys.executable).parent.parent
MARKER = "<!-- tour -->"
EXPECT = "→ "


class Command:
    def __init__(self, line: str) -> None:
        parts = re.split(r"\s+#\s", line, maxsplit=1)
        self.line = parts[0].strip()
        comment = parts[1].strip() if len(parts) > 1 else ""
        self.expect = comment[len(EXPECT):].strip() if comment.startswith(EXPECT) else None


def tour_commands(readme: str) -> list[Command]:
    """The commands of the marked blocks, in order; comment-only lines are not commands."""
    commands = []
    blocks = re.findall(rf"{re.escape(MARKER)}\s*\n```sh\n(.*?)\n```", readme, re.S)
    for block in blocks:
        for line in block.splitlines():
            if line.strip() and not line.lstrip().startswith("#"):
                commands.append(Command(line))
    return commands


def _words(text: str) -> str:
    return " ".join(text.split())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(commands: list[Command]) -> str:
    """Each command between markers that carry its exit status; the first failure ends it."""
    parts = []
    for index, command in enumerate(commands):
        parts.append(
            f"printf '\\n@@tour {index} begin\\n'\n"
            f"{{ {command.line}\n}} 2>&1\n"
            "rc=$?\n"
            f"printf '\\n@@tour {index} end %d\\n' $rc\n"
            '[ "$rc" -eq 0 ] || exit "$rc"\n'
        )
    return "".join(parts)


def test_the_tour_parses() -> None:
    commands = tour_commands((REPO / "README.md").read_text())
    lines = [c.line for c in commands]
    assert lines[0] == 'export PATH="$PWD/.venv/bin:$PATH"'
    assert any(line.startswith("dcnr-orchestrator up ") for line in lines)
    assert lines[-1].startswith("kill %1")
    shown = {c.line: c.expect for c in commands}
    assert shown["dcnctl apply -f examples/digits/network.yaml"] == (
        "network.dcnr.io/digits created"
    )
    assert shown["dcnctl get vnodes --network digits"] is None  # a description, not output


#: Above the tour's own 300 s deadline, so that one fails with the tour's output: it took 92 s
#: on a busy 2-core machine, and the default 120 s would cut it short beside another worker.
@pytest.mark.timeout(360)
def test_the_readme_tour_runs_as_written(tmp_path: Path) -> None:
    commands = tour_commands((REPO / "README.md").read_text())
    assert len(commands) > 10, "the README has no marked tour"
    home, work = tmp_path / "home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    (work / ".venv").symlink_to(VENV)  # what `make venv` left in the clone
    env = {
        "HOME": str(home),
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "DCNR_PORT": str(_free_port()),
    }
    proc = subprocess.Popen(
        ["bash", "--norc", "--noprofile", "-c", _script(commands)],
        cwd=work, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    try:
        output, _ = proc.communicate(timeout=300)
    finally:
        # Whatever the tour left running (it stops its cluster itself when all goes well).
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
                if sig is signal.SIGTERM:
                    proc.wait(timeout=60)
    log = (work / "up.log").read_text() if (work / "up.log").exists() else "<no up.log>"
    # [before, index, "begin", its output, index, "end RC", between, ...]
    sections = re.split(r"\n?@@tour (\d+) (begin|end \d+)\n", output)
    printed_by: dict[int, str] = {}
    results: dict[int, tuple[str, int]] = {}
    for at in range(1, len(sections) - 2, 3):
        index, what, after = int(sections[at]), sections[at + 1], sections[at + 2]
        if what == "begin":
            printed_by[index] = after
        else:
            results[index] = (printed_by.get(index, ""), int(what.split()[1]))
    for index, command in enumerate(commands):
        assert index in results, f"`{command.line}` did not finish:\n{output}\nup.log:\n{log}"
        printed, rc = results[index]
        assert rc == 0, f"`{command.line}` exited {rc}:\n{printed}\nup.log:\n{log}"
        assert "Traceback" not in printed, printed
        if command.expect is not None:
            assert any(
                _words(command.expect) in _words(line) for line in printed.splitlines()
            ), f"`{command.line}` did not print {command.expect!r}:\n{printed}"
    assert proc.returncode == 0, output
    assert "agent-0: pid " in log, log
