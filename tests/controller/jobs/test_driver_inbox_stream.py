"""The driver's inbox over Deliver streams (STREAMED DELIVERY in vnode.proto): over a real
socket, each streamed message is authenticated, attributed, checked and refused exactly as
its unary call would be, on the orchestrator's own listener (every signature verified on
receipt) and on the inbox's mutual-TLS listener (the stream's client certificate, per
message); a refusal ends its message, not the stream; and an agent's `Peers` streams its
results to the driver, or falls back to unary calls at an inbox that serves no Deliver."""

from __future__ import annotations

import asyncio
import dataclasses
import math
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from agent import peers
from api import identity, signed, tensors
from api.dcnr.v1 import vnode_pb2
from controller import server as server_mod
from controller.runtime import clock as clocks
from controller.services import driver_inbox_service
from controller.state import identity_ca
from tests.controller.jobs import driver_harness as harness
from tests.controller.jobs.test_driver_inbox_identity import World, stolen_certificate_signer
from tests.controller.jobs.test_driver_inbox_mutual_tls import MutualWorld
from tests.support import identities

HANG = 10.0


@dataclasses.dataclass(frozen=True)
class Message:
    """One Forward or Backward as a sender puts it on the wire: the body and the signature
    and certificate that go with it (as call metadata, or in the DeliverRequest)."""

    method: str
    body: bytes
    signature: bytes = b""
    certificate: bytes = b""


def signed_by(signer: signed.Signer, request: Any, *, signature: bytes | None = None) -> Message:
    method = "Forward" if isinstance(request, vnode_pb2.ForwardRequest) else "Backward"
    body = request.SerializeToString()
    entries = dict(signer.metadata(signed.full_method(method), body))
    return Message(
        method,
        body,
        entries.get(identity.SIGNATURE_METADATA, b"") if signature is None else signature,
        entries.get(identity.CERTIFICATE_METADATA, b""),
    )


def loss(value: float, *, job: str = "fit") -> vnode_pb2.ForwardRequest:
    return vnode_pb2.ForwardRequest(
        job=job, step=1, network=harness.NET, sender_vnode="loss", sender_replica=0,
        sender_epoch=1, target_vnode="__driver__", attempt=1,
        tensor=tensors.encode(np.array([value, value])),
    )  # fmt: skip


def done(source: str = "x") -> vnode_pb2.BackwardRequest:
    return vnode_pb2.BackwardRequest(
        job="fit", step=1, network=harness.NET, sender_vnode=source, sender_replica=0,
        sender_epoch=1, target_vnode="__driver__", attempt=1, tensor=tensors.empty(),
    )  # fmt: skip


def sequence(p1: signed.Signer) -> list[Message]:
    """Forgeries, results nobody waits for, a good result and its repeat, a source's
    finished backward pass, and a poisoned result from the slot's own PNode (checked and
    struck): every way the inbox answers a message, sent over one connection as `p1`."""
    poisoned = loss(math.nan)
    rogue_ca = identity.Authority.create(identities.now())
    return [
        Message("Forward", poisoned.SerializeToString()),  # Unsigned
        signed_by(stolen_certificate_signer("p1"), poisoned),  # BadSignature
        signed_by(identities.pnode_signer("p1", rogue_ca), poisoned),  # UnknownIssuer
        signed_by(identities.pnode_signer("p2"), poisoned),  # NotSender
        # The connection's own certificate: over mutual TLS taken unverified, then verified
        # once its failed check would make it evidence.
        signed_by(p1, poisoned, signature=b"not a signature"),  # BadSignature
        signed_by(p1, loss(0.5, job="nobody-runs-this")),  # StaleAttempt
        signed_by(p1, loss(0.5)),  # taken
        signed_by(p1, loss(0.5)),  # a duplicate
        signed_by(p1, done("x")),  # taken
        signed_by(p1, done("loss")),  # not a source
        signed_by(p1, poisoned),  # CheckFailed, struck
    ]


Answer = tuple[grpc.StatusCode, str, bool]


async def as_unary_calls(channel: aio.Channel, messages: list[Message]) -> list[Answer]:
    answers: list[Answer] = []
    for message in messages:
        response = signed.METHODS[message.method][1]
        call = channel.unary_unary(
            signed.full_method(message.method),
            request_serializer=lambda body: body,
            response_deserializer=response.FromString,
        )
        metadata = tuple(
            (key, value)
            for key, value in (
                (identity.SIGNATURE_METADATA, message.signature),
                (identity.CERTIFICATE_METADATA, message.certificate),
            )
            if value
        )
        try:
            reply = await call(message.body, metadata=metadata, timeout=HANG)
        except aio.AioRpcError as exc:
            answers.append((exc.code(), peers.error_reason(exc), False))
        else:
            answers.append((grpc.StatusCode.OK, "", reply.duplicate))
    return answers


