"""Training and inference end to end: one orchestrator, three real `dcnr-agent` processes,
the digits example.

- Training reaches ≥ 95 % held-out accuracy.
- Inference through the orchestrator equals a single-process numpy forward pass with the
  same weights (the run's final checkpoint), to 1e-6.
- The same training run with one agent SIGKILLed in the middle completes, and its final
  accuracy is within 1 point of the undisturbed run.
- A VNode re-placed after training (its agent died) answers with the trained weights.
- Pipelined training (micro_batches 4, GPipe-style) ends with the weights of the same run
  unpipelined, and of the single-process reference, to rtol 1e-6.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest
import yaml
from grpc import aio

from agent.runtime import reference, state
from api import tensors
from api.dcnr.v1 import job_pb2, job_pb2_grpc
from api.resources import job as job_model
from api.resources import network as network_model
from tests.integration import cluster
from tests.support import agents, procs, wait

pytestmark = pytest.mark.slow

MANIFEST = agents.REPO / "examples" / "digits" / "network.yaml"
DATA = np.load(agents.REPO / "examples" / "digits" / "data.npz")
#: Settings the single-process reference reaches 96 % with (agent/runtime tests).
EPOCHS, BATCH, OPTIMIZER, LEARNING_RATE, SEED = 15, 64, "adam", 0.01, 1
STEPS = EPOCHS * -(-len(DATA["y_train"]) // BATCH)


class Jobs:
    def __init__(self, address: str, *, channel: aio.Channel | None = None) -> None:
        """`channel`: one already set up (TLS, call credentials); plaintext without."""
        self.channel = channel or aio.insecure_channel(address)
        self.stub = job_pb2_grpc.JobServiceStub(self.channel)

    async def train(
        self, name: str, network: str, *, epochs: int = EPOCHS, micro_batches: int = 0
    ) -> None:
        await self.stub.Train(
            job_pb2.TrainRequest(
                header=cluster.HEADER,
                name=name,
                network=network,
                epochs=epochs,
                batch_size=BATCH,
                optimizer=OPTIMIZER,
                learning_rate=LEARNING_RATE,
                seed=SEED,
                checkpoint_interval=50,
                micro_batches=micro_batches,
            ),
            timeout=30,
        )

    async def get(self, name: str) -> job_model.Job:
        reply = await self.stub.GetJob(
            job_pb2.GetJobRequest(header=cluster.HEADER, name=name), timeout=10
        )
        return job_model.Job.model_validate_json(reply.job.json)

    async def wait(self, name: str, *, phase: str, within: float, step: int = 0) -> job_model.Job:
        """Poll until the job is in `phase` (and past `step`); fail at once on a final
        phase that is not the one awaited."""

        def reached(job: job_model.Job) -> bool:
            return job.status.phase == phase and job.status.step >= step

        async def look() -> job_model.Job:
            job = await self.get(name)
            if not reached(job) and job.status.phase in ("Failed", "Cancelled", "Succeeded"):
                raise AssertionError(f"job {name} ended {job.status.phase}: {job.status.message}")
            return job

        return await wait.until(
            look, within=within, what=f"job {name} {phase} at step >= {step}", accept=reached,
            every=0.1,
        )  # fmt: skip

    async def infer(self, network: str, x: np.ndarray) -> np.ndarray:
        reply = await self.stub.Infer(
            job_pb2.InferRequest(
                header=cluster.HEADER,
                network=network,
                tensors=job_pb2.NamedTensors(tensors={"x": tensors.encode(x)}),
            ),
            timeout=60,
        )
        return tensors.decode(reply.outputs["loss"])


def _final_params(job: job_model.Job) -> dict[str, dict[str, np.ndarray]]:
    """Each VNode's parameters from the job's last checkpoint (what the agents hold)."""
    params: dict[str, dict[str, np.ndarray]] = {}
    for allocation, blob in job.status.checkpoint_blobs.items():
        if not blob:
            continue
        path = Path(urlsplit(blob.split("#", 1)[0]).path)
        vnode = allocation.split(".")[1]
        params[vnode], _, step = state.from_bytes(path.read_bytes())
        assert step == job.status.checkpoint_step
    return params


def _accuracy(probabilities: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == DATA["y_test"]))


async def test_train_infer_and_survive_an_agent_kill(tmp_path: Path) -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    with (
        procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}") as served,
        agents.agents(served.address, tmp_path, 3, cpu="2", memory="2Gi") as fleet,
    ):
        api, jobs = cluster.Api(served.address), Jobs(served.address)
        try:
            await api.apply(manifest)
            every = {v.name: 1 for v in network.spec.vnodes}
            await api.wait_resolvable(network.name, every, within=60)

            # Undisturbed.
            await jobs.train("calm", network.name)
            calm = await jobs.wait("calm", phase="Succeeded", within=240)
            assert calm.status.step == STEPS
            assert calm.status.checkpoint_step == STEPS
            probabilities = await jobs.infer(network.name, DATA["x_test"])
            calm_accuracy = _accuracy(probabilities)
            print(f"\nundisturbed: held-out accuracy {calm_accuracy:.4f} after {STEPS} steps")
            assert calm_accuracy >= 0.95

            # The same weights in one process give the same answers.
            single = reference.Reference(
                network,
                seed=SEED,
                optimizer=OPTIMIZER,
                learning_rate=LEARNING_RATE,
                workdir=agents.REPO,
            )
            single.params = _final_params(calm)
            expected = single.infer({"x": DATA["x_test"]})["loss"]
            np.testing.assert_allclose(probabilities, expected, rtol=0, atol=1e-6)

            # Again, killing the agent that hosts most VNodes in the middle of the run.
            await jobs.train("stormy", network.name)
            await jobs.wait("stormy", phase="Running", within=120, step=STEPS // 3)
            _, placed = await api.wait_resolvable(network.name, every, within=10)
            busiest, _ = Counter(eps[0][0] for eps in placed.values()).most_common(1)[0]
            victim = next(a for a in fleet if a.name == busiest)
            victim.kill()
            stormy = await jobs.wait("stormy", phase="Succeeded", within=300)
            stormy_accuracy = _accuracy(await jobs.infer(network.name, DATA["x_test"]))
            print(
                f"with {busiest} killed at step ≥ {STEPS // 3}: accuracy {stormy_accuracy:.4f}"
                f" (attempts: {stormy.status.attempt})"
            )
            assert stormy.status.attempt > 1, "the kill never forced a rollback"
            assert abs(stormy_accuracy - calm_accuracy) <= 0.01
            _, now = await api.wait_resolvable(network.name, every, within=10, avoid=busiest)
            assert all(eps[0][0] != busiest for eps in now.values())

            # After training: the agent holding fc1's trained weights dies. Its VNodes are
            # re-placed empty; inference restores them from the run's final checkpoint.
            before = await jobs.infer(network.name, DATA["x_test"])
            holder = now["fc1"][0][0]
            next(a for a in fleet if a.name == holder).kill()
            await api.wait_resolvable(network.name, every, within=30, avoid=holder)
            after = await jobs.infer(network.name, DATA["x_test"])
            np.testing.assert_allclose(after, before, rtol=0, atol=1e-6)
            stormy = await jobs.get("stormy")
            assert stormy.status.checkpoint_epochs["digits.fc1.0"] > now["fc1"][0][1]
        finally:
            await api.close()
            await jobs.channel.close(None)


#: Pipelined against unpipelined: three epochs (69 steps) are enough to compare weights.
PIPELINED_EPOCHS = 3


@pytest.mark.parametrize("dtype", ["float32", "float64"])
async def test_pipelined_training_ends_with_the_unpipelined_weights(
    tmp_path: Path, dtype: str
) -> None:
    """The digits run with each step cut into 4 micro-batches of 16 (an epoch's last batch,
    of 30, into 3 of 10) against the same run as whole batches: the same final weights, and
    both the single-process reference's, to rtol 1e-6.

    With the pixels as the example ships them (float32: activations and gradients are
    rounded to float32 between VNodes) and converted to float64 (every tensor float64, so
    the order of float64 sums is the only difference)."""
    data = tmp_path / "digits.npz"
    np.savez(data, **{k: v.astype(dtype) if k.startswith("x") else v for k, v in DATA.items()})
    manifest = yaml.safe_load(MANIFEST.read_text())
    for vnode in manifest["spec"]["vnodes"]:
        if "data" in vnode:
            vnode["data"] = {"url": f"file://{data}"}
    network = network_model.Network.model_validate(manifest)
    with (
        procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}") as served,
        agents.agents(served.address, tmp_path, 3, cpu="2", memory="2Gi"),
    ):
        api, jobs = cluster.Api(served.address), Jobs(served.address)
        try:
            await api.apply(manifest)
            every = {v.name: 1 for v in network.spec.vnodes}
            await api.wait_resolvable(network.name, every, within=60)
            trained = {}
            for name, parts in (("whole", 1), ("pipelined", 4)):
                await jobs.train(name, network.name, epochs=PIPELINED_EPOCHS, micro_batches=parts)
                job = await jobs.wait(name, phase="Succeeded", within=240)
                assert job.spec.micro_batches == parts
                trained[name] = _final_params(job)
        finally:
            await api.close()
            await jobs.channel.close(None)
    single = reference.Reference(
        network, seed=SEED, optimizer=OPTIMIZER, learning_rate=LEARNING_RATE,
        workdir=agents.REPO,
    )  # fmt: skip
    rows = len(DATA["y_train"])
    for epoch in range(PIPELINED_EPOCHS):
        for indices in reference.batches(SEED, epoch, rows, BATCH):
            single.train_step(indices)
    stateful = {vnode: params for vnode, params in single.params.items() if params}
    assert trained["whole"].keys() == trained["pipelined"].keys() == stateful.keys()
    for vnode, params in stateful.items():
        for key, value in params.items():
            whole, pipelined = trained["whole"][vnode][key], trained["pipelined"][vnode][key]
            where = f"{vnode}.{key}"
            np.testing.assert_allclose(pipelined, whole, rtol=1e-6, atol=0, err_msg=where)
            np.testing.assert_allclose(pipelined, value, rtol=1e-6, atol=1e-9, err_msg=where)
