"""PNodeService over real gRPC sockets: a grpc.aio server in-process, a real SQLite store,
the in-memory view and the lease keeper, and test PNodes that are plain gRPC clients.

Time on the orchestrator's side is a FakeClock shared by the view, the lease keeper and the
service: a lease expires because the test advances the clock past it, never because real
time passed. The test PNodes are agents: they heartbeat on real time (their cadence is their
own business), and every heartbeat renews at the fake clock's frozen `now`. No test asserts
how long anything took.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Iterator
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import grpc
import pytest
from grpc import aio

from api import identity
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.services import pnode_service
from controller.state import leases as leases_mod
from controller.state import pnode_registry as registry
from controller.state import view as view_mod
from reconcilers import network_apply
from store import base, errors, sqlite
from tests.support import identities, pnode_client, wait

FAST = config_mod.ControlPlaneConfig(
    heartbeat_interval=0.2, lease_duration=1.0, lost_grace=0.5, view_refresh=0.1
)
HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="test")


@dataclasses.dataclass
class Plane:
    address: str
    store: base.Store
    view: view_mod.View
    clock: clock_mod.FakeClock
    stub: pnode_pb2_grpc.PNodeServiceAsyncStub
    clients: list[pnode_client.TestPNode]
    #: (method, reason) of every call the service refused (`on_refused`).
    refused: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    def pnode(self, name: str = "", **kwargs) -> pnode_client.TestPNode:
        client = pnode_client.TestPNode(self.address, name, **kwargs)
        self.clients.append(client)
        return client


@pytest.fixture
async def plane(tmp_path):
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    view = view_mod.View(store, clock, config=FAST)
    await view.refresh()
    view.start()
    keeper = leases_mod.LeaseKeeper(store, clock, view=view, config=FAST)
    keeper.start()
    refused: list[tuple[str, str]] = []
    service = pnode_service.PNodeService(
        store=store,
        view=view,
        clock=clock,
        config=FAST,
        leases=keeper,
        replica_id="replica-t",
        on_refused=lambda method, reason: refused.append((method, reason)),
        authority=identities.authority(),
    )
    server = aio.server()
    pnode_pb2_grpc.add_PNodeServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    stub = pnode_pb2_grpc.PNodeServiceStub(channel)
    result = Plane(address, store, view, clock, stub, [], refused)
    yield result
    for client in result.clients:
        await client.close()
    await channel.close(None)
    await server.stop(None)
    await keeper.stop()
    await view.stop()
    await store.close()


def bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),) if credential else ()


T = TypeVar("T")


async def advance_until(
    clock: clock_mod.FakeClock, call: Awaitable[T], *, step: float, within: float = 10.0
) -> T:
    """The result of `call` (a gRPC read: real I/O), driving the fake clock `step` seconds at
    a time until it arrives. The server side may not have parked on the clock yet when the
    test first advances, so one big advance could land before it; steps cannot. Between
    steps the test waits only for the I/O a step set off; `within` bounds that real wait."""
    pending = asyncio.ensure_future(call)
    deadline = time.monotonic() + within
    while True:
        done, _ = await asyncio.wait({pending}, timeout=0.05)
        if done:
            return pending.result()
        assert time.monotonic() < deadline, f"no reply within {within}s of real time"
        await clock.advance(step)


async def status_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    error = caught.value
    return error.code(), error.details() or ""


NETWORK = network.Network.model_validate(
    {
        "metadata": {"name": "net"},
        "spec": {
            "vnodes": [
                {"name": "a", "kind": "dense", "params": {"units": 3, "big": 2**60}},
                {"name": "b", "kind": "relu", "inputs": ["a"]},
                *({"name": f"c{i}", "kind": "dense", "inputs": ["a"]} for i in range(5)),
            ]
        },
    }
)


async def place(plane: Plane, pnode_name: str, vnode: str = "a", replica: int = 0):
    """What the network loop does: the allocation and its PNode's accounting, in one
    transaction, written through the view."""
    if "net" not in plane.view.networks:
        plane.view.apply_written([await plane.store.create(NETWORK)])
    node = await plane.store.get(pnode.PNode, pnode_name)
    alloc = allocation.Allocation(
        metadata=meta.ObjectMeta(name=allocation.slot_name("net", vnode, replica)),
        spec=allocation.AllocationSpec(
            network="net",
            vnode=vnode,
            replica=replica,
            pnode=pnode_name,
            epoch=1,
            pnode_incarnation=node.status.incarnation,
        ),
    )
    node = network_apply.charged(node, add=alloc.spec.resources, gained=[alloc])  # as placed
    written = await plane.store.transact([base.Create(alloc), base.Update(node)])
    plane.view.apply_written(written)
    return written


# -- registration and credentials ------------------------------------------------------------


async def test_register_issues_a_credential_that_heartbeats_with(plane) -> None:
    client = plane.pnode("p1", labels={"topology.dcnr.io/zone": "z1"}, datasets=["mnist"])
    reply = await client.register()
    assert (reply.pnode_id, reply.incarnation) == ("p1", 1)
    assert reply.header.served_by == "replica-t"
    assert reply.heartbeat_interval.ToTimedelta().total_seconds() == FAST.heartbeat_interval
    assert reply.lease_duration.ToTimedelta().total_seconds() == FAST.lease_duration
    stored = await plane.store.get(pnode.PNode, "p1")
    assert stored.spec.credential_hash == hashlib.sha256(reply.credential.encode()).hexdigest()
    assert reply.credential not in stored.to_json()
    assert stored.spec.capacity.cpu == 4000  # millicores in, millicores stored
    assert stored.spec.capacity.memory == 8 * 2**30
    assert (stored.status.phase, stored.status.assignments_version) == ("Ready", 1)
    assert stored.metadata.labels == {"topology.dcnr.io/zone": "z1"}

    beat = await client.heartbeat_once()
    assert beat.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    assert beat.HasField("lease_expires_at")
    assert beat.assignment_set_version == 1 * view_mod.GENERATION_SPAN
    assert beat.HasField("assignment_set")
    assert list(beat.assignment_set.assignments) == []
    again = await client.heartbeat_once()
    assert not again.HasField("assignment_set")  # the agent's set is current


async def test_an_empty_name_gets_a_generated_one(plane) -> None:
    reply = await plane.pnode().register()
    assert reply.pnode_id.startswith("pnode-")
    assert len(reply.pnode_id) == len("pnode-") + 8


@pytest.mark.parametrize("credential", ["", "forged-credential"])
async def test_a_missing_or_forged_credential_is_unauthenticated(plane, credential) -> None:
    client = plane.pnode("p1")
    await client.register()
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="p1", incarnation=1)
    code, details = await status_of(plane.stub.Heartbeat(request, metadata=bearer(credential)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert "credential" in details
    assert "p1" not in details  # the same text for any name: see the test below


async def test_a_pnode_cannot_heartbeat_or_watch_for_another(plane) -> None:
    one, two = plane.pnode("p1"), plane.pnode("p2")
    await one.register()
    await two.register()
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="p2", incarnation=1)
    code, _ = await status_of(plane.stub.Heartbeat(request, metadata=bearer(one.credential)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    watch = pnode_pb2.WatchAssignmentsRequest(header=HEADER, pnode_id="p2", incarnation=1)
    stream = plane.stub.WatchAssignments(watch, metadata=bearer(one.credential))
    with pytest.raises(grpc.RpcError) as caught:
        await stream.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_re_registering_needs_the_current_credential(plane) -> None:
    owner = plane.pnode("p1")
    first = await owner.register()
    for credential in ("", "someone-elses"):
        squatter = plane.pnode("p1")
        squatter.credential = credential
        code, details = await status_of(squatter.register())
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert "credential" in details
    second = await owner.register()
    assert second.incarnation == 2
    assert second.credential != first.credential
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="p1", incarnation=2)
    code, _ = await status_of(plane.stub.Heartbeat(request, metadata=bearer(first.credential)))
    assert code == grpc.StatusCode.UNAUTHENTICATED  # the old credential died with it
    assert (await owner.heartbeat_once()).lease_state == pnode_pb2.LEASE_STATE_ACTIVE


async def test_a_register_whose_reply_was_lost_can_be_repeated_with_the_old_credential(
    plane,
) -> None:
    # The soak found it: a Register timed out at the agent after the orchestrator had
    # rotated the credential, and the agent, holding only the old one, was refused its own
    # name for good and exited.
    owner = plane.pnode("p1")
    await owner.register()
    held = owner.credential
    lost = await owner.register()  # the orchestrator answered; the agent never saw it
    assert lost.incarnation == 2
    owner.credential = held
    again = await owner.register()
    assert again.incarnation == 3
    assert again.credential not in (held, lost.credential)
    assert (await owner.heartbeat_once()).lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    # Only the credential the agent last proved stays good, and only for Register: the one
    # of the lost reply (never proven) is refused, and heartbeats need the current one.
    squatter = plane.pnode("p1")
    squatter.credential = lost.credential
    code, _ = await status_of(squatter.register())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="p1", incarnation=3)
    code, _ = await status_of(plane.stub.Heartbeat(request, metadata=bearer(held)))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    # Once the agent registers with its current credential, the old one is gone for good.
    newest = await owner.register()
    assert newest.incarnation == 4
    squatter.credential = held
    code, _ = await status_of(squatter.register())
    assert code == grpc.StatusCode.PERMISSION_DENIED


async def test_a_taken_name_reveals_only_that_and_every_refusal_is_counted(plane) -> None:
    owner = plane.pnode("p1")
    await owner.register()
    squatter = plane.pnode("p1")
    squatter.credential = "forged"
    code, details = await status_of(squatter.register())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert details == (
        "pnode 'p1' is already registered; re-registering it needs its current credential "
        "as 'authorization: Bearer' metadata (an agent that lost its credential registers "
        "under a new name)"
    )  # nothing of the PNode's state, address, capacity, incarnation or work
    for name in ("p1", "nobody"):
        await status_of(
            plane.stub.Heartbeat(
                pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id=name, incarnation=1),
                metadata=bearer("forged"),
            )
        )
        await status_of(
            plane.stub.Deregister(
                pnode_pb2.DeregisterRequest(header=HEADER, pnode_id=name, incarnation=1),
                metadata=bearer("forged"),
            )
        )
    method = "/dcnr.v1.PNodeService/"
    assert plane.refused == [
        (method + "Register", "NameTaken"),
        *[(method + m, "Unauthenticated") for m in ("Heartbeat", "Deregister") * 2],
    ]


@dataclasses.dataclass(frozen=True)
class Bad:
    field: str
    change: dict[str, object]


def _capacity(**kwargs) -> common_pb2.Capacity:
    return common_pb2.Capacity(cpu_millis=1000, memory_bytes=2**30, **kwargs)


BAD_REGISTRATIONS = [
    Bad("name", {"name": "Bad_Name"}),
    Bad("data_plane_address", {"data_plane_address": ""}),
    Bad("data_plane_address", {"data_plane_address": "no-port"}),
    Bad("data_plane_address", {"data_plane_address": ":7100"}),
    Bad("data_plane_address", {"data_plane_address": "host:99999"}),
    Bad("capacity.cpu_millis", {"capacity": common_pb2.Capacity(cpu_millis=-1)}),
    Bad("capacity.memory_bytes", {"capacity": common_pb2.Capacity(memory_bytes=-5)}),
    Bad(
        "capacity.accelerators[0].type",
        {"capacity": _capacity(accelerators=[common_pb2.Accelerator(type="no way", count=1)])},
    ),
    Bad(
        "capacity.accelerators[0].count",
        {"capacity": _capacity(accelerators=[common_pb2.Accelerator(type="a100", count=0)])},
    ),
    Bad("datasets[1]", {"datasets": ["mnist", "Not_A_Label"]}),
    Bad("labels['bad key!']", {"labels": {"bad key!": "v"}}),
    Bad("labels['zone']", {"labels": {"zone": "x" * 64}}),
]


@pytest.mark.parametrize("bad", BAD_REGISTRATIONS, ids=lambda b: f"{b.field}-{b.change}")
async def test_invalid_registrations_name_the_field(plane, bad) -> None:
    fields: dict[str, object] = {
        "header": HEADER,
        "name": "p1",
        "data_plane_address": "10.0.0.1:7100",
        "capacity": _capacity(),
    }
    fields.update(bad.change)
    request = pnode_pb2.RegisterRequest(**fields)  # type: ignore[arg-type]
    code, details = await status_of(plane.stub.Register(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith(f"{bad.field}:"), details
    with pytest.raises(errors.NotFound):
        await plane.store.get(pnode.PNode, "p1")


# -- fencing ---------------------------------------------------------------------------------


async def test_a_stale_incarnation_is_fenced_and_not_renewed(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    await client.register()
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="p1", incarnation=1)
    reply = await plane.stub.Heartbeat(request, metadata=bearer(client.credential))
    assert reply.lease_state == pnode_pb2.LEASE_STATE_FENCED
    assert not reply.HasField("assignment_set")


async def test_an_unknown_pnode_is_unauthenticated(plane) -> None:
    """As a wrong credential is: no answer tells a name that exists from one that does not
    (the agent takes it as a fence and registers again)."""
    request = pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id="nobody", incarnation=1)
    code, details = await status_of(plane.stub.Heartbeat(request, metadata=bearer("anything")))
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert details == registry.UNAUTHENTICATED_MESSAGE


async def _refusal(call: Awaitable[object]) -> tuple[grpc.StatusCode, str | None, object]:
    """Everything a refused call tells its caller: code, message and trailing metadata."""
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    error = caught.value
    return error.code(), error.details(), error.trailing_metadata()


async def _first_message(call: AsyncIterator[T]) -> T | None:
    async for message in call:
        return message
    return None


@pytest.mark.parametrize("credential", ["", "forged", "x" * 43])
async def test_no_answer_tells_an_existing_pnode_name_from_an_unknown_one(
    plane, credential
) -> None:
    """Heartbeat, WatchAssignments and Deregister with a missing or wrong credential answer
    byte for byte the same for a registered PNode as for a name never registered."""
    client = plane.pnode("known")
    await client.register()

    def calls(name: str) -> Iterator[Awaitable[object]]:
        yield plane.stub.Heartbeat(
            pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id=name, incarnation=1),
            metadata=bearer(credential),
        )
        yield _first_message(
            plane.stub.WatchAssignments(
                pnode_pb2.WatchAssignmentsRequest(header=HEADER, pnode_id=name, incarnation=1),
                metadata=bearer(credential),
            )
        )
        yield plane.stub.Deregister(
            pnode_pb2.DeregisterRequest(header=HEADER, pnode_id=name, incarnation=1),
            metadata=bearer(credential),
        )

    for known, unknown in zip(calls("known"), calls("never-registered"), strict=True):
        answer = await _refusal(known)
        assert answer == await _refusal(unknown)
        assert answer[:2] == (grpc.StatusCode.UNAUTHENTICATED, registry.UNAUTHENTICATED_MESSAGE)
    assert await plane.store.get(pnode.PNode, "known")  # the forged Deregister changed nothing


async def test_a_paused_pnode_is_fenced_on_resume_and_comes_back_by_registering(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    client.start()
    await client.wait_until(lambda c: c.heartbeats >= 3)
    assert client.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    client.pause()
    # Every renewal was made at the frozen fake `now`, so one lease later it has expired,
    # and a heartbeat still in flight from before the pause can only be fenced.
    await plane.clock.advance(FAST.lease_duration)
    expiry = plane.view.lease_expiry("p1")
    assert expiry is not None
    assert expiry <= plane.clock.now(), "the paused pnode's lease expires"
    client.resume()
    await client.wait_until(lambda c: c.fenced)
    expiry = plane.view.lease_expiry("p1")
    assert expiry is not None
    assert expiry <= plane.clock.now()  # the fenced heartbeat renewed nothing
    await client.stop()
    reply = await client.register()
    assert reply.incarnation == 2
    assert (await client.heartbeat_once()).lease_state == pnode_pb2.LEASE_STATE_ACTIVE


# -- assignments -----------------------------------------------------------------------------


async def test_a_placed_allocation_reaches_the_agent_by_heartbeat(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    await client.heartbeat_once()
    await place(plane, "p1")
    reply = await client.heartbeat_once()
    assert reply.assignment_set_version == 2 * view_mod.GENERATION_SPAN
    (assignment,) = reply.assignment_set.assignments
    assert (assignment.network, assignment.vnode, assignment.replica) == ("net", "a", 0)
    assert (assignment.epoch, assignment.kind, assignment.allocation) == (1, "dense", "net.a.0")
    assert json.loads(assignment.params_json) == {"units": 3, "big": 2**60}  # exact integers
    assert sorted(assignment.outputs) == ["b", "c0", "c1", "c2", "c3", "c4"]
    assert list(assignment.inputs) == []
    assert assignment.resources.cpu_millis == 100
    assert assignment.resources.memory_bytes == 64 * 2**20
    assert assignment.network_generation == 1
    assert set(client.assignments) == {"net.a.0"}


async def test_watch_assignments_pushes_each_new_set(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    client.start()  # keeps the lease alive
    client.watch()
    await client.wait_until(lambda c: any(src == "watch" for src, *_ in c.arrivals))
    latencies = []
    for i in range(5):
        placed_at = time.monotonic()
        written = await place(plane, "p1", vnode=f"c{i}")
        written_node = written[1]
        assert isinstance(written_node, pnode.PNode)
        version = written_node.status.assignments_version
        await client.wait_for(lambda a, i=i: f"net.c{i}.0" in a)
        await client.wait_until(
            lambda c, v=version: any(src == "watch" and ver >= v for src, _, ver, _ in c.arrivals)
        )
        pushed_at = min(
            at for src, _, ver, at in client.arrivals if src == "watch" and ver >= version
        )
        latencies.append(pushed_at - placed_at)
    print(
        "WatchAssignments delivery latency (placement written → agent received): "
        f"min {min(latencies) * 1000:.1f} ms, median {statistics.median(latencies) * 1000:.1f}"
        f" ms, max {max(latencies) * 1000:.1f} ms over {len(latencies)} placements"
    )
    assert len(client.assignments) == 5


@pytest.mark.parametrize("ending", ["re-registered", "lease-expired"])
async def test_watch_assignments_ends_with_fenced(plane, ending) -> None:
    client = plane.pnode("p1")
    await client.register()
    request = pnode_pb2.WatchAssignmentsRequest(header=HEADER, pnode_id="p1", incarnation=1)
    stream = plane.stub.WatchAssignments(request, metadata=bearer(client.credential))
    first = await stream.read()
    assert first.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    assert first.assignment_set.version == 1 * view_mod.GENERATION_SPAN
    if ending == "re-registered":
        await client.register()
    # lease-expired: nobody heartbeats, and the stream must not renew the lease itself; the
    # stream ends on the clock, when the lease runs out.
    last = await advance_until(plane.clock, stream.read(), step=FAST.heartbeat_interval)
    assert last.lease_state == pnode_pb2.LEASE_STATE_FENCED
    assert not last.HasField("assignment_set")
    assert await stream.read() == aio.EOF  # type: ignore[attr-defined]


# -- admin and deregistration ----------------------------------------------------------------


async def test_documents_never_carry_the_credential_hash(plane) -> None:
    nodes = [plane.pnode(f"p{i}", labels={"zone": z}) for i, z in enumerate(["a", "a", "b"])]
    for node in nodes:
        await node.register()
    await nodes[0].register()  # again: the credential it proved is kept, as a hash, too
    reply = await plane.stub.GetPNode(pnode_pb2.GetPNodeRequest(header=HEADER, name="p0"))
    body = json.loads(reply.pnode.json)
    assert reply.pnode.kind == "PNode"
    assert body["metadata"]["name"] == "p0"
    assert "credentialHash" not in body["spec"]
    assert "previousCredentialHash" not in body["spec"]
    stored = (await plane.store.get(pnode.PNode, "p0")).spec
    assert stored.previous_credential_hash
    for hashed in (stored.credential_hash, stored.previous_credential_hash):
        assert hashed.encode() not in reply.pnode.json

    names, token = [], ""
    for _ in range(5):
        page = await plane.stub.ListPNodes(
            pnode_pb2.ListPNodesRequest(header=HEADER, limit=1, continue_token=token)
        )
        assert len(page.items) <= 1
        for item in page.items:
            assert b"credentialHash" not in item.json
            names.append(json.loads(item.json)["metadata"]["name"])
        token = page.continue_token
        if not token:
            break
    assert sorted(names) == ["p0", "p1", "p2"]
    selected = await plane.stub.ListPNodes(
        pnode_pb2.ListPNodesRequest(header=HEADER, label_selector="zone=a")
    )
    assert sorted(json.loads(i.json)["metadata"]["name"] for i in selected.items) == ["p0", "p1"]
    bad = pnode_pb2.ListPNodesRequest(header=HEADER, label_selector="zone in (a")
    code, details = await status_of(plane.stub.ListPNodes(bad))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("label_selector:")


async def test_cordon_drain_and_uncordon_flip_the_spec_flags(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    await place(plane, "p1")

    def spec_of(document: common_pb2.ResourceDocument) -> dict[str, object]:
        return json.loads(document.json)["spec"]  # type: ignore[no-any-return]

    cordoned = await plane.stub.Cordon(
        pnode_pb2.CordonRequest(header=HEADER, pnode="p1", reason="disk")
    )
    assert spec_of(cordoned.pnode)["unschedulable"] is True
    assert spec_of(cordoned.pnode)["draining"] is False
    beat = await client.heartbeat_once()
    assert (beat.cordoned, beat.draining) == (True, False)

    drained = await plane.stub.Drain(pnode_pb2.DrainRequest(header=HEADER, pnode="p1"))
    assert spec_of(drained.pnode)["draining"] is True
    assert drained.migrating_allocations == 1

    node = await plane.store.get(pnode.PNode, "p1")
    node.status.trust.bugged = True
    node.status.trust.strikes = 4
    await plane.store.update(node)
    uncordoned = await plane.stub.Uncordon(pnode_pb2.UncordonRequest(header=HEADER, pnode="p1"))
    body = json.loads(uncordoned.pnode.json)
    assert (body["spec"]["unschedulable"], body["spec"]["draining"]) == (False, False)
    assert (body["status"]["trust"]["bugged"], body["status"]["trust"]["strikes"]) == (False, 0)
    beat = await client.heartbeat_once()
    assert (beat.cordoned, beat.draining) == (False, False)

    missing = pnode_pb2.CordonRequest(header=HEADER, pnode="nobody")
    code, _ = await status_of(plane.stub.Cordon(missing))
    assert code == grpc.StatusCode.NOT_FOUND


async def test_deregister_removes_an_idle_pnode_and_drains_a_busy_one(plane) -> None:
    idle, busy = plane.pnode("idle"), plane.pnode("busy")
    await idle.register()
    await busy.register()
    await place(plane, "busy")

    def deregister(client: pnode_client.TestPNode):
        request = pnode_pb2.DeregisterRequest(
            header=HEADER, pnode_id=client.name, incarnation=client.incarnation, reason="bye"
        )
        return plane.stub.Deregister(request, metadata=client.metadata())

    assert (await deregister(idle)).deregistered is True
    with pytest.raises(errors.NotFound):
        await plane.store.get(pnode.PNode, "idle")
    code, _ = await status_of(idle.heartbeat_once())  # gone: its credential proves nothing
    assert code == grpc.StatusCode.UNAUTHENTICATED

    assert (await deregister(busy)).deregistered is False
    node = await plane.store.get(pnode.PNode, "busy")
    assert (node.spec.draining, node.spec.unschedulable) == (True, True)
    assert [c.reason for c in node.status.conditions if c.type == "Deregistered"] == [
        "AgentDeregistered"
    ]
    forged = pnode_pb2.DeregisterRequest(header=HEADER, pnode_id="busy", incarnation=1)
    code, _ = await status_of(plane.stub.Deregister(forged, metadata=bearer("forged")))
    assert code == grpc.StatusCode.UNAUTHENTICATED

    await busy.register()  # changed its mind: the leave is undone
    node = await plane.store.get(pnode.PNode, "busy")
    assert (node.spec.draining, node.spec.unschedulable) == (False, False)
    assert all(c.type != "Deregistered" for c in node.status.conditions)


# -- identity (docs/security.md) -------------------------------------------------------------


def _who(certificate_pem: bytes, ca_pem: bytes, now) -> identity.Identity:
    der = identity.certificate_der(certificate_pem)
    return identity.Verifier(ca_pem).identify(der, now)


async def test_register_issues_an_identity_naming_the_pnode_whatever_the_csr_asks(plane) -> None:
    client = plane.pnode("p1")
    request = pnode_pb2.RegisterRequest(
        header=HEADER, name="p1", data_plane_address="10.0.0.1:7100", capacity=_capacity(),
        csr=identity.csr_pem(client.key, "someone-else"),
    )  # fmt: skip
    reply = await plane.stub.Register(request)
    now = plane.clock.now()
    who = _who(reply.certificate, reply.identity_ca, now)
    assert (who.kind, who.name) == ("pnode", "p1")
    assert reply.identity_ca == identities.authority().certificate_pem
    expires = reply.certificate_expires_at.ToDatetime(tzinfo=UTC)
    assert expires == who.not_after.replace(microsecond=expires.microsecond)
    assert expires == now + timedelta(hours=1)
    record = await plane.store.get(pnode.PNode, "p1")
    assert record.status.identity.expires_at == expires


@pytest.mark.parametrize(
    "csr",
    [b"", b"not a csr", b"x" * (identity.MAX_CSR_BYTES + 1)],
    ids=["missing", "garbage", "huge"],
)
async def test_register_without_a_valid_csr_names_the_field(plane, csr: bytes) -> None:
    request = pnode_pb2.RegisterRequest(
        header=HEADER, name="p1", data_plane_address="10.0.0.1:7100", capacity=_capacity(),
        csr=csr,
    )  # fmt: skip
    code, details = await status_of(plane.stub.Register(request))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert details.startswith("csr:"), details
    with pytest.raises(errors.NotFound):
        await plane.store.get(pnode.PNode, "p1")


async def test_a_heartbeat_carrying_a_csr_renews_the_identity(plane) -> None:
    client = plane.pnode("p1")
    first = await client.register()
    plain = await client.heartbeat_once()
    assert not plain.certificate, "issuing is CPU work: only when asked"
    await plane.clock.advance(0.5)  # within the lease
    request = pnode_pb2.HeartbeatRequest(
        header=HEADER, pnode_id="p1", incarnation=client.incarnation,
        known_assignment_set_version=client.version, csr=identity.csr_pem(client.key, "p1"),
    )  # fmt: skip
    reply = await plane.stub.Heartbeat(request, metadata=bearer(client.credential))
    assert reply.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
    who = _who(reply.certificate, first.identity_ca, plane.clock.now())
    assert (who.kind, who.name) == ("pnode", "p1")
    renewed = reply.certificate_expires_at.ToDatetime(tzinfo=UTC)
    assert renewed == plane.clock.now() + timedelta(hours=1)
    assert renewed > first.certificate_expires_at.ToDatetime(tzinfo=UTC)

    async def recorded() -> datetime | None:
        record: pnode.PNode = await plane.store.get(pnode.PNode, "p1")
        return record.status.identity.expires_at

    await wait.until(recorded, within=5, what="the renewed expiry in status",
                     accept=lambda at: at == renewed)  # fmt: skip


async def test_a_fenced_heartbeat_gets_no_certificate(plane) -> None:
    client = plane.pnode("p1")
    await client.register()
    await client.register()  # incarnation 2: incarnation 1 is fenced
    request = pnode_pb2.HeartbeatRequest(
        header=HEADER, pnode_id="p1", incarnation=1, csr=identity.csr_pem(client.key, "p1")
    )
    reply = await plane.stub.Heartbeat(request, metadata=bearer(client.credential))
    assert reply.lease_state == pnode_pb2.LEASE_STATE_FENCED
    assert not reply.certificate
