"""Invariant 4 for the embedded store: a write that returned survives SIGKILL of the writer.

A child process writes as fast as it can and acknowledges each write after it returned;
the parent kills it at a random acknowledgment, several times on the same file (each round
also recovers the previous round's unfinished log), then checks that every acknowledged
write is there, consistent with its version, and that the file passes integrity_check.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
from pathlib import Path

from api.resources import job
from store import base, sqlite
from tests.store import children

ROUNDS = 6
MAX_ACKS_PER_ROUND = 60


def _acknowledged(lines: list[str]) -> dict[str, int]:
    versions: dict[str, int] = {}
    for line in lines:
        word, name, version = line.split()
        assert word == "ack", line
        versions[name] = max(versions.get(name, 0), int(version))
    return versions


async def _stored(path: Path) -> dict[str, job.Job]:
    db = await sqlite.SqliteStore.open(path)
    try:
        return {j.name: j for j in await base.list_all(db, job.Job)}
    finally:
        await db.close()


def test_acknowledged_writes_survive_sigkill(tmp_path):
    path = tmp_path / "state.db"
    rng = random.Random(20240611)
    acked: dict[str, int] = {}
    for round_ in range(ROUNDS):
        child = children.Child("write", str(path), f"r{round_}", str(rng.randrange(2**32)))
        try:
            lines = [child.read_line() for _ in range(rng.randint(1, MAX_ACKS_PER_ROUND))]
        finally:
            child.kill()
        # Printed before the kill landed: acknowledged too.
        lines += child.remaining()
        acked.update(_acknowledged(lines))

    stored = asyncio.run(_stored(path))
    for name, version in acked.items():
        assert name in stored, f"acknowledged {name} v{version} is missing"
        record = stored[name]
        assert record.metadata.resource_version >= version, name
        assert record.status.step == record.metadata.resource_version - 1, name

    check = sqlite3.connect(path)
    try:
        assert check.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        indexed = check.execute("SELECT count(*) FROM record_index WHERE kind = 'Job'").fetchone()
        assert indexed == (len(stored),)
    finally:
        check.close()
