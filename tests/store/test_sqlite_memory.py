"""The in-memory SQLite store the simulator runs on: the same records and conditions as the
file store, uids from the caller, private to its opener, on any executor."""

from __future__ import annotations

import itertools
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest

from sim import inline
from store import errors, sqlite
from tests.controller.state.test_view import pnode_record

NOW = datetime(2030, 1, 1, tzinfo=UTC)


def numbered() -> sqlite.SqliteStore:
    counter = itertools.count()
    return sqlite.SqliteStore.in_memory(
        clock=lambda: NOW, executor=inline.InlineExecutor(), uids=lambda: f"uid-{next(counter)}"
    )


async def test_records_take_the_callers_uids_and_keep_the_stores_conditions() -> None:
    store = numbered()
    a = await store.create(pnode_record("a"))
    b = await store.create(pnode_record("b"))
    assert (a.metadata.uid, b.metadata.uid) == ("uid-0", "uid-1")
    with pytest.raises(errors.AlreadyExists):
        await store.create(pnode_record("a"))
    stale = a.model_copy(deep=True)
    await store.update(a)
    with pytest.raises(errors.Conflict):
        await store.update(stale)
    assert [n.name for n in (await store.list(type(a))).items] == ["a", "b"]
    await store.close()


async def test_each_in_memory_store_is_private() -> None:
    one, two = numbered(), numbered()
    await one.create(pnode_record("a"))
    with pytest.raises(errors.NotFound):
        await two.get(type(pnode_record("a")), "a")
    await one.close()
    await two.close()


async def test_a_thread_pool_executor_works_too() -> None:
    pool = ThreadPoolExecutor(max_workers=1)
    store = sqlite.SqliteStore.in_memory(clock=lambda: NOW, executor=pool, uids=lambda: "u")
    created = await store.create(pnode_record("a"))
    assert (await store.get(type(created), "a")).metadata.uid == "u"
    await store.close()
