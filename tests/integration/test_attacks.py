"""The attacks of issue 11, replayed from the attacker's side against one real cluster.

One `dcnr-orchestrator serve` over TLS (tests/support/tls.py) with an admin token, a
read-only token and a known identity CA, three real `dcnr-agent` processes hosting the
digits network, trained once at the start to a recorded held-out accuracy. Each test is one
attack, made with nothing but generated stubs, raw sockets and, where the attack needs one,
an identity: a key the CA never certified, another CA's certificate, a PNode registered by
the attacker (a real certificate from `Register`), or a real PNode's identity issued from
the cluster's CA (standing for a stolen or compromised agent identity). Each checks the
documented status code (docs/security.md), that the refusal was counted, and that nothing
changed: no strike on any PNode, the allocations as they were, the weights as they were
(inference answers bit for bit the same). The last test trains the honest cluster again,
same seed, and gets the same accuracy: training here is deterministic (Train restores every
VNode fresh from the seed; the same batches in the same order), so "same" means equal.

The lower layers are tested on their own (tests/controller/jobs/test_driver_inbox_identity.py,
tests/agent/test_dataplane_identity.py, tests/integration/test_authorization.py and
test_admission_flood.py, tests/controller/services); this is the cross-process view over
TLS. The data plane is reached through `_data_plane` only, so when the agents' listener
speaks TLS that one function changes.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import pytest_asyncio
import yaml
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from agent import peers
from api import identity, signed, tensors
from api.dcnr.v1 import (
    common_pb2,
    network_pb2,
    network_pb2_grpc,
    pnode_pb2,
    pnode_pb2_grpc,
    resolve_pb2,
    resolve_pb2_grpc,
    validation_pb2,
    validation_pb2_grpc,
    vnode_pb2,
    vnode_pb2_grpc,
)
from api.resources import pnode as pnode_model
from tests.integration import cluster
from tests.integration import test_training as training
from tests.support import agents, identities, metrics, pnode_client, procs, tls, wait

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

ADMIN, READ_ONLY = "attacks-admin-token", "attacks-read-only-token"
NET = "digits"
EPOCHS = 2
HEADER = cluster.HEADER
DRIVER = "__driver__"
FORWARD = "/dcnr.v1.VNodeService/Forward"


@dataclass
class Cluster:
    served: procs.Served
    fleet: list[agents.Agent]
    credentials: grpc.ChannelCredentials
    admin: cluster.Api
    jobs: training.Jobs
    #: A PNode the attacker registered itself (1 core, hosting nothing): its credential and
    #: a real identity certificate from the cluster's CA.
    stranger: pnode_client.TestPNode
    #: Held-out accuracy of the first training run, and the test set's answers after it.
    accuracy: float
    answers: np.ndarray
    placed: dict[str, list[tuple[str, int]]]

    @property
    def address(self) -> str:
        return self.served.address

    def channel(self) -> aio.Channel:
        """A TLS channel to `serve` carrying no credential: what anyone can open."""
        return aio.secure_channel(self.address, self.credentials)

    def host(self, vnode: str) -> tuple[str, int]:
        """(PNode, epoch) of replica 0 of `vnode`."""
        return self.placed[vnode][0]

    def agent(self, vnode: str) -> agents.Agent:
        return next(a for a in self.fleet if a.name == self.host(vnode)[0])

    async def orchestrator_metrics(self) -> metrics.Samples:
        assert self.served.metrics_port is not None
        return await asyncio.to_thread(metrics.scrape, self.served.metrics_port)

    async def pnodes(self) -> dict[str, pnode_model.PNode]:
        stub = pnode_pb2_grpc.PNodeServiceStub(self.admin.channel)
        reply = await stub.ListPNodes(
            pnode_pb2.ListPNodesRequest(header=HEADER, limit=1000),
            metadata=self.admin.metadata,
            timeout=10,
        )
        found = (pnode_model.PNode.model_validate_json(d.json) for d in reply.items)
        return {p.name: p for p in found}

    async def state(self) -> State:
        """What an attack must not change: every PNode's strikes and Bugged flag, and where
        every VNode runs at which epoch."""
        stub = network_pb2_grpc.NetworkServiceStub(self.admin.channel)
        reply = await stub.ListAllocations(
            network_pb2.ListAllocationsRequest(header=HEADER, limit=1000),
            metadata=self.admin.metadata,
            timeout=10,
        )
        allocations = {}
        for document in reply.items:
            body = json.loads(document.json)
            allocations[body["metadata"]["name"]] = (body["spec"]["pnode"], body["spec"]["epoch"])
        trust = {
            name: (p.status.trust.strikes_total, p.status.trust.bugged)
            for name, p in (await self.pnodes()).items()
        }
        return State(trust, allocations)

    async def infer(self) -> np.ndarray:
        return await self.jobs.infer(NET, training.DATA["x_test"])


@dataclass(frozen=True)
class State:
    trust: dict[str, tuple[int, bool]]
    allocations: dict[str, tuple[str, int]]


def _accuracy(probabilities: np.ndarray) -> float:
    return float(np.mean(np.argmax(probabilities, axis=1) == training.DATA["y_test"]))


def _data_plane(agent: agents.Agent, client: signed.Signer | None = None) -> aio.Channel:
    """A channel to an agent's VNodeService, over mutual TLS as every data-plane client
    dials it (docs/security.md, "The data plane"), presenting `client`'s identity certificate
    (default: a job driver's): the attacks are on what the agent accepts from a caller that
    got through the handshake."""
    return identities.data_plane_channel(agent.address, agent.name, client=client)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("attacks")


@pytest.fixture(scope="module")
def processes(workdir: Path) -> Iterator[tuple[procs.Served, list[agents.Agent], tls.Pki]]:
    pki = tls.Pki.create(workdir / "pki")
    (workdir / "admin").write_text(f"{ADMIN}\n")
    (workdir / "read-only").write_text(f"{READ_ONLY}\n")
    flags = [
        "--tls-cert", str(pki.paths.cert), "--tls-key", str(pki.paths.key),
        "--admin-token-file", str(workdir / "admin"),
        "--read-only-token-file", str(workdir / "read-only"),
        "--metrics-listen", "127.0.0.1:0",
        *identities.ca_flags(workdir),
    ]  # fmt: skip
    agent_flags = ["--tls-ca", str(pki.paths.ca), "--metrics-listen", "127.0.0.1:0"]
    with (
        procs.orchestrator(
            f"sqlite:///{workdir / 'state.db'}", extra=flags, log=workdir / "orchestrator.log"
        ) as served,
        agents.agents(
            served.address, workdir, 3, cpu="2", memory="2Gi", extra=agent_flags
        ) as fleet,
    ):
        yield served, fleet, pki
        for agent in fleet:  # a graceful leave would drain VNodes onto the others first
            agent.kill()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(
    processes: tuple[procs.Served, list[agents.Agent], tls.Pki],
) -> AsyncIterator[Cluster]:
    served, fleet, pki = processes
    credentials = grpc.ssl_channel_credentials(pki.paths.ca.read_bytes())
    admin = cluster.Api(served.address, token=ADMIN, credentials=credentials)
    with_token = grpc.composite_channel_credentials(
        credentials, grpc.access_token_call_credentials(ADMIN)
    )
    jobs = training.Jobs(served.address, channel=aio.secure_channel(served.address, with_token))
    stranger = pnode_client.TestPNode(
        served.address, "stranger", cpu_millis=1000, credentials=credentials
    )
    try:
        manifest = yaml.safe_load(training.MANIFEST.read_text())
        await admin.apply(manifest)
        every = {v["name"]: 1 for v in manifest["spec"]["vnodes"]}
        _, placed = await admin.wait_resolvable(NET, every, within=60)
        await jobs.train("before", NET, epochs=EPOCHS)
        await jobs.wait("before", phase="Succeeded", within=120)
        answers = await jobs.infer(NET, training.DATA["x_test"])
        accuracy = _accuracy(answers)
        print(f"\nfirst run: held-out accuracy {accuracy:.4f} after {EPOCHS} epochs")
        assert accuracy >= 0.8
        await stranger.register()
        yield Cluster(served, fleet, credentials, admin, jobs, stranger, accuracy, answers, placed)
    finally:
        await stranger.close()
        await admin.close()
        await jobs.channel.close(None)


async def _refused(call: Any) -> aio.AioRpcError:
    with pytest.raises(aio.AioRpcError) as caught:
        await call
    return caught.value


def _counter(samples: metrics.Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def _signer(key: identity.PrivateKey, certificate_pem: bytes) -> signed.Signer:
    signer = signed.Signer()
    signer.update(key, certificate_pem)
    return signer


def _stranger_signer(world: Cluster) -> signed.Signer:
    """The attacker's own PNode identity, as `Register` issued it."""
    return _signer(world.stranger.key, world.stranger.certificate)


def _uncertified_key(certificate_of: str) -> signed.Signer:
    """A real PNode's certificate presented with a key the CA never certified."""
    real = identities.pnode_signer(certificate_of)
    return _signer(identity.generate_key(), identity.certificate_pem(real.certificate))


def _failing_loss(world: Cluster, job: str) -> vnode_pb2.ForwardRequest:
    """A result of the `loss` slot that fails its check (negative loss, NaN accuracy): if it
    were believed, the slot's PNode would be struck."""
    _host, epoch = world.host("loss")
    return vnode_pb2.ForwardRequest(
        job=job, step=1, network=NET, sender_vnode="loss", sender_replica=0,
        sender_epoch=epoch, target_vnode=DRIVER, attempt=1,
        tensor=tensors.encode(np.array([-1.0, math.nan])),
    )  # fmt: skip


# -- transport -------------------------------------------------------------------------------


async def test_plaintext_to_the_tls_listener_fails_cleanly(world: Cluster) -> None:
    async with aio.insecure_channel(world.address) as channel:
        error = await _refused(
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        )
    assert error.code() == grpc.StatusCode.UNAVAILABLE, error  # not a hang: no DEADLINE
    # On a raw socket: an HTTP/2 preface in clear text is answered by the TLS stack (an
    # alert or a close), never by gRPC.
    host, port = world.address.rsplit(":", 1)

    def speak_clear() -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as raw:
            raw.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            received = b""
            while chunk := raw.recv(4096):
                received += chunk
            return received

    answer = await asyncio.to_thread(speak_clear)
    assert answer[:1] in (b"", b"\x15"), answer  # nothing, or a TLS alert record
    # The same listener speaks TLS to a client that does.
    async with world.channel() as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(), timeout=10
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


# -- the driver's inbox ----------------------------------------------------------------------


async def test_forged_results_to_the_driver_inbox_strike_nobody(world: Cluster) -> None:
    before = await world.state()
    counted = await world.orchestrator_metrics()
    loss_host, _ = world.host("loss")
    other = next(a.name for a in world.fleet if a.name != loss_host)
    attempts: list[tuple[str, Callable[[aio.Channel], Any], str, grpc.StatusCode, str]] = [
        ("anonymous", vnode_pb2_grpc.VNodeServiceStub, "before",
         grpc.StatusCode.UNAUTHENTICATED, "Unsigned"),
        ("a key the CA never certified",
         lambda ch: identities.SignedVNodeStub(ch, _uncertified_key(loss_host)), "before",
         grpc.StatusCode.UNAUTHENTICATED, "BadSignature"),
        ("another CA's identity",
         lambda ch: identities.SignedVNodeStub(
             ch, identities.pnode_signer(loss_host, identity.Authority.create(identities.now()))
         ), "before", grpc.StatusCode.UNAUTHENTICATED, "UnknownIssuer"),
        ("a real PNode not hosting the slot",
         lambda ch: identities.SignedVNodeStub(ch, identities.pnode_signer(other)), "before",
         grpc.StatusCode.PERMISSION_DENIED, "NotSender"),
        ("the slot's own PNode, for a job no run waits for",
         lambda ch: identities.SignedVNodeStub(ch, identities.pnode_signer(loss_host)),
         "invented-job", grpc.StatusCode.FAILED_PRECONDITION, "StaleAttempt"),
    ]  # fmt: skip
    async with world.channel() as channel:
        for what, stub_for, job, code, _ in attempts:
            for _ in range(4):  # four were enough to get a PNode Bugged before issue 11
                error = await _refused(stub_for(channel).Forward(_failing_loss(world, job)))
                assert error.code() == code, (what, error)
    after = await world.orchestrator_metrics()
    name = "dcnr_driver_results_refused_total"
    for what, _, _, _, reason in attempts:
        grew = _counter(after, name, reason=reason) - _counter(counted, name, reason=reason)
        assert grew == 4, (what, reason, grew)
    assert _counter(after, name, reason="CheckFailed") == _counter(
        counted, name, reason="CheckFailed"
    ), "a forged result was checked"
    assert await world.state() == before


# -- an agent's data plane -------------------------------------------------------------------


async def test_a_forged_nan_activation_to_an_agent_is_refused_unreported(world: Cluster) -> None:
    before = await world.state()
    fc1_epoch = world.host("fc1")[1]
    act1_host, act1_epoch = world.host("act1")
    receiver = world.agent("act1")
    assert receiver.metrics_port is not None
    counted = await asyncio.to_thread(metrics.scrape, receiver.metrics_port)
    orchestrator_before = await world.orchestrator_metrics()
    poisoned = vnode_pb2.ForwardRequest(
        job="before", step=1, network=NET, sender_vnode="fc1", sender_replica=0,
        sender_epoch=fc1_epoch, target_vnode="act1", target_replica=0, target_epoch=act1_epoch,
        tensor=tensors.encode(np.full((4, 32), math.nan)), attempt=1,
    )  # fmt: skip
    # The attacker connects with its own PNode identity (Register issued it), as it must.
    async with _data_plane(receiver, _stranger_signer(world)) as channel:
        unsigned = await _refused(vnode_pb2_grpc.VNodeServiceStub(channel).Forward(poisoned))
        assert unsigned.code() == grpc.StatusCode.UNAUTHENTICATED, unsigned
        stub = identities.SignedVNodeStub(channel, _stranger_signer(world))
        not_the_sender = await _refused(stub.Forward(poisoned))
        assert not_the_sender.code() == grpc.StatusCode.PERMISSION_DENIED, not_the_sender
    refused = await asyncio.to_thread(metrics.scrape, receiver.metrics_port)
    for reason in ("Unsigned", "NotSender"):
        labels = {"direction": "forward", "reason": reason}
        name = "dcnr_agent_messages_refused_total"
        assert _counter(refused, name, **labels) - _counter(counted, name, **labels) == 1, reason
    # No report reached the orchestrator: nothing checked, no ReportResult call.
    after = await world.orchestrator_metrics()
    assert _reports(after) == _reports(orchestrator_before)
    assert await world.state() == before
    assert act1_host == receiver.name


def _reports(samples: metrics.Samples) -> dict[Any, float]:
    """What the orchestrator counts of ValidationService reports."""
    return {
        key: value
        for key, value in samples.items()
        if key[0] == "dcnr_validation_checks_total"
        or (key[0] == "dcnr_rpc_duration_seconds_count" and "ReportResult" in str(key[1]))
    }


async def test_a_failed_check_whose_signature_fails_is_refused_unreported(
    world: Cluster,
) -> None:
    # Over mutual TLS an agent verifies a signature only when the message is about to become
    # evidence. Here the connection is the real sender's (fc1's PNode: the test holds the CA),
    # the result fails act1's check, but its signature is by a key the certificate does not
    # certify: reported, it would be refused as bad evidence and strike the reporter.
    before = await world.state()
    fc1_host, fc1_epoch = world.host("fc1")
    _, act1_epoch = world.host("act1")
    receiver = world.agent("act1")
    assert receiver.metrics_port is not None
    counted = await asyncio.to_thread(metrics.scrape, receiver.metrics_port)
    orchestrator_before = await world.orchestrator_metrics()
    poisoned = vnode_pb2.ForwardRequest(
        job="before", step=1, network=NET, sender_vnode="fc1", sender_replica=0,
        sender_epoch=fc1_epoch, target_vnode="act1", target_replica=0, target_epoch=act1_epoch,
        tensor=tensors.encode(np.full((4, 32), math.nan)), attempt=1,
    )  # fmt: skip
    real = identities.pnode_signer(fc1_host)
    forged = _signer(identity.generate_key(), identity.certificate_pem(real.certificate))
    async with _data_plane(receiver, real) as channel:
        error = await _refused(identities.SignedVNodeStub(channel, forged).Forward(poisoned))
    assert error.code() == grpc.StatusCode.UNAUTHENTICATED, error
    assert peers.error_reason(error) == "BadSignature", error
    refused = await asyncio.to_thread(metrics.scrape, receiver.metrics_port)
    name = "dcnr_agent_messages_refused_total"
    labels = {"direction": "forward", "reason": "BadSignature"}
    assert _counter(refused, name, **labels) - _counter(counted, name, **labels) == 1
    assert _reports(await world.orchestrator_metrics()) == _reports(orchestrator_before)
    assert await world.state() == before, "no strike on the sender nor on the receiver"


async def test_restore_and_checkpoint_need_the_driver(world: Cluster, workdir: Path) -> None:
    before = await world.state()
    host, epoch = world.host("fc1")
    target = world.agent("fc1")
    restore = vnode_pb2.RestoreRequest(
        header=HEADER, job="attack", step=0, network=NET, vnode="fc1", replica=0, epoch=epoch,
        seed=12345, attempt=1,
    )  # fmt: skip
    checkpoint = vnode_pb2.CheckpointRequest(
        header=HEADER, job="attack", step=0, network=NET, vnode="fc1", replica=0, epoch=epoch,
        destination=(workdir / "stolen").as_uri(), attempt=1,
    )  # fmt: skip
    async with _data_plane(target, _stranger_signer(world)) as channel:
        plain = vnode_pb2_grpc.VNodeServiceStub(channel)
        for call in (plain.Restore(restore), plain.Checkpoint(checkpoint)):
            assert (await _refused(call)).code() == grpc.StatusCode.UNAUTHENTICATED
        for signer in (_stranger_signer(world), identities.pnode_signer(host)):
            stub = identities.SignedVNodeStub(channel, signer)
            for call in (stub.Restore(restore), stub.Checkpoint(checkpoint)):
                error = await _refused(call)
                assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    assert not (workdir / "stolen").exists()
    np.testing.assert_array_equal(await world.infer(), world.answers)
    assert await world.state() == before


# -- resolution ------------------------------------------------------------------------------


async def test_resolution_refuses_strangers_and_reveals_nothing(
    world: Cluster, bigmouth: tuple[pnode_client.TestPNode, dict[str, Any]]
) -> None:
    async def resolve(
        credential: str | None, network: str, vnode: str
    ) -> resolve_pb2.ResolveResponse | tuple[grpc.StatusCode, str]:
        async with world.channel() as channel:
            try:
                return await resolve_pb2_grpc.ResolutionServiceStub(channel).Resolve(
                    resolve_pb2.ResolveRequest(header=HEADER, network=network, vnode=vnode),
                    metadata=(("authorization", f"Bearer {credential}"),) if credential else (),
                    timeout=10,
                )
            except aio.AioRpcError as exc:
                return exc.code(), exc.details() or ""

    anonymous = await resolve(None, NET, "fc1")
    assert isinstance(anonymous, tuple)
    assert anonymous[0] == grpc.StatusCode.UNAUTHENTICATED
    assert await resolve(None, "no-such-network", "fc1") == anonymous
    assert await resolve(None, NET, "no-such-vnode") == anonymous
    assert await resolve("invented", NET, "fc1") == anonymous
    # A PNode of another network (bait) resolves its own, and is refused this one.
    other = bigmouth[0].credential
    own = await resolve(other, "bait", "v0")
    assert isinstance(own, resolve_pb2.ResolveResponse)
    assert [e.pnode_id for e in own.endpoints.endpoints] == [bigmouth[1]["v0"][0][0]]
    refused = await resolve(other, NET, "fc1")
    assert isinstance(refused, tuple)
    assert refused[0] == grpc.StatusCode.PERMISSION_DENIED
    assert await resolve(other, NET, "no-such-vnode") == refused  # nothing revealed
    stranger = world.stranger.credential
    denied = await resolve(stranger, NET, "fc1")
    assert isinstance(denied, tuple)
    assert denied[0] == grpc.StatusCode.PERMISSION_DENIED
    unknown = await resolve(stranger, NET, "no-such-vnode")
    assert isinstance(unknown, tuple)
    assert unknown[0] == grpc.StatusCode.PERMISSION_DENIED
    assert "act1" not in unknown[1], unknown
    assert "fc2" not in unknown[1], unknown
    # Entitled callers are answered; only their NOT_FOUND names the network's VNodes.
    viewer = await resolve(READ_ONLY, NET, "fc1")
    assert isinstance(viewer, resolve_pb2.ResolveResponse)
    assert [e.pnode_id for e in viewer.endpoints.endpoints] == [world.host("fc1")[0]]
    missing = await resolve(READ_ONLY, NET, "no-such-vnode")
    assert isinstance(missing, tuple)
    assert missing[0] == grpc.StatusCode.NOT_FOUND
    assert "act1" in missing[1]


# -- the control plane -----------------------------------------------------------------------


async def test_pnode_names_are_no_oracle(world: Cluster) -> None:
    """A wrong credential for an existing PNode is answered exactly as any credential for a
    PNode that does not exist."""
    existing = world.fleet[0].name
    metadata = (("authorization", "Bearer forged"),)
    async with world.channel() as channel:
        pnodes = pnode_pb2_grpc.PNodeServiceStub(channel)
        validation = validation_pb2_grpc.ValidationServiceStub(channel)

        async def answers(name: str) -> list[tuple[grpc.StatusCode, str, str]]:
            calls = [
                pnodes.Heartbeat(
                    pnode_pb2.HeartbeatRequest(header=HEADER, pnode_id=name, incarnation=1),
                    metadata=metadata, timeout=10,
                ),
                pnodes.WatchAssignments(
                    pnode_pb2.WatchAssignmentsRequest(header=HEADER, pnode_id=name, incarnation=1),
                    metadata=metadata, timeout=10,
                ).read(),
                pnodes.Deregister(
                    pnode_pb2.DeregisterRequest(header=HEADER, pnode_id=name, incarnation=1),
                    metadata=metadata, timeout=10,
                ),
                validation.ReportResult(
                    validation_pb2.ReportResultRequest(header=HEADER, pnode_id=name, incarnation=1),
                    metadata=metadata, timeout=10,
                ),
            ]  # fmt: skip
            found = []
            for call in calls:
                error = await _refused(call)
                trailing: Any = error.trailing_metadata() or ()
                trailers = [v for k, v in trailing if k == "grpc-status-details-bin"]
                found.append((error.code(), error.details() or "", repr(trailers)))
            return found

        real, invented = await answers(existing), await answers("nobody-by-this-name")
    assert real == invented
    assert {code for code, _, _ in real} == {grpc.StatusCode.UNAUTHENTICATED}
    assert all(existing not in details for _, details, _ in real)
    assert (await world.pnodes())[existing].status.phase == "Ready"


async def test_a_heartbeat_of_100000_statuses_is_refused_unparsed(world: Cluster) -> None:
    statuses = [
        pnode_pb2.AssignmentStatus(network=NET, vnode=f"v{i}", replica=0, epoch=i)
        for i in range(100_000)
    ]
    stranger = world.stranger
    request = pnode_pb2.HeartbeatRequest(
        header=HEADER, pnode_id=stranger.name, incarnation=stranger.incarnation,
        assignment_statuses=statuses,
    )  # fmt: skip
    counted = await world.orchestrator_metrics()
    async with world.channel() as channel:
        error = await _refused(
            pnode_pb2_grpc.PNodeServiceStub(channel).Heartbeat(
                request, metadata=stranger.metadata(), timeout=30
            )
        )
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, error
    assert "assignment_statuses" in (error.details() or ""), error
    assert "nothing of it was read" in (error.details() or ""), error
    after = await world.orchestrator_metrics()

    def too_large(samples: metrics.Samples) -> float:
        return sum(
            value
            for (name, labels), value in samples.items()
            if name == "dcnr_rpc_refused_total"
            and dict(labels).get("reason") == "RequestTooLarge"
            and dict(labels).get("method") == "/dcnr.v1.PNodeService/Heartbeat"
        )

    assert too_large(after) - too_large(counted) == 1, "refused for its size, unparsed"
    # The PNode itself is not punished for it: its next honest heartbeat is answered.
    reply = await stranger.heartbeat_once()
    assert reply.lease_state == pnode_client.ACTIVE


# -- admission and trust ---------------------------------------------------------------------


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def bigmouth(world: Cluster) -> AsyncIterator[tuple[pnode_client.TestPNode, dict[str, Any]]]:
    """A fake PNode claiming 64 cores, Ready, and the network `bait`: a critical VNode `v0`
    any PNode fits, and `v1` (its child) that only the fake's claimed capacity fits."""
    fake = pnode_client.TestPNode(
        world.address, "bigmouth", cpu_millis=64_000, memory_bytes=256 * 2**30,
        credentials=world.credentials, data_plane_address="127.0.0.1:9",
    )  # fmt: skip
    await fake.register()
    fake.start()
    await fake.wait_until(lambda n: n.heartbeats > 0, within=30)
    # Established: the training run's valid results are on record (they are written
    # coalesced, a moment after the run), so the agents have earned trust and the fake not.
    fleet = {a.name for a in world.fleet}
    await wait.until(
        world.pnodes, within=30, what="an agent's valid results on record", every=0.1,
        accept=lambda nodes: any(nodes[n].status.trust.valid_total > 0 for n in fleet),
    )  # fmt: skip
    bait = cluster.chain_network("bait", 2)
    bait["spec"]["vnodes"][0]["critical"] = True
    bait["spec"]["vnodes"][1]["resources"] = {"cpu": "8", "memory": "64Mi"}
    await world.admin.apply(bait)
    _, placed = await world.admin.wait_resolvable("bait", {"v0": 1, "v1": 1}, within=30)
    try:
        yield fake, placed
    finally:
        await fake.close()


async def test_a_fake_64_core_pnode_gets_no_critical_vnode(
    world: Cluster, bigmouth: tuple[pnode_client.TestPNode, dict[str, Any]]
) -> None:
    fake, placed = bigmouth
    fleet = {a.name for a in world.fleet}
    assert placed["v0"][0][0] in fleet, placed  # critical: an established PNode
    assert placed["v1"][0][0] == fake.name, placed  # work within its claim, not trust
    nodes = await world.pnodes()
    assert nodes[fake.name].status.trust.valid_total == 0
    assert nodes[placed["v0"][0][0]].status.trust.valid_total > 0, "earned by training"


async def test_a_false_accusation_costs_the_accuser(
    world: Cluster, bigmouth: tuple[pnode_client.TestPNode, dict[str, Any]]
) -> None:
    """The fake hosts v1, a child of v0: a neighbour, the only kind of PNode whose report is
    heard at all. It accuses v0's honest host with no evidence, then with evidence it
    forged (a request signed by its own key, as if v0's host had sent it)."""
    fake, placed = bigmouth
    accused, v0_epoch = placed["v0"][0]
    v1_epoch = placed["v1"][0][1]
    before = await world.pnodes()
    lie = vnode_pb2.ForwardRequest(
        job="attack", step=1, network="bait", sender_vnode="v0", sender_replica=0,
        sender_epoch=v0_epoch, target_vnode="v1", target_replica=0, target_epoch=v1_epoch,
        tensor=tensors.encode(np.full((2, 4), math.nan)), attempt=1,
    )  # fmt: skip
    body = lie.SerializeToString()
    forged = common_pb2.SignedMessage(
        method=FORWARD, body=body,
        certificate=identity.certificate_der(fake.certificate),
        signature=identity.sign(fake.key, FORWARD, body),
    )  # fmt: skip
    counted = await world.orchestrator_metrics()
    async with world.channel() as channel:
        validation = validation_pb2_grpc.ValidationServiceStub(channel)
        for evidence in ([], [forged]):
            report = validation_pb2.ReportResultRequest(
                header=HEADER, pnode_id=fake.name, incarnation=fake.incarnation, job="attack",
                step=1, network="bait", vnode="v1", replica=0, epoch=v1_epoch,
                phase=validation_pb2.COMPUTE_PHASE_FORWARD,
                checks=[validation_pb2.CheckOutcome(
                    check="finite", result=validation_pb2.CHECK_RESULT_FAILED, message="NaN",
                )],
                subject_vnode="v0", subject_replica=0, subject_epoch=v0_epoch,
                evidence=evidence,
            )  # fmt: skip
            error = await _refused(
                validation.ReportResult(report, metadata=fake.metadata(), timeout=10)
            )
            assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error
    # Strikes are written coalesced (controller/trust/book.py): wait for the accuser's two.
    expected = before[fake.name].status.trust.strikes_total + 2
    after = await wait.until(
        world.pnodes, within=15, what="the accuser's two false-accusation strikes",
        accept=lambda nodes: nodes[fake.name].status.trust.strikes_total >= expected,
        every=0.05,
    )  # fmt: skip
    assert after[fake.name].status.trust.strikes_total == expected
    def struck(node: pnode_model.PNode) -> tuple[int, int, bool]:
        trust = node.status.trust
        return trust.strikes_total, trust.strikes, trust.bugged

    assert struck(after[accused]) == struck(before[accused])
    samples = await world.orchestrator_metrics()
    refused = metrics.by_label(samples, "dcnr_validation_reports_refused_total", "reason")
    was = metrics.by_label(counted, "dcnr_validation_reports_refused_total", "reason")
    for reason in ("no-evidence", "wrong-signer"):
        assert refused.get(reason, 0) - was.get(reason, 0) == 1, (reason, refused)
    assert sum(refused.values()) - sum(was.values()) == 2
    for name, node in after.items():
        if name != fake.name:
            assert node.status.trust.strikes_total == before[name].status.trust.strikes_total


async def test_a_registration_flood_is_mostly_refused(world: Cluster) -> None:
    """A few hundred anonymous registrations from one address cross the burst (20) of the
    default `--register-rate 5/20`; benchmarks/admission.py floods 10,000."""
    request = pnode_pb2.RegisterRequest(
        header=HEADER, capacity=common_pb2.Capacity(cpu_millis=64_000, memory_bytes=2**36),
        data_plane_address="127.0.0.1:9", csr=identity.csr_pem(identity.generate_key(), "f"),
    )  # fmt: skip
    async with world.channel() as channel:
        stub = pnode_pb2_grpc.PNodeServiceStub(channel)
        outcomes = await asyncio.gather(
            *(stub.Register(request, timeout=30) for _ in range(300)), return_exceptions=True
        )
    codes = [o.code() if isinstance(o, aio.AioRpcError) else o for o in outcomes]
    accepted = sum(isinstance(c, pnode_pb2.RegisterResponse) for c in codes)
    exhausted = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
    print(f"\nflood of 300: {accepted} accepted, {exhausted} RESOURCE_EXHAUSTED")
    assert accepted + exhausted == 300, {str(c) for c in codes}
    assert exhausted >= 250


# -- and the honest cluster still learns -----------------------------------------------------


async def test_the_honest_cluster_trains_again_to_the_same_accuracy(world: Cluster) -> None:
    await world.jobs.train("after", NET, epochs=EPOCHS)
    await world.jobs.wait("after", phase="Succeeded", within=120)
    answers = await world.infer()
    print(f"\nsecond run: held-out accuracy {_accuracy(answers):.4f} (first {world.accuracy:.4f})")
    assert _accuracy(answers) == world.accuracy
    np.testing.assert_allclose(answers, world.answers, rtol=0, atol=1e-6)
    honest = {a.name for a in world.fleet}
    trust = (await world.state()).trust
    assert all(trust[name] == (0, False) for name in honest), trust
