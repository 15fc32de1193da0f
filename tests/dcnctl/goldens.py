"""Golden tables: volatile cells masked, columns re-aligned, compared with a file.

Run with DCNR_UPDATE_GOLDEN=1 to rewrite the files from the current output (then read the
diff before committing it)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

DIR = Path(__file__).parent / "golden"

Mask = Callable[[str], str]


def whole(label: str) -> Mask:
    return lambda _cell: label


def allocated_part(cell: str) -> str:
    """`350m/2` → `<ALLOCATED>/2`: capacity is stable, what is allocated depends on which
    other tests' networks share the cluster."""
    return re.sub(r"^[^/]*/", "<ALLOCATED>/", cell)


def cells(table: str) -> list[list[str]]:
    """A table's cells, split at the header's column starts (kubectl left-aligns every
    cell at its column start, so the header's offsets cut every row)."""
    lines = table.rstrip("\n").split("\n")
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    ends = [*starts[1:], None]
    return [[line[s:e].strip() for s, e in zip(starts, ends, strict=True)] for line in lines]


def normalize(table: str, masks: Mapping[str, Mask]) -> str:
    rows = cells(table)
    header = rows[0]
    for row in rows[1:]:
        for i, name in enumerate(header):
            if name in masks:
                row[i] = masks[name](row[i])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "".join(
        ("".join(c.ljust(w + 3) for c, w in zip(r[:-1], widths, strict=False)) + r[-1]).rstrip()
        + "\n"
        for r in rows
    )


def check(name: str, table: str, masks: Mapping[str, Mask]) -> None:
    got = normalize(table, masks)
    path = DIR / name
    if os.environ.get("DCNR_UPDATE_GOLDEN"):
        path.write_text(got)
    assert path.exists(), f"{path} missing: run with DCNR_UPDATE_GOLDEN=1 to create it"
    assert got == path.read_text(), f"{name} differs from the golden file:\n{got}"


def check_text(name: str, text: str) -> None:
    """Free text (describe) compared whole: callers pass fixed times, so nothing is masked."""
    path = DIR / name
    if os.environ.get("DCNR_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"{path} missing: run with DCNR_UPDATE_GOLDEN=1 to create it"
    assert text == path.read_text(), f"{name} differs from the golden file:\n{text}"
