"""What dcnctl does without a working server: usage, local validation, contexts, errors."""

from __future__ import annotations

import datetime
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from api.resources import job
from dcnctl import apply, errors, follow, tables
from tests.dcnctl.conftest import REPO, Dcnctl

DIGITS = str(REPO / "examples" / "digits" / "network.yaml")
BAD_INPUT = """\
apiVersion: dcnr.io/v1
kind: Network
metadata: {name: broken}
spec:
  vnodes:
    - {name: x, kind: input}
    - {name: fc, kind: add, inputs: [x, fc9]}
"""


def test_every_command_has_help(offline: Dcnctl) -> None:
    commands = ["apply", "get", "describe", "explain", "delete", "cordon", "uncordon", "drain",
                "train", "infer", "version", "completion", "config"]  # fmt: skip
    top = offline("--help").stdout
    for command in commands:
        assert command in top
        assert offline(command, "--help").stdout.startswith("usage: dcnctl " + command)


@pytest.mark.parametrize(
    "args",
    [["get"], ["apply"], ["get", "networks", "-o", "xml"], ["frobnicate"], ["train"],
     ["apply", "-f", DIGITS, "--dry-run=maybe"]],
)  # fmt: skip
def test_bad_usage_is_exit_2(offline: Dcnctl, args: list[str]) -> None:
    assert "usage: dcnctl" in offline.fails(*args, code=2)


def test_unknown_resource_type(offline: Dcnctl) -> None:
    err = offline.fails("get", "foos")
    assert err == 'error: the server doesn\'t have a resource type "foos"\n'


def test_client_dry_run_validates_without_a_server(offline: Dcnctl) -> None:
    out = offline("apply", "-f", DIGITS, "--dry-run=client").stdout
    assert out == "network.dcnr.io/digits validated (dry run)\n"