def deliver_request(number: int, message: Message) -> vnode_pb2.DeliverRequest:
    request = vnode_pb2.DeliverRequest(
        sequence=number, signature=message.signature, certificate=message.certificate
    )
    setattr(request, "forward" if message.method == "Forward" else "backward", message.body)
    return request


async def on_one_stream(
    channel: aio.Channel, requests: list[vnode_pb2.DeliverRequest]
) -> list[vnode_pb2.DeliverResponse]:
    deliver = channel.stream_stream(
        signed.full_method(signed.DELIVER),
        request_serializer=vnode_pb2.DeliverRequest.SerializeToString,
        response_deserializer=vnode_pb2.DeliverResponse.FromString,
    )
    call: Any = deliver(iter(requests), timeout=HANG)
    answers = [answer async for answer in call]
    assert await call.code() == grpc.StatusCode.OK, "refusals end messages, not the stream"
    return answers


async def as_one_stream(channel: aio.Channel, messages: list[Message]) -> list[Answer]:
    replies = await on_one_stream(
        channel, [deliver_request(n, m) for n, m in enumerate(messages, 1)]
    )
    assert [r.sequence for r in replies] == list(range(1, len(messages) + 1)), "in order"
    codes = {code.value[0]: code for code in grpc.StatusCode}
    return [(codes[r.code], r.details.reason, r.duplicate) for r in replies]


async def started(kind: str, tmp: Path) -> World:
    await asyncio.to_thread(tmp.mkdir, parents=True, exist_ok=True)
    world = MutualWorld(tmp) if kind == "mutual TLS" else World(tmp)
    await world.start()
    return world


def dial(world: World, p1: signed.Signer) -> aio.Channel:
    """As p1's agent dials the inbox (plaintext to the orchestrator's own listener here)."""
    if isinstance(world, MutualWorld):
        return world.channel(p1)
    return aio.insecure_channel(f"127.0.0.1:{world.orch.port}")


async def stopped(world: World) -> None:
    if isinstance(world, MutualWorld):
        await world.server.stop(None)
    await world.orch.close()
    for agent in world.agents:
        await agent.close()
    await world.store.close()


REFUSALS = (
    "Unsigned", "BadSignature", "UnknownIssuer", "NotSender", "StaleAttempt", "FieldInvalid",
    "CheckFailed",
)  # fmt: skip


@pytest.mark.parametrize("kind", ["mutual TLS", "plaintext, every signature verified"])
async def test_a_stream_answers_every_message_as_its_unary_call(tmp_path: Path, kind) -> None:
    """The same messages, as unary calls to one inbox and on one Deliver stream to another:
    the same code, reason and duplicate flag for each, the same results filed, the same
    refusals counted and the same PNode struck, once."""
    outcomes = []
    for way, send in (("unary", as_unary_calls), ("stream", as_one_stream)):
        world = await started(kind, tmp_path / way)
        try:
            box = world.orch.ctx.results.inbox.open(
                job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"],
                sources=["x"],
            )  # fmt: skip
            p1 = identities.pnode_signer("p1")
            async with dial(world, p1) as channel:
                answers = await send(channel, sequence(p1))
            filed = (sorted(box.outputs), sorted(box.done), box.failed is not None)
            counted = {reason: world.refused(reason) for reason in REFUSALS}
            outcomes.append((answers, filed, counted, await world.strikes("p1")))
        finally:
            await stopped(world)
    unary, stream = outcomes
    assert stream == unary
    answers, filed, counted, strikes = stream
    C = grpc.StatusCode
    assert answers == [
        (C.UNAUTHENTICATED, "Unsigned", False),
        (C.UNAUTHENTICATED, "BadSignature", False),
        (C.UNAUTHENTICATED, "UnknownIssuer", False),
        (C.PERMISSION_DENIED, "NotSender", False),
        (C.UNAUTHENTICATED, "BadSignature", False),
        (C.FAILED_PRECONDITION, "StaleAttempt", False),
        (C.OK, "", False),
        (C.OK, "", True),
        (C.OK, "", False),
        (C.INVALID_ARGUMENT, "FieldInvalid", False),
        (C.INVALID_ARGUMENT, "CheckFailed", False),
    ]
    assert filed == (["loss"], [("x", 0)], True), "the poisoned result failed the step"
    assert counted == {
        "Unsigned": 1, "BadSignature": 2, "UnknownIssuer": 1, "NotSender": 1,
        "StaleAttempt": 1, "FieldInvalid": 1, "CheckFailed": 1,
    }  # fmt: skip
    assert strikes == 1, "struck once: for its own signed, checked result, not the forgeries"


