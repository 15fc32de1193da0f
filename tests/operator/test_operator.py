"""dcnr-operator end to end: kmock as the Kubernetes API, a real `dcnr-orchestrator serve`
and real agents. The operator runs in-process (`dcnr_operator.main.operate`, what the
console script runs), logging into kmock through a kubeconfig as it would into a cluster.

Two scenarios, each in the order a user lives it (each step starts from the state the
previous one left): a Network CR created, edited, lost behind the operator's back, kept
through a restart of the orchestrator and of the operator, deleted through the finalizer;
and a Job CR training a network, compared with the same job trained by `dcnctl train` on a
second, fresh cluster. An invalid CR is its own test. Each has its own kmock: see
`_job_scenario` and the invalid-CR test for the emulator's limits that makes this necessary.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import grpc
import kmock
import pytest
import yaml

from api.dcnr.v1 import job_pb2, network_pb2, pnode_pb2, pnode_pb2_grpc
from api.resources import job, network
from dcnr_operator import client as client_mod
from dcnr_operator import main as operator_main
from tests.dcnctl.conftest import Dcnctl
from tests.integration import cluster
from tests.support import agents, procs, wait

# About 95 s on 2 shared cores (training, two restarts): above the default 120 s limit
# under contention, so its own limit. Not yet "well under a minute": see the report.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

REPO = agents.REPO
NS = "default"
BASE = f"/apis/dcnr.io/v1/namespaces/{NS}"


@contextlib.asynccontextmanager
async def kubernetes(tmp: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[kmock.Server]:
    """kmock serving the two CRDs' resources and Events; $KUBECONFIG pointing at it."""
    async with kmock.KubernetesEmulator() as api, kmock.Server(api) as server:
        verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
        for plural, kind in (("networks", "Network"), ("jobs", "Job")):
            api.resources[kmock.resource("dcnr.io", "v1", plural)] = kmock.ResourceInfo(
                kind=kind, namespaced=True, verbs=verbs, subresources={"status"}
            )
        # Discovery only: kopf needs the namespaces resource to exist (it lists none).
        api.resources[kmock.resource("", "v1", "namespaces")] = kmock.ResourceInfo(
            kind="Namespace", namespaced=False, verbs={"get", "list", "watch"}
        )
        api.resources[kmock.resource("", "v1", "events")] = kmock.ResourceInfo(
            kind="Event", namespaced=True, verbs={"create", "list"}
        )
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
            "clusters": [{"name": "kmock", "cluster": {"server": str(server.url).rstrip("/")}}],
            "users": [{"name": "kmock", "user": {}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock"}}],
        }  # fmt: skip
        (tmp / "kubeconfig").write_text(yaml.safe_dump(config))
        monkeypatch.setenv("KUBECONFIG", str(tmp / "kubeconfig"))
        yield server


class Operator:
    """dcnr-operator in a task; `restart` stops it (as SIGTERM would) and starts another."""

    def __init__(self, server: str) -> None:
        self.args = operator_main.parser().parse_args(
            ["--server", server, "--insecure", "--resync-seconds", "1", "--namespace", NS]
        )
        self.task: asyncio.Task[None] | None = None
        self.stop_flag = asyncio.Event()

    def start(self) -> None:
        self.stop_flag = asyncio.Event()
        target = operator_main.target(self.args)
        self.task = asyncio.create_task(
            operator_main.operate(self.args, target, stop_flag=self.stop_flag)
        )

    async def stop(self) -> None:
        assert self.task is not None
        self.stop_flag.set()
        await asyncio.wait_for(self.task, 30)

    async def restart(self) -> None:
        await self.stop()
        self.start()


class Kube:
    """The Kubernetes side, as kubectl would see it."""

    def __init__(self, session: aiohttp.ClientSession, op: Operator) -> None:
        self.s = session
        #: The operator serving this kmock (a scenario restarts it).
        self.op = op

    async def create(self, plural: str, body: dict[str, Any]) -> None:
        # kmock keeps no resourceVersion of its own; kopf's finalizer patch tests for one.
        body["metadata"].setdefault("resourceVersion", "1")
        async with self.s.post(f"{BASE}/{plural}", json=body) as r:
            assert r.status < 300, await r.text()

    async def get(self, plural: str, name: str) -> dict[str, Any] | None:
        async with self.s.get(f"{BASE}/{plural}/{name}") as r:
            if r.status == 404:
                return None
            assert r.status < 300, await r.text()
            found: dict[str, Any] = await r.json()
            return found

    async def patch(self, plural: str, name: str, body: dict[str, Any]) -> None:
        headers = {"Content-Type": "application/merge-patch+json"}
        async with self.s.patch(f"{BASE}/{plural}/{name}", json=body, headers=headers) as r:
            assert r.status < 300, await r.text()

    async def delete(self, plural: str, name: str) -> None:
        async with self.s.delete(f"{BASE}/{plural}/{name}") as r:
            assert r.status < 300, await r.text()

    async def events(self) -> list[dict[str, Any]]:
        async with self.s.get(f"/api/v1/namespaces/{NS}/events") as r:
            assert r.status < 300, await r.text()
            items: list[dict[str, Any]] = (await r.json())["items"]
            return items


class Orchestrator:
    """The orchestrator side, as dcnctl would see it."""

    def __init__(self, address: str) -> None:
        self.c = client_mod.Client(client_mod.Target(server=address, insecure=True))
        self.pnodes = pnode_pb2_grpc.PNodeServiceStub(self.c.channel)

    async def network(self, name: str) -> network.Network | None:
        request = network_pb2.GetNetworkRequest(header=self.c.header(), name=name)
        try:
            reply = await self.c.call(self.c.networks.GetNetwork, request)
        except (client_mod.Refused, grpc.aio.AioRpcError):
            return None
        return network.Network.model_validate_json(reply.document.json)

    async def job(self, name: str) -> job.Job | None:
        request = job_pb2.GetJobRequest(header=self.c.header(), name=name)
        try:
            reply = await self.c.call(self.c.jobs.GetJob, request)
        except (client_mod.Refused, grpc.aio.AioRpcError):
            return None
        return job.Job.model_validate_json(reply.job.json)

    async def ready_pnodes(self) -> int:
        try:
            reply = await self.c.call(
                self.pnodes.ListPNodes, pnode_pb2.ListPNodesRequest(header=self.c.header())
            )
        except grpc.aio.AioRpcError:
            return 0
        return sum(b'"phase":"Ready"' in d.json for d in reply.items)


@contextlib.contextmanager
def orchestrator_on(store: str, listen: str = "127.0.0.1:0") -> Iterator[procs.Served]:
    with procs.orchestrator(store, listen=listen) as served:
        yield served


@contextlib.asynccontextmanager
async def operating(
    served: procs.Served, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Kube]:
    """kmock, a client session on it, and the operator running against `served`."""
    async with (
        kubernetes(tmp_path, monkeypatch) as server,
        aiohttp.ClientSession(base_url=str(server.url)) as session,
    ):
        op = Operator(served.address)
        op.start()
        try:
            yield Kube(session, op)
        finally:
            await op.stop()


def _example() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load((REPO / "examples/digits/network.yaml").read_text())
    doc["metadata"]["namespace"] = NS
    return doc


T = TypeVar("T")
Scenario = Callable[
    [Kube, Orchestrator, Operator, contextlib.ExitStack, procs.Served, str], Awaitable[T]
]


async def _run(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    scenario: Scenario[T],
    agent_flags: tuple[str, ...] = (),
) -> T:
    """A real serve, 3 real agents (given `agent_flags`), kmock, the operator in-process; then
    `scenario`, whose result this returns once all of them have stopped."""
    await asyncio.to_thread(tmp_path.mkdir, parents=True, exist_ok=True)
    store = f"sqlite:///{tmp_path / 'state.db'}"
    stack = contextlib.ExitStack()
    served = stack.enter_context(orchestrator_on(store))
    try:
        stack.enter_context(agents.agents(served.address, tmp_path, 3, cpu="2", memory="2Gi",
                                          extra=agent_flags))  # fmt: skip
        orch = Orchestrator(served.address)
        await wait.until(orch.ready_pnodes, within=30, what="3 ready pnodes",
                         accept=lambda n: n == 3)  # fmt: skip
        try:
            async with operating(served, tmp_path, monkeypatch) as kube:
                return await scenario(kube, orch, kube.op, stack, served, store)
        finally:
            await orch.c.close()
    finally:
        stack.close()


async def test_a_network_cr_lives_its_life_through_the_operator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The agents' own drain deadline (30 s), not the test default (agents.DRAIN_DEADLINE): the
    # restart below stops them while they hold VNodes, and when they left within seconds the
    # operator's restart hung ("Timer 'resync_network' did not exit in time", then no
    # progress until pytest's timeout), seen twice; with the last agent killed after 20 s it
    # passes. An operator bug to chase; until then this keeps the scenario as it was.
    await _run(tmp_path, monkeypatch, _network_scenario, ("--drain-deadline", "30"))


#: One job, trained once from a Job CR and once by `dcnctl train`: 6 steps of 256 samples
#: (the example's 1437 rows), seeded. A checkpoint at every step makes the reported loss and
#: accuracy those of the last step alone: with the default interval they are the means over
#: the steps since the last progress write, which a timer (0.5 s) decides, so two equal runs
#: could report means over different steps.
JOB = {"network": "digits", "epochs": 1, "batchSize": 256, "learningRate": 0.1,
       "optimizer": "adam", "checkpointInterval": 1, "seed": 7}  # fmt: skip


async def test_a_job_cr_trains_to_the_accuracy_of_dcnctl_train(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same job, from scratch on two fresh clusters: through a Job CR and the operator
    on one, through `dcnctl train` on the other. Training is deterministic (weights from
    (network, vnode, seed), batches from (seed, epoch), one replica per VNode so no gradient
    is summed in an order that varies): the two must agree exactly, not within a tolerance."""
    by_cr = await _run(tmp_path / "operator", monkeypatch, _job_scenario)
    by_cli = await asyncio.to_thread(_train_with_dcnctl, tmp_path / "dcnctl")
    assert by_cli["phase"] == "Succeeded", by_cli
    assert (by_cli["step"], by_cli["epoch"]) == (by_cr["step"], by_cr["epoch"]) == (6, 1)
    assert by_cli["accuracy"] is not None
    assert (by_cr["loss"], by_cr["accuracy"]) == (by_cli["loss"], by_cli["accuracy"])


async def _cr_ready(kube: Kube, orch: Orchestrator, name: str) -> tuple[dict[str, Any], Any]:
    async def both() -> tuple[dict[str, Any] | None, network.Network | None]:
        return await kube.get("networks", name), await orch.network(name)

    def ready(pair: tuple[dict[str, Any] | None, network.Network | None]) -> bool:
        cr, net = pair
        if cr is None or net is None or net.status.phase != "Ready":
            return False
        s = net.status
        counts = f"{s.ready_slots}/{s.desired_slots}"
        status = cr.get("status", {})
        return bool(status.get("phase") == "Ready" and status.get("ready") == counts)

    cr, net = await wait.until(both, within=30, what=f"{name} Ready in the CR", accept=ready)
    assert cr is not None
    return cr, net


async def _network_scenario(
    kube: Kube,
    orch: Orchestrator,
    op: Operator,
    stack: contextlib.ExitStack,
    served: procs.Served,
    store: str,
) -> None:
    """Create, edit, lose behind its back, restart both sides, delete: one Network CR."""
    # Creating the CR places the network; the CR shows what `dcnctl get networks` shows.
    await kube.create("networks", _example())
    cr, net = await _cr_ready(kube, orch, "digits")
    assert cr["status"]["ready"] == "6/6"
    assert net.status.desired_slots == 6
    assert "dcnr.io/finalizer" in cr["metadata"]["finalizers"]

    # Editing the CR reconfigures the network.
    vnodes = cr["spec"]["vnodes"]
    vnodes[2]["replicas"] = 2
    await kube.patch("networks", "digits", {"spec": {"vnodes": vnodes}})
    await wait.until(lambda: kube.get("networks", "digits"), within=30,
                     what="7 slots ready in the CR",
                     accept=lambda cr: cr and cr.get("status", {}).get("ready") == "7/7",
                     )  # fmt: skip
    net = await orch.network("digits")
    assert net is not None
    assert net.vnode("fc1") is not None
    assert net.vnode("fc1").replicas == 2  # type: ignore[union-attr]

    # Deleted behind the operator's back: the re-sync applies it again from the CR.
    gone = network_pb2.DeleteNetworkRequest(header=orch.c.header(), name="digits")
    await orch.c.call(orch.c.networks.DeleteNetwork, gone)
    await wait.until(lambda: orch.network("digits"), within=30, what="digits re-applied",
                     accept=lambda n: n is not None and n.metadata.deletion_timestamp is None
                     and n.vnode("fc1") is not None)  # fmt: skip
    await _cr_ready(kube, orch, "digits")

    # An orchestrator restart (same store, same address) and an operator restart lose nothing.
    stack.close()
    stack.enter_context(orchestrator_on(store, listen=served.address))
    stack.enter_context(agents.agents(served.address, Path(served.log).parent, 3,
                                      cpu="2", memory="2Gi", prefix="again"))  # fmt: skip
    await op.restart()
    await _cr_ready(kube, orch, "digits")

    # Deleting the CR deletes the network, through the finalizer.
    await kube.delete("networks", "digits")
    await wait.until(lambda: orch.network("digits"), within=30, what="digits gone",
                     accept=lambda n: n is None)  # fmt: skip
    await wait.until(lambda: kube.get("networks", "digits"), within=30,
                     what="the CR gone once its finalizer is removed",
                     accept=lambda cr: cr is None)  # fmt: skip


async def _job_scenario(
    kube: Kube,
    orch: Orchestrator,
    op: Operator,
    stack: contextlib.ExitStack,
    served: procs.Served,
    store: str,
) -> dict[str, Any]:
    """A Job CR trains `JOB` to Succeeded; returns the CR's status. The network it trains is
    applied to the orchestrator directly (as dcnctl would), because kmock 0.8 confuses the
    two kinds' objects once both are stored (kopf was seen patching networks/digits-train,
    and reading a Network's spec as a Job's)."""
    api = cluster.Api(served.address)
    try:
        manifest = _example()
        del manifest["metadata"]["namespace"]  # the orchestrator's networks have none
        await api.apply(manifest)
    finally:
        await api.close()
    await wait.until(lambda: orch.network("digits"), within=30, what="digits Ready",
                     accept=lambda n: n is not None and n.status.phase == "Ready")  # fmt: skip
    await kube.create("jobs", {
        "apiVersion": "dcnr.io/v1", "kind": "Job",
        "metadata": {"name": "digits-train", "namespace": NS},
        "spec": dict(JOB),
    })  # fmt: skip
    cr_job = await wait.until(lambda: kube.get("jobs", "digits-train"), within=45,
                              what="the Job CR Succeeded",
                              accept=lambda j: j and j.get("status", {}).get("phase")
                              == "Succeeded")  # fmt: skip
    assert cr_job is not None
    # The CR mirrors the orchestrator's job, as dcnctl shows it.
    run = await orch.job("digits-train")
    assert run is not None
    assert run.status.accuracy is not None
    assert cr_job["status"]["accuracy"] == run.status.accuracy
    assert cr_job["status"]["loss"] == run.status.loss
    assert cr_job["status"]["epochs"] == "1/1"
    assert cr_job["status"]["steps"] == "6/6"
    status: dict[str, Any] = cr_job["status"]
    return status


def _train_with_dcnctl(root: Path) -> dict[str, Any]:
    """`JOB` trained by `dcnctl train` on a fresh orchestrator and 3 agents of its own;
    returns the job's status as `dcnctl get job -o json` shows it."""
    root.mkdir(parents=True, exist_ok=True)
    with (
        procs.orchestrator(f"sqlite:///{root / 'state.db'}") as served,
        agents.agents(served.address, root, 3, cpu="2", memory="2Gi"),
    ):
        cli = Dcnctl(root / "config", served.address, insecure=True)
        cli("apply", "-f", str(REPO / "examples/digits/network.yaml"))
        cli.until("digits Ready", lambda b: b["status"].get("phase") == "Ready",
                  "get", "network", "digits")  # fmt: skip
        out = cli("train", "digits", "--name", "digits-train", "--epochs", str(JOB["epochs"]),
                  "--batch-size", str(JOB["batchSize"]), "--lr", str(JOB["learningRate"]),
                  "--optimizer", str(JOB["optimizer"]),
                  "--checkpoint-interval", str(JOB["checkpointInterval"]),
                  "--seed", str(JOB["seed"])).stdout  # fmt: skip
        assert "job.dcnr.io/digits-train succeeded" in out, out
        status: dict[str, Any] = cli.json("get", "job", "digits-train")["status"]
        return status


async def test_an_invalid_cr_gets_a_warning_event_naming_the_field(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its own kmock: kmock 0.8 keeps one kopf Event per namespace (no generateName), so the
    Event looked for must be the namespace's first. No agents: the refusal is Apply's."""
    with orchestrator_on(f"sqlite:///{tmp_path / 'state.db'}") as served:
        orch = Orchestrator(served.address)
        try:
            async with operating(served, tmp_path, monkeypatch) as kube:
                bad = _example()
                bad["metadata"]["name"] = "broken"
                bad["spec"]["vnodes"][2]["params"] = {"units": "many"}
                await kube.create("networks", bad)

                def names_field(events: list[dict[str, Any]]) -> bool:
                    return any(
                        e.get("involvedObject", {}).get("name") == "broken"
                        and e.get("type") == "Warning"
                        and "spec.vnodes[2].params.units" in e.get("message", "")
                        for e in events
                    )

                await wait.until(
                    kube.events, within=30, what="a Warning Event naming the field",
                    accept=names_field,
                )  # fmt: skip
                assert await orch.network("broken") is None
        finally:
            await orch.c.close()
