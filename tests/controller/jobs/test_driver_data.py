"""The driver learns its data from the agents, never from a file, and the job's data wins.

Pure: `driver_data.samples` decides on the agents' answers (a rule each). Against the fake
agent over real gRPC: a network whose data ref the orchestrator could not open (relative to
a directory it does not run in) trains, because the agent holding the data describes it;
`spec.data` (`train --data`) overrides the network's ref in the description and in the
sources' Restore, and the run's steps follow its length; data the agent cannot read fails
the job naming the source.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from api.dcnr.v1 import vnode_pb2
from api.resources import job, meta
from api.resources import network as net_model
from controller.jobs import driver_data, driver_plan
from tests.controller.jobs import driver_harness as harness

XS = np.arange(1, 11, dtype=np.float64) / 10  # 10 rows
SPEC = {"epochs": 1, "batch_size": 4, "learning_rate": 0.5, "checkpoint_interval": 4, "seed": 7}


def answer(
    vnode: str = "x", replica: int = 0, *, rows: int | None = 10, fields: tuple[str, ...] = ("x",)
) -> driver_data.Answer:
    described = vnode_pb2.DescribeDataResponse(
        has_field=rows is not None,
        shape=[] if rows is None else [rows, 3],
        dtype="float32",
        fields=list(fields),
        resolved_url="/data/d.npz",
    )
    return driver_data.Answer(vnode, replica, "file://d.npz", "x", described)


# -- pure: the decision on the answers ----------------------------------------------------


def test_agreeing_answers_give_the_number_of_samples() -> None:
    answers = [answer("x", 0), answer("x", 1), answer("y", 0, fields=("x", "y"))]
    assert driver_data.samples(answers, network="lin") == 10


@pytest.mark.parametrize(
    ("answers", "words"),
    [
        ([answer(rows=None, fields=("a", "b"))], ["'x'", "params.field", "'a', 'b'", "/data"]),
        ([answer("x", 0), answer("x", 1, rows=9)], ["x.0: 10", "x.1: 9", "differ"]),
        ([answer("x", 0), answer("y", 0, rows=7)], ["x.0: 10", "y.0: 7"]),
        ([answer(rows=0)], ["no samples"]),
        ([], ["no source"]),
    ],
    ids=["field-missing", "replicas-differ", "sources-differ", "empty", "no-sources"],
)
def test_answers_no_run_can_use_fail_the_job_naming_why(
    answers: list[driver_data.Answer], words: list[str]
) -> None:
    with pytest.raises(driver_plan.JobFailed) as failed:
        driver_data.samples(answers, network="lin")
    for word in words:
        assert word in str(failed.value)


def test_the_job_s_data_wins_over_every_source_s_own() -> None:
    net = harness.network_record("file://mine.npz")
    own = job.Job(metadata=meta.ObjectMeta(name="a"), spec=job.JobSpec(network="lin"))
    given = job.Job(
        metadata=meta.ObjectMeta(name="b"),
        spec=job.JobSpec(network="lin", data=net_model.DataRef(url="file:///other.npz")),
    )
    assert driver_plan.source_data(own, net)["x"].url == "file://mine.npz"
    assert driver_plan.source_data(given, net)["x"].url == "file:///other.npz"


# -- against the fake agent ----------------------------------------------------------------


class World:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp

    async def start(self, data_url: str | None = None) -> None:
        self.store, self.view, self.agent = await harness.cluster(self.tmp, XS)
        if data_url is not None:  # the network's ref: somewhere only the agent knows
            net = await self.store.get(harness.Network, harness.NET)
            net.spec.vnodes[0].data = net_model.DataRef(url=data_url)
            self.view.apply_written([await self.store.update(net)])
        self.orch = harness.Orchestrator(self.store, self.view, self.tmp, "r1")
        await self.orch.start()

    async def run(self, **spec: object) -> job.Job:
        record = job.Job(
            metadata=meta.ObjectMeta(name="fit"),
            spec=job.JobSpec.model_validate({"network": harness.NET, **SPEC, **spec}),
        )
        await self.store.create(record)
        await self.orch.loop.reconcile("fit")
        return await self.orch.until("fit", lambda j: j.status.phase in ("Succeeded", "Failed"))

    async def close(self) -> None:
        await self.orch.close()
        await self.agent.close()
        await self.store.close()


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    it = World(tmp_path)
    try:
        yield it
    finally:
        await it.close()


async def test_data_the_orchestrator_cannot_open_trains_from_the_agents_description(
    world: World,
) -> None:
    # Relative to the agent's workdir, not to wherever the orchestrator runs.
    await world.start("file://datasets/nowhere-near-the-orchestrator.npz")
    done = await world.run()
    assert done.status.phase == "Succeeded", done.status.message
    assert done.status.total_steps == 3  # ceil(10 / 4): the agent's 10 rows
    assert [(d.vnode, d.data.url) for d in world.agent.describes] == [("x", "")]


async def test_the_job_s_data_overrides_the_network_s_and_reaches_the_sources(
    world: World,
) -> None:
    await world.start()
    other = np.linspace(0.5, 2.0, 17)  # 17 rows: distinguishable from the network's 10
    np.savez(world.tmp / "other.npz", x=other)
    url = f"file://{world.tmp}/other.npz"
    done = await world.run(data={"url": url})
    assert done.status.phase == "Succeeded", done.status.message
    assert done.status.total_steps == 5  # ceil(17 / 4)
    assert {d.data.url for d in world.agent.describes} == {url}
    restored = {r.vnode: r.data.url for r in world.agent.restore_requests}
    assert restored == {"x": url, "loss": ""}, "only the source reads data"
    assert max(i for _, _, batch in world.agent.batches for i in batch) >= 10
    expected = harness.reference_w(other, seed=7, epochs=1, batch=4, lr=0.5)
    assert world.agent.w == pytest.approx(expected, rel=1e-12)


async def test_data_the_agent_cannot_read_fails_the_job_naming_the_source(world: World) -> None:
    await world.start()
    done = await world.run(data={"url": f"file://{world.tmp}/missing.npz"})
    assert done.status.phase == "Failed"
    assert "vnode 'x'" in done.status.message
    assert "missing.npz" in done.status.message
    assert world.agent.batches == []
