"""Every event a recording site can tell names a reason of `api.resources.event.REASONS`
with that reason's type, so the metrics' zero series (one per listed reason) cover every
event that can happen. Read from the source: a new `_tell("Warning", "Evicted", ...)`
fails here until the reason is listed."""

from __future__ import annotations

import re
from pathlib import Path

from api.resources import event

ROOT = Path(__file__).resolve().parents[3]
#: `("Warning", "RolledBack"` and `"Warning", "FailedScheduling"` (loops, driver, services)
_TYPED = re.compile(r'"(Normal|Warning)",\s*"([A-Za-z]+)"')
#: `.warning("PNode", name, "Strike"` (the recorder's two shorthands)
_SHORTHAND = re.compile(r'\.(normal|warning)\(\s*"[A-Za-z]+",\s*\w+,\s*"([A-Za-z]+)"')


def told() -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for path in [*ROOT.glob("controller/**/*.py"), *ROOT.glob("reconcilers/**/*.py")]:
        text = path.read_text()
        found |= {(kind, reason) for kind, reason in _TYPED.findall(text)}
        found |= {(kind.capitalize(), reason) for kind, reason in _SHORTHAND.findall(text)}
    return found


def test_every_reason_told_is_listed_with_its_type() -> None:
    seen = told()
    assert len(seen) >= len(event.REASONS) - 1, seen  # the scan finds the sites at all
    unlisted = {(kind, reason) for kind, reason in seen if event.REASONS.get(reason) != kind}
    assert not unlisted, f"add to api.resources.event.REASONS: {sorted(unlisted)}"


def test_every_listed_reason_is_told_somewhere() -> None:
    assert {reason for _, reason in told()} >= set(event.REASONS)
