"""`serve`'s admission flags: defaults, parsing, and errors naming the flag and value."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from controller import admission_flags
from controller.runtime import ratelimit


def _read(*argv: str) -> admission_flags.Admission:
    parser = argparse.ArgumentParser()
    admission_flags.add(parser)
    return admission_flags.read(parser.parse_args(argv))


def test_defaults_are_open_registration_with_documented_limits() -> None:
    admitted = _read()
    assert admitted.join_tokens == frozenset()
    assert admitted.limits.register == ratelimit.Limit(5.0, 20)
    assert admitted.limits.hot == ratelimit.Limit(100.0, 200)
    assert admitted.max_pending_pnodes == 1000


def test_flags_set_the_limits_and_tokens(tmp_path: Path) -> None:
    tokens = tmp_path / "join-tokens"
    tokens.write_text("# closed cluster\nabc.def\n\nghi.jkl\n")
    admitted = _read(
        "--register-rate", "1/2", "--call-rate", "0", "--max-pending-pnodes", "7",
        "--join-token-file", str(tokens),
    )  # fmt: skip
    assert admitted.limits.register == ratelimit.Limit(1.0, 2)
    assert admitted.limits.hot.unlimited
    assert admitted.max_pending_pnodes == 7
    assert admitted.join_tokens == {"abc.def", "ghi.jkl"}


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (("--register-rate", "fast"), "--register-rate 'fast'"),
        (("--call-rate", "5/0"), "--call-rate '5/0'"),
        (("--max-pending-pnodes", "0"), "--max-pending-pnodes 0"),
    ],
)
def test_bad_values_name_the_flag_and_value(argv: tuple[str, ...], named: str) -> None:
    with pytest.raises(ValueError, match="^" + re.escape(named)):
        _read(*argv)


@pytest.mark.parametrize("content", [None, "# only a comment\n", "two words\n"])
def test_a_bad_token_file_names_the_flag(tmp_path: Path, content: str | None) -> None:
    path = tmp_path / "tokens"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ValueError, match="^--join-token-file " + re.escape(str(path))) as caught:
        _read("--join-token-file", str(path))
    assert "admin" not in str(caught.value)
