"""No livelock with extra replicas (issue 16): a gradient that reaches a replica before that
replica computed the step's forward pass is held until it has, so training with three
replicas of a VNode runs at the DEFAULT checkpoint interval (50, longer than the whole run
here: one rollback replays everything) with real agent processes on the digits network,
and ends with exactly the single-process reference's weights:

- `replicas: 3` on each VNode in turn, and on all of them, honest agents, no faults: one
  attempt;
- `replicas: 3` on fc2 with one fc2 replica's agent running `tests.support.late_forward`,
  which takes each Forward only after that step's gradient: the ordering that livelocked,
  made certain rather than left to timing (with the agent from before the fix this run sat
  at checkpoint step 0 after 12 attempts, each timing out at step 1);
- `replicas: 3` on fc2 with one fc2 replica's agent slowed by SIGSTOP/SIGCONT bursts, each
  held until the loss has taken the other two replicas' outputs and so sent the stopped
  replica its gradient;
- one always-lying agent under `validation: replicas`: its disputes add tiebreaker
  replicas (three results of a VNode), which the issue saw stall every attempt.

One orchestrator and four honest agents serve every test of the module (each its own
network; the fc2-only tests add three agents with room for one fc2 replica and nothing
else); the liar test has a cluster of its own (see there). One epoch (23 steps) is enough.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest
import yaml

from agent.runtime import reference
from api.dcnr.v1 import network_pb2
from api.resources import network as network_model
from tests.integration import cluster
from tests.integration import test_training as training
from tests.support import agents, metrics, procs, wait
from tests.support import liar as liar_mod

pytestmark = pytest.mark.slow

EPOCHS = 1
VNODES = ("x", "y", "fc1", "act1", "fc2", "loss")
FLEET = 4
#: Honest agents hold the digits data set, so the sources go to them, not to the liar.
HONEST = ("--dataset", "digits=file://examples/digits/data.npz", "--metrics-listen", "127.0.0.1:0")
LIAR_COMMAND = (sys.executable, "-m", "tests.support.liar", "--lie-fraction", "1")
#: Agents with room for one fc2 replica of `_dedicated_fc2` and nothing else.
#: Per test (killed hosts look Ready until their lease ends: the next test's must differ).
FC2_HOST_MEMORY = {"fc2-late": "3Gi", "fc2-slowed": "5Gi"}
FINAL = ("Succeeded", "Failed", "Cancelled")
LATE_COMMAND = (sys.executable, "-m", "tests.support.late_forward", "--late-vnode", "fc2")


class Cluster(NamedTuple):
    address: str
    store_url: str
    fleet: list[agents.Agent]
    root: Path


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("livelock")
    store_url = f"sqlite:///{root / 'state.db'}"
    with (
        procs.orchestrator(store_url, log=root / "orchestrator.log") as orchestrator,
        agents.agents(
            orchestrator.address, root, FLEET, prefix="honest", cpu="4", memory="2Gi", extra=HONEST
        ) as fleet,
    ):
        try:
            yield Cluster(orchestrator.address, store_url, fleet, root)
        finally:
            _kill(fleet)


def _kill(fleet: list[agents.Agent]) -> None:
    """Teardown by SIGKILL, as test_liars does: a graceful leave is not what these tests
    are about, and a leaving agent the orchestrator fences meanwhile re-registers instead
    of leaving (seen on main after agent-resilience) and waits out `procs.stop`'s 20 s."""
    for agent in fleet:
        if agent.proc.poll() is None:
            agent.kill()


_EXPECTED: dict[str, dict[str, dict[str, np.ndarray]]] = {}


def expected(network: str) -> dict[str, dict[str, np.ndarray]]:
    """The single-process reference's weights after EPOCHS epochs of digits named
    `network` (the name seeds the initial weights), computed once per name."""
    if network not in _EXPECTED:
        manifest = yaml.safe_load(training.MANIFEST.read_text())
        manifest["metadata"]["name"] = network
        single = reference.Reference(
            network_model.Network.model_validate(manifest),
            seed=training.SEED,
            optimizer=training.OPTIMIZER,
            learning_rate=training.LEARNING_RATE,
            workdir=agents.REPO,
        )
        rows = len(training.DATA["y_train"])
        for epoch in range(EPOCHS):
            for indices in reference.batches(training.SEED, epoch, rows, training.BATCH):
                single.train_step(indices)
        _EXPECTED[network] = single.params
    return _EXPECTED[network]


def _manifest(name: str, *, replicas: dict[str, int], validation: str = "") -> dict[str, Any]:
    manifest: dict[str, Any] = yaml.safe_load(training.MANIFEST.read_text())
    manifest["metadata"]["name"] = name
    for vnode in manifest["spec"]["vnodes"]:
        if vnode["name"] in replicas:
            vnode["replicas"] = replicas[vnode["name"]]
    if validation:
        manifest["spec"]["validation"] = validation
    return manifest


