"""A profile's top entries as text, for the README of a scenario that missed its target.

cProfile (stdlib) rather than py-spy or pyinstrument: nothing to install, and the entries
name our own functions. It sees the calling thread only, so time spent in a store's worker
thread (SQLite's, boto3's) shows up as the event loop waiting in `select`/`epoll`.
"""

from __future__ import annotations

import cProfile
import io
import pstats
from collections.abc import Awaitable
from typing import TypeVar

from benchmarks import harness

T = TypeVar("T")


async def profiled(awaitable: Awaitable[T], *, top: int = 15) -> tuple[T, list[str]]:
    """Await `awaitable` under cProfile; (its result, the top entries: ours by cumulative
    time, which shows where a pass goes, then everything by own time)."""
    profile = cProfile.Profile()
    profile.enable()
    try:
        result = await awaitable
    finally:
        profile.disable()
    return result, top_entries(profile, top=top)


def top_entries(profile: cProfile.Profile, *, top: int) -> list[str]:
    stats = pstats.Stats(profile, stream=io.StringIO())
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    entries = stats.stats  # type: ignore[attr-defined]
    ours = [
        item for item in entries.items()
        if item[0][0].startswith(_REPO) and "/benchmarks/" not in item[0][0]
    ]  # fmt: skip
    by_cumulative = sorted(ours, key=lambda kv: kv[1][3], reverse=True)[:top]
    by_own = sorted(entries.items(), key=lambda kv: kv[1][2], reverse=True)[: max(5, top // 2)]
    rows = ["ours, by cumulative time:"]
    rows += [_row(key, value) for key, value in by_cumulative]
    rows.append("everything, by own time:")
    rows += [_row(key, value) for key, value in by_own]
    return rows


def _row(key: tuple[str, int, str], value: tuple[int, int, float, float, object]) -> str:
    filename, line, function = key
    _, calls, own, cumulative, _ = value
    label = f"{_short(filename)}:{line}({function})" if line else function
    return f"{cumulative:8.3f}s cum {own:8.3f}s own {calls:>8} calls  {label}"


_REPO = str(harness.REPO) + "/"


def _short(filename: str) -> str:
    if filename.startswith(_REPO):
        return filename[len(_REPO) :]
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1]
    return filename
