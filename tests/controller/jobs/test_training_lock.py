"""One training job per network, decided by the store: Train calls racing through two
clients of one store (as two orchestrator replicas) start exactly one job, on both backends.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import job, meta
from controller import errors as faults
from controller.jobs import training_lock
from store import base, dynamodb, sqlite


@pytest.fixture(params=["sqlite", "dynamodb"])
async def clients(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[list[base.Store]]:
    """Two clients on one piece of state: two connections to one SQLite file, or two
    DynamoDB clients on one set of tables."""
    opened: list[base.Store] = []
    if request.param == "sqlite":
        for _ in range(2):
            opened.append(await sqlite.SqliteStore.open(tmp_path / "state.db"))
    else:
        endpoint = request.getfixturevalue("moto_endpoint")
        prefix = f"t{uuid.uuid4().hex[:12]}"
        for _ in range(2):
            dyn = await dynamodb.DynamoStore.open(
                prefix=prefix, region="us-east-1", endpoint=endpoint
            )
            opened.append(dyn)
        await dyn.init_tables()
    try:
        yield opened
    finally:
        for store in opened:
            await store.close()


def _job(name: str) -> job.Job:
    return job.Job(metadata=meta.ObjectMeta(name=name), spec=job.JobSpec(network="digits"))


async def _race(clients: list[base.Store], names: list[str]) -> list[job.Job | BaseException]:
    return await asyncio.gather(
        *(training_lock.create(clients[i % 2], _job(n)) for i, n in enumerate(names)),
        return_exceptions=True,
    )


async def test_racing_trains_on_two_clients_create_one_job(clients) -> None:
    outcomes = await _race(clients, [f"train-{i}" for i in range(6)])
    won = [o for o in outcomes if isinstance(o, job.Job)]
    refused = [o for o in outcomes if isinstance(o, faults.FailedPrecondition)]
    assert len(won) == 1, outcomes
    assert len(refused) == 5, outcomes
    assert {r.reason for r in refused} == {"NetworkBusy"}
    assert all(f"job {won[0].name!r} is Pending" in str(r) for r in refused)
    stored = await base.list_all(clients[0], job.Job)
    assert [j.name for j in stored] == [won[0].name]
    lock = await clients[1].get(job.TrainingLock, "digits")
    assert lock.spec.job == won[0].name


async def test_racing_trains_after_the_holder_ended_take_the_lock_once(clients) -> None:
    first = await training_lock.create(clients[0], _job("train-0"))
    first.status.phase = "Succeeded"
    await clients[0].update(first)
    outcomes = await _race(clients, [f"next-{i}" for i in range(6)])
    won = [o for o in outcomes if isinstance(o, job.Job)]
    assert len(won) == 1, outcomes
    names = sorted(j.name for j in await base.list_all(clients[0], job.Job))
    assert names == sorted(["train-0", won[0].name])
    assert (await clients[0].get(job.TrainingLock, "digits")).spec.job == won[0].name