@contextlib.asynccontextmanager
async def _clients(address: str) -> Any:
    api, jobs = cluster.Api(address), training.Jobs(address)
    try:
        yield api, jobs
    finally:
        await api.close()
        await jobs.channel.close(None)


def _check_weights(job: Any) -> None:
    """The run's final checkpoint holds exactly the reference's weights (so the same
    held-out accuracy as an undisturbed run, and then some)."""
    assert job.status.checkpoint_step == job.status.total_steps
    trained = training._final_params(job)
    for vnode, params in expected(job.spec.network).items():
        for name, value in params.items():
            np.testing.assert_allclose(
                trained[vnode][name], value, rtol=1e-6, atol=1e-9, err_msg=vnode
            )


async def _train(
    address: str, manifest: dict[str, Any], counts: dict[str, int]
) -> tuple[dict[str, list[tuple[str, int]]], str]:
    """Apply `manifest`, wait until every replica resolves, start a job; returns the
    placement and the job's name."""
    name = manifest["metadata"]["name"]
    async with _clients(address) as (api, jobs):
        await api.apply(manifest)
        _, placed = await api.wait_resolvable(name, counts, within=60)
        await jobs.train(name, name, epochs=EPOCHS)
    return placed, name


async def _finish(address: str, name: str, within: float) -> Any:
    async with _clients(address) as (_, jobs):
        return await jobs.wait(name, phase="Succeeded", within=within)


def _counts(replicas: dict[str, int]) -> dict[str, int]:
    return {v: replicas.get(v, 1) for v in VNODES}


@pytest.mark.parametrize("tripled", [*VNODES, "every-vnode"])
@pytest.mark.timeout(240)
async def test_three_replicas_train_in_one_attempt_to_the_reference_weights(
    served: Cluster, tripled: str
) -> None:
    """Each VNode in turn with 3 replicas, then all of them."""
    replicas = dict.fromkeys(VNODES if tripled == "every-vnode" else (tripled,), 3)
    name = f"digits-{tripled}"
    _, job_name = await _train(
        served.address, _manifest(name, replicas=replicas), _counts(replicas)
    )
    try:
        job = await _finish(served.address, job_name, within=150)
    finally:
        await _delete(served.address, name)
    print(f"\n{name}: attempts {job.status.attempt}, {job.status.total_steps} steps")
    _check_weights(job)
    # Honest agents and no fault: nothing may have rolled back.
    assert job.status.attempt == 1, job.status.message


def _forwards(port: int) -> float:
    return metrics.by_label(metrics.scrape(port), "dcnr_agent_messages_total", "direction").get(
        "forward", 0.0
    )


def _dedicated_fc2(name: str, memory: str) -> dict[str, Any]:
    """Digits with 3 replicas of fc2, whose memory request fills a fc2 host: so each
    replica sits alone on one of those, and stopping or delaying it touches nothing else."""
    manifest = _manifest(name, replicas={"fc2": 3})
    for vnode in manifest["spec"]["vnodes"]:
        if vnode["name"] == "fc2":
            vnode["resources"]["memory"] = memory
    return manifest


async def _delete(address: str, network: str) -> None:
    """Delete `network`, so its fc2 replicas do not wait for the next test's fc2 host
    agents (and take their room) once this test's have left."""
    async with _clients(address) as (api, _):
        await api.networks.DeleteNetwork(
            network_pb2.DeleteNetworkRequest(header=cluster.HEADER, name=network), timeout=30
        )


@contextlib.contextmanager
def _fc2_hosts(
    served: Cluster, prefix: str, *, late_log: Path | None = None
) -> Iterator[list[agents.Agent]]:
    """Three agents with room for one fc2 replica of `_dedicated_fc2(..., memory)` and
    nothing else (`FC2_HOST_MEMORY[prefix]`); with `late_log`, the first runs
    `tests.support.late_forward` (its Forwards to fc2 wait for the step's Backward)."""
    late = () if late_log is None else (*LATE_COMMAND, "--late-log", str(late_log))
    extra = (*HONEST, "--memory", FC2_HOST_MEMORY[prefix])
    with (
        agents.agents(
            served.address, served.root, 1, prefix=f"{prefix}-late" if late else f"{prefix}-first",
            cpu="1", extra=extra, command=late,
        ) as first,
        agents.agents(
            served.address, served.root, 2, prefix=prefix, cpu="1", extra=extra
        ) as others,
    ):  # fmt: skip
        try:
            yield [*first, *others]
        finally:
            _kill([*first, *others])