def test_bad_manifest_names_file_and_field(offline: Dcnctl, tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(BAD_INPUT)
    err = offline.fails("apply", "-f", str(path))
    assert err.startswith(f"error: {path}: spec.vnodes[1].inputs[1]: ")
    assert "fc9" in err
    assert len(err.splitlines()) == 1
    from_stdin = offline.fails("apply", "-f", "-", input=BAD_INPUT)
    assert from_stdin.startswith("error: <stdin>: spec.vnodes[1].inputs[1]: ")
    missing = offline.fails("apply", "-f", str(tmp_path / "nope.yaml"))
    assert missing.startswith(f"error: {tmp_path / 'nope.yaml'}: cannot read")


@pytest.mark.parametrize(
    ("before", "after", "line"),
    [
        ("kind: dense", "kind: dens",
         'spec.vnodes[2].kind: unknown kind "dens" (did you mean "dense"?; known: add, concat, '),
        ("{units: 32}", "{unitz: 32}",
         'spec.vnodes[2].params.unitz: unknown parameter (did you mean "units"?; known: '),
        ("{units: 32}", "{units: 0}",
         "spec.vnodes[2].params.units: must be an integer >= 1 and <= 65536, got 0"),
        ("{units: 32}", "{units: 32.5}",
         "spec.vnodes[2].params.units: must be an integer >= 1 and <= 65536, got 32.5"),
        ("{units: 32}", "{units: 4611686018427387904}",
         "spec.vnodes[2].params.units: must be an integer >= 1 and <= 65536, "
         "got 4611686018427387904"),
    ],
)  # fmt: skip
def test_a_wrong_kind_or_param_is_one_line_naming_the_field(
    offline: Dcnctl, before: str, after: str, line: str
) -> None:
    text = Path(DIGITS).read_text()
    assert text.count(before) >= 1
    bad = text.replace(before, after, 1)
    err = offline.fails("apply", "-f", "-", input=bad)
    assert err.startswith(f"error: <stdin>: {line}")
    assert len(err.splitlines()) == (2 if "unitz" in after else 1)  # and units is missing


def test_applying_a_job_document_is_refused(offline: Dcnctl) -> None:
    job = "apiVersion: dcnr.io/v1\nkind: Job\nmetadata: {name: j}\nspec: {network: digits}\n"
    err = offline.fails("apply", "-f", "-", "--dry-run=client", input=job)
    assert err.startswith('error: Job "j": dcnctl apply takes Network documents')


def test_unreachable_server(offline: Dcnctl) -> None:
    err = offline.fails("--server", "127.0.0.1:1", "get", "networks")
    assert err.startswith("error: unable to connect to the server at 127.0.0.1:1: ")
    assert len(err.splitlines()) == 1
    # Connection flags also work after the subcommand, as kubectl's do.
    err = offline.fails("get", "pnodes", "--server", "127.0.0.1:1", "--request-timeout", "5s")
    assert "127.0.0.1:1" in err


def test_contexts(offline: Dcnctl) -> None:
    assert offline.fails("config", "current-context") == "error: current-context is not set\n"
    out = offline("config", "set-context", "lab", "--server", "127.0.0.1:2", "--token", "t0k")
    assert out.stdout == 'Context "lab" created.\n'
    offline("config", "set-context", "other", "--server", "127.0.0.1:3")
    assert offline("config", "current-context").stdout == "lab\n"  # the first one set
    table = offline("config", "get-contexts").stdout.splitlines()
    assert table[0].split() == ["CURRENT", "NAME", "SERVER", "AUTH", "TRANSPORT"]
    assert table[1].split() == ["*", "lab", "127.0.0.1:2", "token", "tls"]  # TLS by default
    assert table[2].split() == ["other", "127.0.0.1:3", "<none>", "tls"]
    assert offline.config.stat().st_mode & 0o077 == 0, "the config holds tokens"
    body = yaml.safe_load(offline.config.read_text())
    assert body["contexts"][0] == {"name": "lab", "server": "127.0.0.1:2", "token": "t0k"}

    # Precedence: the current context, then DCNR_SERVER, then --server.
    assert "server at 127.0.0.1:2:" in offline.fails("get", "networks")
    assert offline("config", "use-context", "other").stdout == 'Switched to context "other".\n'
    assert "server at 127.0.0.1:3:" in offline.fails("get", "networks")
    assert "server at 127.0.0.1:2:" in offline.fails("--context", "lab", "get", "networks")
    offline.server = "127.0.0.1:4"
    assert "server at 127.0.0.1:4:" in offline.fails("get", "networks")
    assert "server at 127.0.0.1:5:" in offline.fails("-s", "127.0.0.1:5", "get", "networks")
    err = offline.fails("config", "use-context", "nope")
    assert err == 'error: no context exists with the name: "nope"\n'
    assert "does not exist" in offline.fails("--context", "nope", "get", "networks")


def test_broken_config_file_is_named(offline: Dcnctl) -> None:
    offline.config.write_text("contexts: [{name: a, sever: x}]\n")
    err = offline.fails("get", "networks")
    assert err.startswith(f"error: {offline.config}: contexts[0]: unknown field 'sever'")


def test_version_and_completion(offline: Dcnctl) -> None:
    assert offline("version", "--client").stdout.startswith("Client Version: v")
    for shell in ("bash", "zsh"):
        script = offline("completion", shell).stdout
        assert "complete -F _dcnctl dcnctl" in script
        assert "cordon" in script
        assert "--dry-run" in script


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [(-5, "<invalid>"), (-1, "0s"), (0, "0s"), (119, "119s"), (120, "2m"), (192, "3m12s"),
     (600, "10m"), (179 * 60, "179m"), (3 * 3600 + 60, "3h1m"), (8 * 3600, "8h"),
     (47 * 3600, "47h"), (3 * 86400 + 4 * 3600, "3d4h"), (12 * 86400, "12d"),
     (800 * 86400, "2y70d"), (9 * 365 * 86400, "9y")],
)  # fmt: skip
def test_age_reads_like_kubectl(seconds: int, shown: str) -> None:
    assert tables.duration(datetime.timedelta(seconds=seconds)) == shown


@pytest.mark.parametrize(
    ("text", "seconds"), [("60s", 60), ("2m", 120), ("1h30m", 5400), ("1.5", 1.5), ("250ms", 0.25)]
)
def test_durations(text: str, seconds: float) -> None:
    assert apply.parse_seconds(text, "--timeout") == seconds


def test_bad_duration() -> None:
    with pytest.raises(errors.CliError, match="--timeout '5 parsecs'"):
        apply.parse_seconds("5 parsecs", "--timeout")


