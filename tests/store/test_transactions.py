"""Transactions of the Store contract: all or nothing, the failing op named, on every backend."""

from __future__ import annotations

import pytest

from api.resources import allocation, job, network, pnode
from store import base, errors
from tests.store import records


async def _seed(store: base.Store) -> tuple[pnode.PNode, job.Job, network.Network]:
    """A PNode at version 2, a Job and a Network at version 1."""
    node = await store.update(await store.create(records.pnode_record("p1")))
    return (
        node,
        await store.create(records.job_record("old")),
        await store.create(records.network_record("mnist")),
    )


async def test_transaction_applies_every_kind_of_op(store, fake_clock):
    node, old_job, net = await _seed(store)
    node.status.phase = "NotReady"
    results = await store.transact(
        [
            base.Create(records.allocation_record("mnist", "input", 0, "p1")),
            base.Update(node),
            base.Delete(job.Job, "old", resource_version=old_job.metadata.resource_version),
            base.Check(network.Network, "mnist", net.metadata.resource_version),
        ]
    )
    created, updated, deleted, checked = results
    assert isinstance(created, allocation.Allocation)
    assert created.metadata.resource_version == 1
    assert created.metadata.creation_timestamp == fake_clock.now
    assert isinstance(updated, pnode.PNode)
    assert updated.metadata.resource_version == 3
    assert (deleted, checked) == (None, None)
    assert records.same(await store.get(allocation.Allocation, "mnist.input.0"), created)
    assert records.same(await store.get(pnode.PNode, "p1"), updated)
    assert await records.names(store, pnode.PNode, index=("phase", "NotReady")) == ["p1"]
    with pytest.raises(errors.NotFound):
        await store.get(job.Job, "old")
    assert records.same(await store.get(network.Network, "mnist"), net)


async def test_an_empty_transaction_writes_nothing(store):
    assert await store.transact([]) == []


def _failing_op(case: str) -> tuple[base.Op, type[errors.StoreError]]:
    stale_node = records.pnode_record("p1")
    stale_node.metadata.resource_version = 1
    missing_job = records.job_record("ghost")
    missing_job.metadata.resource_version = 1
    cases: dict[str, tuple[base.Op, type[errors.StoreError]]] = {
        "create-existing": (base.Create(records.network_record("mnist")), errors.AlreadyExists),
        "update-stale": (base.Update(stale_node), errors.Conflict),
        "update-missing": (base.Update(missing_job), errors.NotFound),
        "delete-stale": (base.Delete(pnode.PNode, "p1", resource_version=1), errors.Conflict),
        "delete-missing": (base.Delete(job.Job, "ghost"), errors.NotFound),
        "check-stale": (base.Check(pnode.PNode, "p1", 1), errors.Conflict),
        "check-missing": (base.Check(job.Job, "ghost", 1), errors.NotFound),
    }
    return cases[case]


@pytest.mark.parametrize(
    "case",
    [
        "create-existing",
        "update-stale",
        "update-missing",
        "delete-stale",
        "delete-missing",
        "check-stale",
        "check-missing",
    ],
)
async def test_a_failing_op_leaves_no_trace_and_is_named(store, case):
    node, old_job, net = await _seed(store)
    failing, error = _failing_op(case)
    renamed = old_job.model_copy(deep=True)
    renamed.status.message = "written by the failed transaction"
    with pytest.raises(error) as caught:
        await store.transact(
            [
                base.Create(records.allocation_record("mnist", "input", 0, "p1")),
                base.Update(renamed),
                failing,
                base.Create(records.job_record("after")),
            ]
        )
    assert caught.value.op_index == 2
    with pytest.raises(errors.NotFound):
        await store.get(allocation.Allocation, "mnist.input.0")
    with pytest.raises(errors.NotFound):
        await store.get(job.Job, "after")
    assert records.same(await store.get(job.Job, "old"), old_job)
    assert records.same(await store.get(pnode.PNode, "p1"), node)
    assert records.same(await store.get(network.Network, "mnist"), net)
    assert await records.names(store, allocation.Allocation, index=("pnode", "p1")) == []


async def test_the_first_failing_op_is_the_one_reported(store):
    await _seed(store)
    with pytest.raises(errors.NotFound) as caught:
        await store.transact(
            [
                base.Check(network.Network, "mnist", 1),
                base.Check(job.Job, "ghost", 1),
                base.Check(pnode.PNode, "p1", 1),
            ]
        )
    assert caught.value.op_index == 1


@pytest.mark.parametrize(
    "second",
    [
        base.Check(job.Job, "a", 1),
        base.Delete(job.Job, "a"),
        base.Create(records.job_record("a")),
    ],
    ids=["check", "delete", "create"],
)
async def test_a_record_may_appear_once_per_transaction(store, second):
    with pytest.raises(errors.InvalidRequest) as caught:
        await store.transact([base.Create(records.job_record("a")), second])
    assert caught.value.op_index == 1
    with pytest.raises(errors.NotFound):
        await store.get(job.Job, "a")


async def test_transactions_hold_at_most_the_maximum_number_of_ops(store):
    too_many = [base.Create(records.job_record(f"j{i:03d}")) for i in range(101)]
    with pytest.raises(errors.InvalidRequest, match="100"):
        await store.transact(too_many)
    assert (await store.list(job.Job)).items == []
    written = await store.transact(too_many[: base.MAX_TRANSACTION_OPS])
    assert len(written) == base.MAX_TRANSACTION_OPS
    assert len((await store.list(job.Job, limit=1000)).items) == base.MAX_TRANSACTION_OPS


async def test_an_allocation_and_its_capacity_are_written_together(store):
    """The capacity-accounting use case: a stale PNode read means no allocation either."""
    node = await store.create(records.pnode_record("p1", cpu=1000))
    first = records.allocation_record("mnist", "input", 0, "p1")
    assert first.spec.resources.cpu == records.MILLICPU_PER_SLOT
    charged = records.charged(node, first.spec.resources.cpu)
    await store.transact([base.Create(first), base.Update(charged)])

    second = records.allocation_record("mnist", "input", 1, "p1")
    # `node` was read before the first allocation was charged.
    stale = records.charged(node, second.spec.resources.cpu)
    with pytest.raises(errors.Conflict) as caught:
        await store.transact([base.Create(second), base.Update(stale)])
    assert caught.value.op_index == 1
    with pytest.raises(errors.NotFound):
        await store.get(allocation.Allocation, "mnist.input.1")
    stored = await store.get(pnode.PNode, "p1")
    assert stored.status.allocated.cpu == records.MILLICPU_PER_SLOT
    assert await records.names(store, allocation.Allocation, index=("pnode", "p1")) == [
        "mnist.input.0"
    ]
