"""The Store contract of store/base.py, checked identically on every backend."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from api.resources import allocation, event, job, meta, network, orchestrator, pnode
from store import base, errors
from tests.store import records
from tests.store.conftest import FakeClock

KINDS = [type(obj) for obj in records.one_of_each()]


# -- create and get ---------------------------------------------------------------------------


@pytest.mark.parametrize("obj", records.one_of_each(), ids=lambda o: o.KIND)
async def test_create_fills_metadata_and_get_returns_the_same(store, fake_clock, obj):
    created = await store.create(obj)
    assert created.metadata.resource_version == 1
    assert created.metadata.generation == 1
    assert created.metadata.uid
    assert created.metadata.creation_timestamp == fake_clock.now
    assert created.model_dump(exclude={"metadata"}) == obj.model_dump(exclude={"metadata"})
    assert created.metadata.labels == obj.metadata.labels
    got = await store.get(type(obj), obj.name)
    assert type(got) is type(obj)
    assert records.same(got, created)


async def test_uids_are_unique_and_a_recreated_record_gets_a_new_one(store):
    first = await store.create(records.job_record("a"))
    other = await store.create(records.job_record("b"))
    await store.delete(job.Job, "a")
    again = await store.create(records.job_record("a"))
    assert len({first.metadata.uid, other.metadata.uid, again.metadata.uid}) == 3
    assert again.metadata.resource_version == 1


async def test_create_of_a_taken_name_is_already_exists(store):
    await store.create(records.network_record("mnist"))
    with pytest.raises(errors.AlreadyExists) as caught:
        await store.create(records.network_record("mnist"))
    assert (caught.value.kind, caught.value.name) == ("Network", "mnist")


async def test_same_name_in_different_kinds_are_different_records(store):
    await store.create(records.network_record("mnist"))
    await store.create(records.job_record("mnist"))
    assert (await store.get(network.Network, "mnist")).KIND == "Network"
    assert (await store.get(job.Job, "mnist")).KIND == "Job"
    await store.delete(job.Job, "mnist")
    await store.get(network.Network, "mnist")


async def _touch_ghost(store: base.Store, operation: str) -> None:
    if operation == "get":
        await store.get(pnode.PNode, "ghost")
    elif operation == "update":
        ghost = records.pnode_record("ghost")
        ghost.metadata.resource_version = 1
        await store.update(ghost)
    else:
        await store.delete(pnode.PNode, "ghost")


@pytest.mark.parametrize("operation", ["get", "update", "delete"])
async def test_missing_record_is_not_found(store, operation):
    with pytest.raises(errors.NotFound) as caught:
        await _touch_ghost(store, operation)
    assert (caught.value.kind, caught.value.name) == ("PNode", "ghost")


# -- update and delete ------------------------------------------------------------------------


async def test_update_bumps_resource_version_by_one_and_leaves_generation_to_the_writer(store):
    created = await store.create(records.job_record("train"))
    created.status.step = 10
    second = await store.update(created)
    assert second.metadata.resource_version == 2
    assert second.metadata.generation == 1
    second.spec.epochs = 3
    second.metadata.generation = 2
    third = await store.update(second)
    assert third.metadata.resource_version == 3
    assert third.metadata.generation == 2
    assert (third.status.step, third.spec.epochs) == (10, 3)
    assert records.same(await store.get(job.Job, "train"), third)


@pytest.mark.parametrize("writers_uid", ["same", "empty"])
async def test_update_keeps_the_stored_uid_and_creation_timestamp(
    store, fake_clock: FakeClock, writers_uid
):
    created = await store.create(records.orchestrator_record("replica-a"))
    fake_clock.advance(60)
    forged = created.model_copy(deep=True)
    forged.metadata.uid = created.metadata.uid if writers_uid == "same" else ""
    forged.metadata.creation_timestamp = datetime(1999, 1, 1, tzinfo=UTC)
    forged.status.version = "0.2"
    updated = await store.update(forged)
    assert updated.metadata.uid == created.metadata.uid
    assert updated.metadata.creation_timestamp == created.metadata.creation_timestamp
    assert updated.status.version == "0.2"
    assert updated.metadata.resource_version == 2
    assert records.same(await store.get(orchestrator.Orchestrator, "replica-a"), updated)


async def test_update_with_another_uid_is_conflict_naming_both(store):
    created = await store.create(records.orchestrator_record("replica-a"))
    forged = created.model_copy(deep=True)
    forged.metadata.uid = "forged"
    forged.status.version = "0.2"
    with pytest.raises(errors.Conflict, match=f"'forged'.*'{created.metadata.uid}'") as caught:
        await store.update(forged)
    assert (caught.value.kind, caught.value.name) == ("Orchestrator", "replica-a")
    assert records.same(await store.get(orchestrator.Orchestrator, "replica-a"), created)


@pytest.mark.parametrize("stale", [0, 1, 3])
async def test_update_with_a_stale_version_is_conflict_and_changes_nothing(store, stale):
    created = await store.create(records.job_record("train"))
    current = await store.update(created)  # now at version 2
    writer = current.model_copy(deep=True)
    writer.metadata.resource_version = stale
    writer.status.step = 99
    with pytest.raises(errors.Conflict) as caught:
        await store.update(writer)
    assert (caught.value.kind, caught.value.name) == ("Job", "train")
    assert records.same(await store.get(job.Job, "train"), current)


async def test_delete_is_conditioned_on_the_version_when_given(store):
    created = await store.create(records.job_record("train"))
    updated = await store.update(created)
    with pytest.raises(errors.Conflict):
        await store.delete(job.Job, "train", resource_version=1)
    await store.get(job.Job, "train")
    await store.delete(job.Job, "train", resource_version=updated.metadata.resource_version)
    with pytest.raises(errors.NotFound):
        await store.get(job.Job, "train")


async def test_delete_without_a_version_is_unconditional(store):
    created = await store.create(records.job_record("train"))
    await store.update(created)
    await store.delete(job.Job, "train")
    with pytest.raises(errors.NotFound):
        await store.delete(job.Job, "train")


async def test_returned_records_are_copies(store):
    original = records.pnode_record("laptop-1")
    created = await store.create(original)
    original.spec.address = "mutated-input:1"
    created.spec.address = "mutated-output:1"
    got = await store.get(pnode.PNode, "laptop-1")
    assert got.spec.address == "laptop-1.example:7070"
    got.status.phase = "Lost"
    again = await store.get(pnode.PNode, "laptop-1")
    assert again is not got
    assert again.status.phase == "Ready"
    (listed,) = (await store.list(pnode.PNode)).items
    listed.spec.address = "mutated-list:1"
    assert (await store.get(pnode.PNode, "laptop-1")).spec.address == "laptop-1.example:7070"


# -- list, pagination, indexes ----------------------------------------------------------------


async def test_a_page_is_ordered_by_name_and_holds_only_its_kind(store):
    for name in ["delta", "alpha", "echo", "charlie", "bravo"]:
        await store.create(records.orchestrator_record(name))
    await store.create(records.job_record("aardvark"))
    page = await store.list(orchestrator.Orchestrator)
    assert [r.name for r in page.items] == ["alpha", "bravo", "charlie", "delta", "echo"]
    assert page.continue_token is None
    assert all(type(r) is orchestrator.Orchestrator for r in page.items)
    assert (await store.list(network.Network)).items == []


async def _pages(
    store: base.Store, kind: type[meta.Resource], *, limit: int, index: tuple[str, str] | None
) -> list[list[str]]:
    """The names on each page of one listing, followed to its end."""
    pages: list[list[str]] = []
    token: str | None = None
    for _ in range(100):
        page = await store.list(kind, index=index, limit=limit, continue_token=token)
        pages.append([r.name for r in page.items])
        token = page.continue_token
        if token is None:
            return pages
    raise AssertionError(f"no last page after 100 pages: {pages}")


@pytest.mark.parametrize("index", [None, ("network", "mnist")], ids=["whole-kind", "by-index"])
async def test_pages_cover_every_record_once_and_end_with_no_token(store, index):
    """A whole kind promises each record once and each page sorted, not order across pages
    (DynamoDB scans in hash order); a list by index is in name order across pages."""
    names = [f"job-{i:02d}" for i in (7, 3, 0, 5, 1, 6, 2, 4)]
    for name in names:
        await store.create(records.job_record(name, "mnist"))
    pages = await _pages(store, job.Job, limit=3, index=index)
    seen = [name for page in pages for name in page]
    assert len(seen) == len(set(seen)), f"a record came twice: {pages}"
    assert sorted(seen) == sorted(names)
    assert [len(page) for page in pages] == [3, 3, 2]
    assert all(page == sorted(page) for page in pages)
    if index is not None:
        assert seen == sorted(names)


async def test_a_record_created_behind_the_cursor_does_not_shift_later_index_pages(store):
    by_network = ("network", "mnist")
    for name in ["b", "d", "f", "h"]:
        await store.create(records.job_record(name, "mnist"))
    first = await store.list(job.Job, index=by_network, limit=2)
    await store.create(records.job_record("a", "mnist"))
    await store.create(records.job_record("e", "mnist"))
    rest = await store.list(
        job.Job, index=by_network, limit=10, continue_token=first.continue_token
    )
    assert [r.name for r in first.items] == ["b", "d"]
    assert [r.name for r in rest.items] == ["e", "f", "h"]


async def test_records_present_throughout_a_whole_kind_listing_come_exactly_once(store):
    """Creating and deleting records mid-listing: those created or deleted may or may not
    appear, the others come exactly once, on both backends."""
    steady = [f"s-{i}" for i in range(6)]
    for name in [*steady, "gone-1", "gone-2"]:
        await store.create(records.job_record(name))
    seen: list[str] = []
    token: str | None = None
    for step in range(100):
        page = await store.list(job.Job, limit=2, continue_token=token)
        seen += [r.name for r in page.items]
        if step == 0:
            await store.delete(job.Job, "gone-1")
            await store.delete(job.Job, "gone-2")
            await store.create(records.job_record("new-1"))
            await store.create(records.job_record("z-new"))
        token = page.continue_token
        if token is None:
            break
    assert token is None
    assert len(seen) == len(set(seen)), f"a record came twice: {seen}"
    assert set(steady) <= set(seen)
    assert set(seen) <= set(steady) | {"gone-1", "gone-2", "new-1", "z-new"}


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_out_of_range_is_invalid(store, limit):
    with pytest.raises(errors.InvalidRequest, match="limit"):
        await store.list(job.Job, limit=limit)


async def test_a_garbled_continue_token_is_invalid(store):
    with pytest.raises(errors.InvalidRequest):
        await store.list(job.Job, continue_token="%%% not a token %%%")


@pytest.mark.parametrize(
    "doc",
    [
        {"k": "PNode", "i": None, "a": "j-1"},  # another kind's list
        {"k": "Job", "i": ["network", "cifar"], "a": "j-1"},  # another index value
        {"k": "Job", "i": None, "a": ""},  # no record names ""
        {"k": "Job", "i": None, "a": "Not a name"},  # no record could have it
        {"k": "Job", "i": None, "a": 7},
        {"k": "Job", "i": None},
    ],
)
async def test_a_tampered_continue_token_is_invalid(store, doc):
    await store.create(records.job_record("j-1"))
    token = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(errors.InvalidRequest, match="continue_token"):
        await store.list(job.Job, continue_token=token)


@pytest.mark.parametrize(
    ("kind", "index"),
    [(network.Network, "name"), (pnode.PNode, "network"), (job.Job, "pnode")],
)
async def test_an_undeclared_index_is_invalid(store, kind, index):
    with pytest.raises(errors.InvalidRequest, match=index):
        await store.list(kind, index=(index, "x"))


async def test_list_by_each_declared_index(store):
    await store.create(records.pnode_record("p1"))
    await store.create(records.pnode_record("p2", phase="NotReady"))
    await store.create(records.pnode_record("p3"))
    for net, vnode, replica, node in [
        ("mnist", "input", 0, "p1"),
        ("mnist", "hidden", 0, "p3"),
        ("mnist", "hidden", 1, "p1"),
        ("cifar", "input", 0, "p1"),
    ]:
        await store.create(records.allocation_record(net, vnode, replica, node))
    for name, net in [("j1", "mnist"), ("j2", "cifar"), ("j3", "mnist")]:
        await store.create(records.job_record(name, net))

    alloc = allocation.Allocation
    assert await records.names(store, alloc, index=("network", "mnist")) == [
        "mnist.hidden.0",
        "mnist.hidden.1",
        "mnist.input.0",
    ]
    assert await records.names(store, alloc, index=("pnode", "p1")) == [
        "cifar.input.0",
        "mnist.hidden.1",
        "mnist.input.0",
    ]
    assert await records.names(store, alloc, index=("pnode", "p2")) == []
    assert await records.names(store, pnode.PNode, index=("phase", "Ready")) == ["p1", "p3"]
    assert await records.names(store, pnode.PNode, index=("phase", "NotReady")) == ["p2"]
    assert await records.names(store, job.Job, index=("network", "mnist")) == ["j1", "j3"]

    first = await store.list(alloc, index=("pnode", "p1"), limit=2)
    rest = await store.list(
        alloc, index=("pnode", "p1"), limit=2, continue_token=first.continue_token
    )
    assert [r.name for r in first.items + rest.items] == [
        "cifar.input.0",
        "mnist.hidden.1",
        "mnist.input.0",
    ]
    assert rest.continue_token is None


async def test_indexes_follow_updates_and_deletes(store):
    node = await store.create(records.pnode_record("p1"))
    await store.create(records.pnode_record("p2"))
    moved = await store.create(records.allocation_record("mnist", "input", 0, "p1"))
    await store.create(records.allocation_record("mnist", "input", 1, "p1"))

    node.status.phase = "Lost"
    await store.update(node)
    assert await records.names(store, pnode.PNode, index=("phase", "Ready")) == ["p2"]
    assert await records.names(store, pnode.PNode, index=("phase", "Lost")) == ["p1"]

    moved.spec.pnode = "p2"
    moved.spec.epoch = 2
    await store.update(moved)
    alloc = allocation.Allocation
    assert await records.names(store, alloc, index=("pnode", "p1")) == ["mnist.input.1"]
    assert await records.names(store, alloc, index=("pnode", "p2")) == ["mnist.input.0"]

    await store.delete(alloc, "mnist.input.0")
    assert await records.names(store, alloc, index=("pnode", "p2")) == []
    assert await records.names(store, alloc, index=("network", "mnist")) == ["mnist.input.1"]


# -- versions: identity and version only ------------------------------------------------------


async def test_versions_lists_every_record_s_uid_and_version_and_nothing_deleted(store):
    made = {}
    for name in ("a", "b", "c", "d", "e"):
        made[name] = await store.create(records.pnode_record(name))
    bumped = made["b"].model_copy(deep=True)
    bumped.status.assignments_version += 1
    made["b"] = await store.update(bumped)
    await store.delete(pnode.PNode, "c")
    await store.create(records.network_record("a"))  # another kind's "a" is not listed
    found = await base.all_versions(store, pnode.PNode)
    assert found == {
        name: base.Version(name, obj.metadata.uid, obj.metadata.resource_version)
        for name, obj in made.items()
        if name != "c"
    }
    assert found["b"].resource_version == 2


async def test_versions_pages_come_sorted_and_every_record_exactly_once(store):
    names = [f"j-{i:02d}" for i in range(7)]
    for name in names:
        await store.create(records.job_record(name))
    seen: list[str] = []
    token: str | None = None
    for _ in range(20):
        page = await store.versions(job.Job, limit=3, continue_token=token)
        assert len(page.items) <= 3
        got = [v.name for v in page.items]
        assert got == sorted(got)
        seen += got
        token = page.continue_token
        if token is None:
            break
    assert token is None
    assert sorted(seen) == names  # so none twice


async def test_versions_leaves_out_an_expired_record(store, fake_clock):
    live = await store.create(records.event_record("mnist", last=fake_clock.now, ttl=60))
    other = await store.create(
        records.event_record("mnist", reason="Moved", last=fake_clock.now, ttl=600)
    )
    assert set(await base.all_versions(store, event.Event)) == {live.name, other.name}
    fake_clock.advance(61)
    assert set(await base.all_versions(store, event.Event)) == {other.name}


@pytest.mark.parametrize("limit", [0, -1, base.MAX_VERSIONS_PAGE_SIZE + 1, True])
async def test_versions_limit_out_of_range_is_invalid_naming_it(store, limit):
    with pytest.raises(errors.InvalidRequest, match=f"versions Job: limit {limit!r}"):
        await store.versions(job.Job, limit=limit)


async def test_versions_refuses_another_listing_s_continue_token(store):
    await store.create(records.job_record("j-1"))
    doc = {"k": "PNode", "i": None, "a": "j-1"}
    token = base64.urlsafe_b64encode(json.dumps(doc).encode()).decode()
    with pytest.raises(errors.InvalidRequest, match="continue_token"):
        await store.versions(job.Job, continue_token=token)


# -- records that expire (events) -------------------------------------------------------------


async def test_an_expired_event_is_gone_for_get_list_and_create(store, fake_clock):
    live = records.event_record("mnist", last=fake_clock.now, ttl=60)
    other = records.event_record("mnist", reason="Moved", last=fake_clock.now, ttl=600)
    await store.create(live)
    await store.create(other)
    by_object = ("object", "Network/mnist")
    assert await records.names(store, event.Event, index=by_object) == sorted(
        [live.name, other.name]
    )

    fake_clock.advance(61)
    with pytest.raises(errors.NotFound):
        await store.get(event.Event, live.name)
    assert await records.names(store, event.Event, index=by_object) == [other.name]
    assert await records.names(store, event.Event) == [other.name]
    # The name of an expired record is free again, though a TTL may delete it only later.
    again = await store.create(records.event_record("mnist", last=fake_clock.now, ttl=60))
    assert (await store.get(event.Event, live.name)).metadata.uid == again.metadata.uid


async def test_a_repeated_event_is_one_record_whose_count_and_expiry_move(store, fake_clock):
    first = await store.create(records.event_record("mnist", last=fake_clock.now, ttl=60))
    fake_clock.advance(50)
    bumped = first.model_copy(deep=True)
    bumped.count += 1
    bumped.last_timestamp = fake_clock.now
    bumped.expire_time = fake_clock.now + timedelta(seconds=60)
    await store.update(bumped)
    fake_clock.advance(50)  # past the first expiry, within the renewed one
    got = await store.get(event.Event, first.name)
    assert (got.count, got.first_timestamp, got.last_timestamp) == (
        2,
        first.first_timestamp,
        bumped.last_timestamp,
    )
    assert await records.names(store, event.Event, index=("object", "Network/mnist")) == [
        first.name
    ]


async def test_events_are_listed_by_their_object(store, fake_clock):
    await store.create(records.event_record("mnist", last=fake_clock.now))
    now = fake_clock.now
    await store.create(records.event_record("p1", kind="PNode", reason="Fenced", last=now))
    await store.create(records.event_record("mnist", kind="Job", reason="Attempt", last=now))
    found = await store.list(event.Event, index=("object", "PNode/p1"))
    assert [(e.involved_object.kind, e.reason) for e in found.items] == [("PNode", "Fenced")]