async def test_a_stream_message_without_a_body_is_refused_and_the_next_taken(
    tmp_path: Path,
) -> None:
    world = await started("mutual TLS", tmp_path)
    try:
        box = world.orch.ctx.results.inbox.open(
            job="fit", network=harness.NET, attempt=1, position=1, sinks=["loss"], sources=["x"]
        )
        p1 = identities.pnode_signer("p1")
        good = deliver_request(2, signed_by(p1, loss(0.5)))
        async with dial(world, p1) as channel:
            first, second = await on_one_stream(
                channel, [vnode_pb2.DeliverRequest(sequence=1), good]
            )
        assert (first.sequence, first.code, first.details.reason) == (
            1, grpc.StatusCode.INVALID_ARGUMENT.value[0], "FieldInvalid",
        )  # fmt: skip
        assert "body" in first.message
        assert (second.sequence, second.code) == (2, 0)
        assert sorted(box.outputs) == ["loss"]
    finally:
        await stopped(world)


def sender(world: MutualWorld, *, streams: bool = True) -> peers.Peers:
    """An agent's delivery as p1, dialling the driver's mutual-TLS inbox like a peer."""
    return peers.Peers(
        peers.Orchestrators(["127.0.0.1:1"]),  # never dialled: the driver is not resolved
        signer=identities.pnode_signer("p1"),
        client_ca=lambda: identities.authority().certificate_pem,
        driver_mutual_tls=lambda: True,
        max_message_bytes=1 << 20,
        retry=peers.Retry(deadline=HANG),
        streams=streams,
    )


def addressed(request: Any, address: str) -> Any:
    request.reply_to = address
    return request


async def test_an_agent_streams_its_results_to_the_driver(tmp_path: Path) -> None:
    world = await started("mutual TLS", tmp_path)
    assert isinstance(world, MutualWorld)
    agent = sender(world)
    events: list[str] = []
    agent.on_stream = events.append
    try:
        box = world.open()
        address = f"127.0.0.1:{world.port}"
        assert await agent.send_forward(addressed(loss(0.5), address))
        assert await agent.send_backward(addressed(done("x"), address))
        assert (sorted(box.outputs), sorted(box.done)) == (["loss"], [("x", 0)])
        assert events == ["opened", "opened"], "one stream per edge: loss and x to the driver"
        assert agent._unary_only == set()
        # The stream stays open: a repeat (a retry after a lost answer) goes on it too.
        assert await agent.send_forward(addressed(loss(0.5), address))
        assert events == ["opened", "opened"]
    finally:
        await agent.close()
        await stopped(world)


async def test_an_agent_falls_back_to_unary_calls_at_an_inbox_without_deliver(
    tmp_path: Path,
) -> None:
    """An orchestrator older than Deliver at the driver: the same inbox, its unary
    Forward and Backward only. The agent asks for a stream once, hears UNIMPLEMENTED, and
    its results still arrive, as unary calls."""
    world = await started("mutual TLS", tmp_path)
    assert isinstance(world, MutualWorld)
    service = driver_inbox_service.DriverInboxService(
        inbox=world.orch.ctx.results.inbox,
        view=world.view,
        clock=clocks.SystemClock(),
        verifier=identity.Verifier(identities.authority().certificate_pem),
        replica_id="r1",
        max_message_bytes=1 << 20,
        mutual_tls=True,
    )
    unary: dict[str, signed.RawBehaviour] = {
        name: getattr(service, name) for name in signed.METHODS
    }
    older = aio.server()
    older.add_generic_rpc_handlers((signed.raw_handler(unary),))
    served = server_mod.InboxIdentity()
    own = identity_ca.Own.issue(identities.authority(), identities.now(), identities.HOUR)
    served.update(own, identities.authority().certificate_pem)
    port = older.add_secure_port("127.0.0.1:0", served.server_credentials())
    await older.start()
    agent = sender(world)
    events: list[str] = []
    agent.on_stream = events.append
    try:
        box = world.open()
        address = f"127.0.0.1:{port}"
        assert await agent.send_forward(addressed(loss(0.5), address))
        assert await agent.send_backward(addressed(done("x"), address))
        assert (sorted(box.outputs), sorted(box.done)) == (["loss"], [("x", 0)])
        assert events == ["opened", "unimplemented"], "asked once, then unary calls"
        assert len(agent._unary_only) == 1
    finally:
        await agent.close()
        await older.stop(None)
        await stopped(world)
