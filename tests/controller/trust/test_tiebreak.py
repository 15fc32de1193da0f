"""Tiebreaker requests on a real SQLite store: idempotent, re-read on Conflict, never lost
to a concurrent writer, and a stale copy of the Network cannot wipe them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import pytest

from api.resources import meta, network
from controller.trust import tiebreak
from store import base, errors, retry, sqlite
from tests.reconcilers import helpers

R = TypeVar("R", bound=meta.Resource)


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[sqlite.SqliteStore]:
    db = await sqlite.SqliteStore.open(tmp_path / "state.db")
    record = helpers.network_record(
        [helpers.vnode("a"), helpers.vnode("b", inputs=["a"]), helpers.vnode("c", inputs=["b"])]
    )
    record.metadata.uid, record.metadata.resource_version = "", 0
    await db.create(record)
    yield db
    await db.close()


async def tiebreakers(store: base.Store) -> list[str]:
    return (await store.get(network.Network, "net")).status.tiebreakers


async def test_request_is_idempotent_and_clear_removes_all(store: sqlite.SqliteStore) -> None:
    seen: list[network.Network] = []
    assert await tiebreak.request(store, "net", "b", on_written=seen.extend) is True
    assert await tiebreak.request(store, "net", "b", on_written=seen.extend) is False
    assert [n.status.tiebreakers for n in seen] == [["b"]]  # told of what was written only
    assert seen[0] == await store.get(network.Network, "net")
    assert await tiebreak.request(store, "net", "a") is True
    assert await tiebreakers(store) == ["a", "b"]
    net = await store.get(network.Network, "net")
    assert net.replicas_of("a") == 2
    assert net.replicas_of("c") == 1
    assert sorted(await tiebreak.clear(store, "net", on_written=seen.extend)) == ["a", "b"]
    assert await tiebreak.clear(store, "net", on_written=seen.extend) == []
    assert [n.status.tiebreakers for n in seen] == [["b"], []]
    assert await tiebreakers(store) == []


async def test_unknown_network_or_vnode_is_refused(store: sqlite.SqliteStore) -> None:
    assert await tiebreak.request(store, "nope", "a") is False
    assert await tiebreak.request(store, "net", "zz") is False
    assert await tiebreak.clear(store, "nope") == []
    assert await tiebreakers(store) == []


class Interleaved:
    """The SQLite store, except that before each of the first `times` updates another
    writer gets in first (it requests tiebreaker `other`, then bumps the record again), so
    the update conflicts and must be re-read."""

    def __init__(self, inner: sqlite.SqliteStore, other: str, times: int) -> None:
        self.inner, self.other, self.left = inner, other, times
        self.conflicts = 0

    async def get(self, kind: type[R], name: str) -> R:
        return await self.inner.get(kind, name)

    async def update(self, obj: R) -> R:
        if self.left > 0:
            self.left -= 1
            current = await self.inner.get(network.Network, "net")
            if self.other not in current.status.tiebreakers:
                current.status.tiebreakers.append(self.other)
            current.status.ready_slots += 1
            await self.inner.update(current)
        try:
            return await self.inner.update(obj)
        except errors.Conflict:
            self.conflicts += 1
            raise


async def test_conflict_is_re_read_and_keeps_the_other_writer(
    store: sqlite.SqliteStore,
) -> None:
    racing = Interleaved(store, "a", times=3)
    assert await tiebreak.request(racing, "net", "c") is True  # type: ignore[arg-type]
    assert racing.conflicts == 3
    assert await tiebreakers(store) == ["a", "c"]
    racing = Interleaved(store, "b", times=2)
    assert sorted(await tiebreak.clear(racing, "net")) == ["a", "b", "c"]  # type: ignore[arg-type]
    assert racing.conflicts == 2
    assert await tiebreakers(store) == []


async def test_gives_up_after_the_attempts_with_conflict(store: sqlite.SqliteStore) -> None:
    racing = Interleaved(store, "a", times=retry.ATTEMPTS)
    with pytest.raises(errors.Conflict):
        await tiebreak.request(racing, "net", "c")  # type: ignore[arg-type]
    assert await tiebreakers(store) == ["a"]


async def test_concurrent_requests_all_land(store: sqlite.SqliteStore) -> None:
    added = await asyncio.gather(*(tiebreak.request(store, "net", v) for v in "abcabc"))
    assert sorted(added) == [False, False, False, True, True, True]
    assert await tiebreakers(store) == ["a", "b", "c"]


async def test_a_stale_copy_cannot_wipe_a_request(store: sqlite.SqliteStore) -> None:
    stale = await store.get(network.Network, "net")
    assert await tiebreak.request(store, "net", "b") is True
    stale.status.phase = "Ready"
    with pytest.raises(errors.Conflict):
        await store.update(stale)
    assert await tiebreakers(store) == ["b"]
