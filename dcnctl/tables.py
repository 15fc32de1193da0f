"""kubectl's plain-text tables: left-aligned columns, three spaces apart, and its AGE."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta

NONE = "<none>"
GAP = 3


def render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], *, no_headers: bool = False
) -> str:
    lines = [list(r) for r in rows] if no_headers else [list(headers), *map(list, rows)]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines) for i in range(len(headers))]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i] + GAP) for i, cell in enumerate(line[:-1])]
        out.append(("".join(cells) + line[-1]).rstrip())
    return "\n".join(out) + "\n"


def age(created: datetime | None, now: datetime) -> str:
    return "<unknown>" if created is None else duration(now - created)


def duration(delta: timedelta) -> str:
    """kubectl's human duration: "45s", "3m12s", "25m", "5h3m", "20h", "3d4h", "12d", "2y"."""
    seconds = int(delta.total_seconds())
    if seconds < -1:
        return "<invalid>"
    if seconds < 0:
        return "0s"
    if seconds < 120:
        return f"{seconds}s"
    minutes = seconds // 60
    if minutes < 10:
        return _two(minutes, "m", seconds % 60, "s")
    if minutes < 180:
        return f"{minutes}m"
    hours = minutes // 60
    if hours < 8:
        return _two(hours, "h", minutes % 60, "m")
    if hours < 48:
        return f"{hours}h"
    days = hours // 24
    if hours < 24 * 8:
        return _two(days, "d", hours % 24, "h")
    if days < 365 * 2:
        return f"{days}d"
    years = days // 365
    if days < 365 * 8:
        return _two(years, "y", days % 365, "d")
    return f"{years}y"


def _two(big: int, big_unit: str, small: int, small_unit: str) -> str:
    return f"{big}{big_unit}" if small == 0 else f"{big}{big_unit}{small}{small_unit}"


def label_list(found: Mapping[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(found.items())) or NONE
