"""The uid precondition of the Store contract, on every backend.

A record deleted and created again restarts at resource_version 1, so a writer still holding
the old record holds a matching version number; only the uid tells the two apart. Without
the uid condition such a writer could, say, overwrite a VNode slot's new Allocation with the
old one, and the slot would have two live placements in effect (invariant 2).
"""

from __future__ import annotations

import pytest

from api.resources import job
from store import base, errors
from tests.store import records

#: Every way a write can be conditioned on a uid: alone, and as an op of a transaction.
WAYS = [
    "update",
    "delete",
    "delete-by-uid-alone",
    "transact-update",
    "transact-delete",
    "transact-check",
]


async def _recreated(store: base.Store) -> tuple[job.Job, job.Job]:
    """A Job as one writer read it, and the Job of the same name that replaced it."""
    old = await store.create(records.job_record("train"))
    await store.delete(job.Job, "train")
    new = await store.create(records.job_record("train"))
    assert old.metadata.resource_version == new.metadata.resource_version == 1
    assert old.metadata.uid != new.metadata.uid
    return old, new


async def _write(store: base.Store, way: str, held: job.Job, uid: str) -> None:
    """Write as a writer holding `held`, conditioned on `uid` (an update: its record's)."""
    version = held.metadata.resource_version
    edited = held.model_copy(deep=True)
    edited.metadata.uid = uid
    edited.status.step = 99
    if way == "update":
        await store.update(edited)
    elif way == "delete":
        await store.delete(job.Job, held.name, resource_version=version, uid=uid)
    elif way == "delete-by-uid-alone":
        await store.delete(job.Job, held.name, uid=uid)
    else:
        ops: dict[str, base.Op] = {
            "transact-update": base.Update(edited),
            "transact-delete": base.Delete(job.Job, held.name, version, uid=uid),
            "transact-check": base.Check(job.Job, held.name, version, uid=uid),
        }
        op = ops[way]
        await store.transact([base.Create(records.job_record("bystander")), op])


@pytest.mark.parametrize("way", WAYS)
async def test_a_writer_holding_the_replaced_record_is_conflict_though_versions_match(store, way):
    old, new = await _recreated(store)
    with pytest.raises(errors.Conflict) as caught:
        await _write(store, way, old, old.metadata.uid)
    error = caught.value
    assert (error.kind, error.name) == ("Job", "train")
    assert old.metadata.uid in str(error)
    assert new.metadata.uid in str(error)
    assert error.op_index == (1 if way.startswith("transact") else None)
    assert records.same(await store.get(job.Job, "train"), new)
    assert await records.names(store, job.Job) == ["train"]  # nor the bystander


@pytest.mark.parametrize("uid", ["current", "empty"])
@pytest.mark.parametrize("way", WAYS)
async def test_the_current_uid_or_an_empty_one_lets_the_write_apply(store, way, uid):
    old, new = await _recreated(store)
    await _write(store, way, old, new.metadata.uid if uid == "current" else "")
    names = await records.names(store, job.Job)
    assert ("bystander" in names) == way.startswith("transact")
    if "delete" in way:
        assert "train" not in names
        return
    stored = await store.get(job.Job, "train")
    assert stored.metadata.uid == new.metadata.uid
    assert stored.metadata.creation_timestamp == new.metadata.creation_timestamp
    if "update" in way:
        assert stored.metadata.resource_version == 2
        assert stored.status.step == 99
    else:
        assert records.same(stored, new)


async def test_a_record_read_before_the_replacement_cannot_undo_it_in_a_transaction(store):
    """The allocation use case: a stale copy of a slot's allocation, written back together
    with another op, fails as a whole, and the op that failed is named."""
    node = await store.create(records.pnode_record("p1"))
    first = await store.create(records.allocation_record("mnist", "input", 0, "p1"))
    await store.delete(type(first), first.name, resource_version=1, uid=first.metadata.uid)
    second = records.allocation_record("mnist", "input", 0, "p1")
    second.spec.epoch = 2
    replacement = await store.create(second)
    charged = records.charged(node, records.MILLICPU_PER_SLOT)
    with pytest.raises(errors.Conflict) as caught:
        await store.transact([base.Update(charged), base.Update(first)])
    assert caught.value.op_index == 1
    assert records.same(await store.get(type(first), first.name), replacement)
    assert records.same(await store.get(type(node), "p1"), node)