def _job(phase: str, step: int, *, message: str = "", sps: float | None = None) -> job.Job:
    return job.Job.model_validate({
        "metadata": {"name": "j"},
        "spec": {"network": "n", "epochs": 2, "batchSize": 10},
        "status": {"phase": phase, "step": step, "totalSteps": 20, "epoch": max(1, -(-step // 10)),
                   "loss": 0.5, "accuracy": 0.75, "message": message,
                   "samplesPerSecond": sps},
    })  # fmt: skip


def test_progress_on_a_terminal_redraws_one_line() -> None:
    out = io.StringIO()
    progress = follow.Progress(out, tty=True)
    progress.update(_job("Running", 5, sps=10.0))
    progress.update(_job("Paused", 5, message="waiting for vnodes to be placed (attempt 2)"))
    progress.clear()
    text = out.getvalue()
    assert text.startswith("running\n\r\x1b[K[#####...............] step 5/20 epoch 1/2 ")
    assert "loss 0.5000 acc 0.750 ETA 0:15" in text  # 15 steps at 1 step/s
    assert "\r\x1b[Kpaused: waiting for vnodes to be placed (attempt 2)\n" in text
    assert text.endswith("\r\x1b[K")


def test_progress_in_a_log_is_one_line_per_change() -> None:
    out = io.StringIO()
    progress = follow.Progress(out, tty=False)
    for found in (_job("Running", 5), _job("Running", 5, sps=3.0), _job("Running", 20)):
        progress.update(found)
    assert out.getvalue().splitlines() == [
        "running",
        "[#####...............] step 5/20 epoch 1/2 loss 0.5000 acc 0.750 ETA -",
        "[####################] step 20/20 epoch 2/2 loss 0.5000 acc 0.750 ETA -",
    ]
    assert "\r" not in out.getvalue()


def test_version_without_a_server_still_prints_the_client_version(offline: Dcnctl) -> None:
    # Port 1 on loopback: nothing of ours listens there, so the call is refused at once.
    proc = offline("version", "--server", "127.0.0.1:1", "--request-timeout", "5s", check=False)
    assert proc.returncode == 1
    assert proc.stdout.startswith("Client Version: v")
    assert "Server Version" not in proc.stdout
    assert proc.stderr.startswith("error:")
    assert len(proc.stderr.splitlines()) == 1


@pytest.mark.parametrize("server", ["http://127.0.0.1:7070", "grpc://example.org:7070"])
def test_a_server_with_a_scheme_is_refused_with_the_fix(offline: Dcnctl, server: str) -> None:
    err = offline.fails("get", "networks", "--server", server)
    assert f"server {server!r}: give HOST:PORT without a scheme, e.g. " in err
    assert server.partition("://")[2] in err


@pytest.mark.parametrize("tool", ["dcnctl", "controller.main", "agent.main"])
def test_every_tool_has_version(tool: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", tool, "--version"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    name = {"dcnctl": "dcnctl", "controller.main": "dcnr-orchestrator", "agent.main": "dcnr-agent"}
    assert re.fullmatch(rf"{name[tool]} \d+\.\d+\.\d+\S*\n", proc.stdout), proc.stdout


def test_apply_reads_no_more_of_stdin_than_the_limit(offline: Dcnctl) -> None:
    limit = 1 << 20  # manifest.MAX_DOCUMENT_BYTES
    err = offline.fails("apply", "-f", "-", input="#" * (3 * limit))
    # It read one byte past the limit and stopped: not the 3 MiB it was offered.
    assert f"input is {limit + 1} bytes, more than the limit of {limit} bytes" in err


def test_apply_errors_are_bounded_lines(offline: Dcnctl, tmp_path: Path) -> None:
    vnodes = [{"name": "src", "kind": "input"}, {"name": "sink", "kind": "relu", "inputs": ["src"]}]
    vnodes += [
        {"name": f"v{i}", "kind": "relu", "inputs": [f"v{(i + 1) % 3000}"]} for i in range(3000)
    ]
    doc = {"apiVersion": "dcnr.io/v1", "kind": "Network",
           "metadata": {"name": "n" * 5000}, "spec": {"vnodes": vnodes}}  # fmt: skip
    path = tmp_path / "big.yaml"
    path.write_text(yaml.safe_dump(doc))
    err = offline.fails("apply", "-f", str(path))
    for line in err.splitlines():
        assert line.startswith("error: ")
        assert len(line) <= 500 + len("error: "), line[:80]