@pytest.mark.timeout(240)
async def test_a_forward_that_comes_after_its_gradient_is_still_applied(served: Cluster) -> None:
    """The race made certain (`tests.support.late_forward`): one fc2 replica handles every
    step's Forward only after the loss, fed by the other two, sent it the gradient."""
    log = served.root / "late.log"
    with _fc2_hosts(served, "fc2-late", late_log=log) as hosts:
        placed, name = await _train(
            served.address,
            _dedicated_fc2("digits-late", FC2_HOST_MEMORY["fc2-late"]),
            _counts({"fc2": 3}),
        )
        try:
            assert {p for p, _ in placed["fc2"]} == {a.name for a in hosts}, placed
            job = await _finish(served.address, name, within=150)
        finally:
            await _delete(served.address, name)
    orders = log.read_text().split()[1::2]
    print(f"\nlate: {orders.count('backward-first')} of {len(orders)} forwards came after "
          f"their gradient, attempts {job.status.attempt}")  # fmt: skip
    assert orders.count("backward-first") >= job.status.total_steps // 2, orders
    _check_weights(job)
    assert job.status.attempt == 1, job.status.message


@pytest.mark.timeout(240)
async def test_a_replica_slowed_by_sigstop_bursts_does_not_stall_training(
    served: Cluster,
) -> None:
    """One fc2 replica's agent stopped, each time until the loss has taken the other two
    replicas' outputs (and so sent the gradient to all three), then continued."""
    with _fc2_hosts(served, "fc2-slowed") as hosts:
        placed, name = await _train(
            served.address,
            _dedicated_fc2("digits-slowed", FC2_HOST_MEMORY["fc2-slowed"]),
            _counts({"fc2": 3}),
        )
        try:
            job = await _slow_down(served, hosts, placed, name)
        finally:
            await _delete(served.address, name)
    _check_weights(job)


async def _slow_down(
    served: Cluster,
    hosts: list[agents.Agent],
    placed: dict[str, list[tuple[str, int]]],
    name: str,
) -> Any:
    """SIGSTOP bursts on the first fc2 host until five raced (or the job ended); the job."""
    assert {p for p, _ in placed["fc2"]} == {a.name for a in hosts}, placed
    victim = hosts[0]
    loss_host = next(a for a in served.fleet if a.name == placed["loss"][0][0])
    assert loss_host.metrics_port is not None
    port = loss_host.metrics_port
    async with _clients(served.address) as (_, jobs):
        raced = 0
        while raced < 5 and (await jobs.get(name)).status.phase not in FINAL:
            before = _forwards(port)
            victim.proc.send_signal(signal.SIGSTOP)
            try:
                # y and the two running fc2 replicas: the loss decided and sent back.
                seen = await _poll(lambda b=before: _forwards(port) >= b + 3, within=3)
            finally:
                victim.proc.send_signal(signal.SIGCONT)
            raced += seen
            resumed = _forwards(port)

            async def moved_on(r: float = resumed) -> bool:
                """The next step reached the loss, or there is none."""
                return _forwards(port) > r + 3 or (await jobs.get(name)).status.phase in FINAL

            await _poll(moved_on, within=15)
        job = await jobs.wait(name, phase="Succeeded", within=150)
    print(f"\nslowed: {raced} bursts stopped the replica while the loss sent it a gradient, "
          f"attempts {job.status.attempt}")  # fmt: skip
    assert raced >= 1, "no burst stopped the replica while the loss sent it a gradient"
    return job


async def _poll(condition: Any, *, within: float) -> bool:
    """Whether `condition()` held within `within` seconds (polled; no failure when not)."""
    try:
        await wait.until(condition, within=within, what="condition", every=0.02)
    except AssertionError:
        return False
    return True


@pytest.mark.timeout(300)
async def test_a_liar_under_validation_replicas_trains_to_the_reference_weights(
    tmp_path: Path,
) -> None:
    """A cluster of its own: on the module's, the honest agents have earned trust by now
    and the trust scorer would keep the newcomer liar from holding anything."""
    lies = tmp_path / "liar" / "liar-0" / "lies.log"
    command = (*LIAR_COMMAND, "--lie-mode", "slight", "--lie-log", str(lies))
    manifest = _manifest("digits-liar", replicas={}, validation="replicas")
    with (
        procs.orchestrator(f"sqlite:///{tmp_path / 'state.db'}") as orchestrator,
        agents.agents(orchestrator.address, tmp_path, 3, prefix="honest", extra=HONEST) as honest,
        agents.agents(
            orchestrator.address, lies.parent.parent, 1, prefix="liar", cpu="8", memory="8Gi",
            command=command, extra=HONEST,
        ) as liar,
    ):  # fmt: skip
        placed, name = await _train(orchestrator.address, manifest, {v: 2 for v in _counts({})})
        held = [v for v in VNODES[2:] if any(p == "liar-0" for p, _ in placed[v])]
        try:
            assert held, f"the liar holds no VNode with float outputs: {placed}"
            job = await _finish(orchestrator.address, name, within=240)
        finally:
            _kill([*liar, *honest])
    told = liar_mod.lies_told(lies)
    print(f"\nliar: attempts {job.status.attempt}, {told} lies told, held {held}")
    assert told, "the liar never lied"
    _check_weights(job)
