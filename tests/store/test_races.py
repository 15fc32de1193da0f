"""Concurrent writers: conditional writes lose no update and never overcommit a PNode.

Every race runs with one client shared by all tasks and with two clients on the same state
(two connections to one SQLite file, two DynamoDB clients), and for SQLite also between
processes. A writer's attempt fails only when another writer committed after its read, so
with W writers, W attempts each are always enough: every writer must win.
"""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from api.resources import allocation, job, pnode
from store import base, errors, sqlite
from tests.store import children, records

WRITERS = 20
SLOTS_THAT_FIT = 8


async def _increment(store: base.Store, name: str) -> int | None:
    """Read, add one, write conditioned on the version read; the version won, or None."""
    for _ in range(WRITERS):
        current = await store.get(job.Job, name)
        current.status.step += 1
        try:
            return (await store.update(current)).metadata.resource_version
        except errors.Conflict:
            continue
    return None


@pytest.mark.parametrize("clients", [1, 2])
async def test_concurrent_read_modify_writes_lose_no_update(backend, clients):
    stores = [await backend.open() for _ in range(clients)]
    await stores[0].create(records.job_record("counter"))
    won = await asyncio.gather(
        *(_increment(stores[i % clients], "counter") for i in range(WRITERS))
    )
    assert None not in won
    assert sorted(v for v in won if v is not None) == list(range(2, WRITERS + 2))
    final = await stores[-1].get(job.Job, "counter")
    assert final.status.step == WRITERS
    assert final.metadata.resource_version == WRITERS + 1


async def _place(store: base.Store, slot: int) -> bool:
    """Allocate one slot on p1 and charge its capacity in one transaction; False if full."""
    alloc = records.allocation_record("mnist", "input", slot, "p1")
    cpu = alloc.spec.resources.cpu
    for _ in range(WRITERS):
        node = await store.get(pnode.PNode, "p1")
        if node.status.allocated.cpu + cpu > node.spec.capacity.cpu:
            return False
        try:
            await store.transact([base.Create(alloc), base.Update(records.charged(node, cpu))])
            return True
        except errors.Conflict as exc:
            if exc.op_index != 1:  # only the PNode may move under us; the slot is ours
                raise
    raise AssertionError(f"slot {slot}: no transaction won in {WRITERS} attempts")


@pytest.mark.parametrize("clients", [1, 2])
async def test_concurrent_placements_charge_capacity_exactly(backend, clients):
    stores = [await backend.open() for _ in range(clients)]
    capacity = SLOTS_THAT_FIT * records.MILLICPU_PER_SLOT
    await stores[0].create(records.pnode_record("p1", cpu=capacity))
    placed = await asyncio.gather(*(_place(stores[i % clients], i) for i in range(WRITERS)))

    node = await stores[-1].get(pnode.PNode, "p1")
    allocations = await base.list_all(stores[-1], allocation.Allocation, index=("pnode", "p1"))
    assert sorted(a.spec.replica for a in allocations) == [i for i, ok in enumerate(placed) if ok]
    assert node.status.allocated.cpu == sum(a.spec.resources.cpu for a in allocations)
    assert node.status.allocated.cpu == capacity
    assert len(allocations) == SLOTS_THAT_FIT


def test_sqlite_writers_in_separate_processes_lose_no_update(tmp_path):
    path = tmp_path / "state.db"

    async def create() -> None:
        db = await sqlite.SqliteStore.open(path)
        try:
            await db.create(records.job_record("counter"))
        finally:
            await db.close()

    asyncio.run(create())
    per_process = WRITERS // 2
    procs = [children.Child("increment", str(path), "counter", str(per_process)) for _ in "ab"]
    try:
        for child in procs:
            assert child.read_line() == "ready"
        for child in procs:
            child.send("go")
        won: list[int] = []
        for child in procs:
            lines = [child.read_line() for _ in range(per_process + 1)]
            assert lines[-1] == "done"
            won += [int(line.removeprefix("won ")) for line in lines[:-1]]
    finally:
        for child in procs:
            child.kill()
    assert sorted(won) == list(range(2, WRITERS + 2))

    async def final() -> job.Job:
        db = await sqlite.SqliteStore.open(path)
        try:
            return await db.get(job.Job, "counter")
        finally:
            await db.close()

    assert asyncio.run(final()).status.step == WRITERS


async def test_sqlite_locked_past_its_retries_is_unavailable_while_reads_go_on(tmp_path):
    path = tmp_path / "state.db"
    db = await sqlite.SqliteStore.open(path, busy_timeout=0.05)
    try:
        await db.create(records.job_record("a"))
        other_process = sqlite3.connect(path, isolation_level=None)
        other_process.execute("BEGIN IMMEDIATE")
        try:
            with pytest.raises(errors.Unavailable, match="locked"):
                await db.create(records.job_record("b"))
            assert (await db.get(job.Job, "a")).name == "a"
            assert [r.name for r in (await db.list(job.Job)).items] == ["a"]
        finally:
            other_process.execute("ROLLBACK")
            other_process.close()
        await db.create(records.job_record("b"))
        assert [r.name for r in (await db.list(job.Job)).items] == ["a", "b"]
    finally:
        await db.close()


async def test_sqlite_stores_creating_one_new_file_together_all_work(tmp_path):
    path = tmp_path / "new" / "state.db"
    stores = await asyncio.gather(*(sqlite.SqliteStore.open(path) for _ in range(4)))
    try:
        await asyncio.gather(
            *(db.create(records.job_record(f"j{i}")) for i, db in enumerate(stores))
        )
        for db in stores:
            assert [r.name for r in (await db.list(job.Job)).items] == ["j0", "j1", "j2", "j3"]
    finally:
        for db in stores:
            await db.close()
