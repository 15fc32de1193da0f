"""A child process for the SQLite tests: writes through a real SqliteStore, says what it did.

python crash_writer.py write DB PREFIX SEED
    Creates and updates Jobs named PREFIX-N forever, printing `ack NAME VERSION` after
    each write returned. Each Job's status.step is its resource_version - 1, so a
    record whose data and version disagree is visible. The parent SIGKILLs it.

python crash_writer.py increment DB NAME WRITERS
    Prints `ready`, waits for a line on stdin (so that several processes start
    together), then runs WRITERS concurrent read-modify-write increments of Job NAME's
    status.step, printing `won VERSION` for each, then `done`.
"""

from __future__ import annotations

import asyncio
import random
import sys
from pathlib import Path

from api.resources import job, meta
from store import errors, sqlite

ATTEMPTS = 64


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def write_forever(db_path: Path, prefix: str, seed: int) -> None:
    rng = random.Random(seed)
    store = await sqlite.SqliteStore.open(db_path)
    written: list[job.Job] = []
    while True:
        if not written or rng.random() < 0.3:
            name = f"{prefix}-{len(written)}"
            record = job.Job(metadata=meta.ObjectMeta(name=name), spec=job.JobSpec(network="mnist"))
            written.append(await store.create(record))
            _say(f"ack {name} 1")
            continue
        slot = rng.randrange(len(written))
        record = written[slot].model_copy(deep=True)
        record.status.step = record.metadata.resource_version
        written[slot] = await store.update(record)
        _say(f"ack {record.name} {written[slot].metadata.resource_version}")


async def _increment(store: sqlite.SqliteStore, name: str) -> int:
    for _ in range(ATTEMPTS):
        current = await store.get(job.Job, name)
        current.status.step += 1
        try:
            return (await store.update(current)).metadata.resource_version
        except errors.Conflict:
            continue
    raise RuntimeError(f"no update of {name} won in {ATTEMPTS} attempts")


async def increment(db_path: Path, name: str, writers: int) -> None:
    store = await sqlite.SqliteStore.open(db_path)
    try:
        _say("ready")
        await asyncio.to_thread(sys.stdin.readline)
        for version in await asyncio.gather(*(_increment(store, name) for _ in range(writers))):
            _say(f"won {version}")
        _say("done")
    finally:
        await store.close()


def main(argv: list[str]) -> None:
    mode, db_path, *rest = argv
    if mode == "write":
        asyncio.run(write_forever(Path(db_path), rest[0], int(rest[1])))
    elif mode == "increment":
        asyncio.run(increment(Path(db_path), rest[0], int(rest[1])))
    else:
        raise SystemExit(f"unknown mode {mode!r} (known: write, increment)")


if __name__ == "__main__":
    main(sys.argv[1:])
