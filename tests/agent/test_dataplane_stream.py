"""Deliver streams (STREAMED DELIVERY in vnode.proto; `api.streams`, `agent.peers`): each
message on a stream is authenticated, attributed, checked and answered exactly as its unary
call would be, in order, and a refusal ends only its message; a peer that stops answering
or is SIGKILLed mid-stream fails the messages on it within their deadline, and they reach
the peer that replaces it; a peer without Deliver gets unary calls.

The in-process cases use tests/agent/test_dataplane.py's cluster (plaintext: every
signature verified on receipt); the mutual-TLS and signal cases use real peer processes
(`tests.support.peer`: the agent's DataPlane hosting `act`, whose parent `fc` is PNode
"sender"'s).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from agent import dataplane, peers
from api import signed, streams, tensors
from api.dcnr.v1 import resolve_pb2, resolve_pb2_grpc, vnode_pb2
from tests.agent.test_dataplane import (  # noqa: F401
    BATCH,
    Driver,
    cluster,
    data_file,
    forward,
    restore_all,
    run_step,
)
from tests.agent.test_dataplane_identity import (
    forged_from_x,
    rogue_ca_signer,
    stolen_certificate_signer,
)
from tests.support import identities, procs, wait
from tests.support import peer as peer_mod

#: Only a hang guard: every delivery here ends well within it or the test has failed.
HANG = 60.0


def answer(reply: vnode_pb2.DeliverResponse) -> tuple[int, grpc.StatusCode, str, bool]:
    code = next(c for c in grpc.StatusCode if c.value[0] == reply.code)
    return reply.sequence, code, reply.details.reason, reply.duplicate


@contextlib.asynccontextmanager
async def stream_to(channel: aio.Channel) -> AsyncIterator[streams.Stream]:
    stream = streams.Stream(channel, header=peers.header())
    try:
        yield stream
    finally:
        await stream.close()


async def test_messages_are_answered_in_order_and_a_refusal_ends_only_its_message(
    cluster,  # noqa: F811
) -> None:
    c = cluster
    await restore_all(c)
    batch = tensors.encode(BATCH)
    messages = [
        forward("x", batch, c, step=1),
        forward("nobody", batch, c, step=1),
        forward("x", batch, c, step=2, target_epoch=2),
        forward("x", batch, c, step=1),  # the first again: a duplicate only if after it
        forward("x", batch, c, step=2),
    ]
    async with aio.insecure_channel(c["plane_address"]) as channel, stream_to(channel) as stream:
        # Written ahead, all at once: the answers still come back one per message, in order.
        replies = await asyncio.gather(*(
            stream.send(identities.driver(), "Forward", m.SerializeToString(), seconds=HANG)
            for m in messages
        ))  # fmt: skip
    assert [answer(r) for r in replies] == [
        (1, grpc.StatusCode.OK, "", False),
        (2, grpc.StatusCode.NOT_FOUND, "NotHosted", False),
        (3, grpc.StatusCode.FAILED_PRECONDITION, "StaleEpoch", False),
        (4, grpc.StatusCode.OK, "", True),
        (5, grpc.StatusCode.OK, "", False),
    ]
    assert "target: tiny/nobody replica 0 is not hosted here" in replies[1].message


async def test_every_message_is_authenticated_on_its_own_on_one_stream(cluster) -> None:  # noqa: F811
    c = cluster
    await restore_all(c)
    counted: list[tuple[bool, str | None]] = []
    c["plane"].on_message = lambda forward, reason: counted.append((forward, reason))
    body = forged_from_x(c).SerializeToString()
    signers = [
        (signed.Signer(), grpc.StatusCode.UNAUTHENTICATED, "Unsigned"),
        (stolen_certificate_signer("p"), grpc.StatusCode.UNAUTHENTICATED, "BadSignature"),
        (rogue_ca_signer("p"), grpc.StatusCode.UNAUTHENTICATED, "UnknownIssuer"),
        (identities.pnode_signer("q"), grpc.StatusCode.PERMISSION_DENIED, "NotSender"),
        # x's real host: now the poison is looked at, and refused for what it is.
        (c["plane"]._keys.signer, grpc.StatusCode.INVALID_ARGUMENT, "CheckFailed"),
    ]
    async with aio.insecure_channel(c["plane_address"]) as channel, stream_to(channel) as stream:
        for sequence, (signer, code, reason) in enumerate(signers, 1):
            reply = await stream.send(signer, "Forward", body, seconds=HANG)
            assert answer(reply) == (sequence, code, reason, False)
    assert counted == [(True, reason) for _s, _c, reason in signers]
    assert c["driver"].forwards == [], "nothing forged was computed on"


async def test_a_peer_without_deliver_gets_unary_calls(cluster) -> None:  # noqa: F811
    # An agent older than Deliver: VNodeService with the unary methods only.
    c = cluster
    plane = c["plane"]
    events: collections.Counter[str] = collections.Counter()
    c["sender"].on_stream = lambda event: events.update([event])
    old = aio.server()
    unary = {name: functools.partial(plane._raw, name) for name in signed.METHODS}
    old.add_generic_rpc_handlers((signed.raw_handler(unary),))
    port = old.add_insecure_port("127.0.0.1:0")
    await old.start()
    try:
        for name in ("fc", "loss"):  # x and y send to these over the older server
            c["driver"].endpoints[name] = resolve_pb2.Endpoint(
                pnode_id="p", address=f"127.0.0.1:{port}", replica=0, epoch=3
            )
        await restore_all(c)
        await run_step(c)
        await run_step(c, step=2)
        assert len(c["sender"]._unary_only) == 1, "asked for Deliver once, then unary calls"
        # x -> fc and y -> loss may both open one before either hears UNIMPLEMENTED.
        assert events["unimplemented"] in (1, 2), events
    finally:
        await old.stop(None)


# -- real peer processes, over mutual TLS ------------------------------------------------------


@pytest.fixture
def ca_dir(tmp_path: Path) -> Path:
    identities.ca_flags(tmp_path)  # writes identity-ca.pem and its key for the peers
    return tmp_path


@contextlib.contextmanager
def peer_process(directory: Path, name: str) -> Iterator[tuple[subprocess.Popen[str], str]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.peer", str(directory), name],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2],
    )  # fmt: skip
    try:
        yield proc, procs.read_line(proc).rsplit(" ", 1)[1].strip()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGCONT)
        procs.stop(proc)


def to_act(index: int, **over: Any) -> vnode_pb2.ForwardRequest:
    fields: dict[str, Any] = {
        "job": "j", "request_id": f"r-{index}", "network": peer_mod.NETWORK,
        "sender_vnode": peer_mod.PARENT, "sender_epoch": peer_mod.EPOCH,
        "target_vnode": peer_mod.TARGET, "target_epoch": peer_mod.EPOCH, "attempt": 1,
        "tensor": tensors.encode(np.ones((2, 4), np.float32)),
    }  # fmt: skip
    fields.update(over)
    return vnode_pb2.ForwardRequest(**fields)


async def test_over_mutual_tls_each_message_must_be_signed_by_the_connections_peer(
    ca_dir: Path,
) -> None:
    sender = identities.pnode_signer(peer_mod.SENDER)
    with peer_process(ca_dir, "peer-a") as (_proc, address):
        channel = identities.data_plane_channel(address, "peer-a", client=sender)
        async with channel, stream_to(channel) as stream:
            cases = [
                (sender, grpc.StatusCode.OK, ""),
                # A valid signature by another PNode, on the sender's connection.
                (identities.pnode_signer("q"), grpc.StatusCode.PERMISSION_DENIED, "NotSender"),
                (rogue_ca_signer(peer_mod.SENDER), grpc.StatusCode.UNAUTHENTICATED,
                 "UnknownIssuer"),
                (signed.Signer(), grpc.StatusCode.UNAUTHENTICATED, "Unsigned"),
                (sender, grpc.StatusCode.OK, ""),
            ]  # fmt: skip
            for index, (signer, code, reason) in enumerate(cases):
                body = to_act(index).SerializeToString()
                reply = await stream.send(signer, "Forward", body, seconds=HANG)
                assert answer(reply) == (index + 1, code, reason, False)
            stale = to_act(9, target_epoch=peer_mod.EPOCH + 1).SerializeToString()
            reply = await stream.send(sender, "Forward", stale, seconds=HANG)
            assert answer(reply)[1:3] == (grpc.StatusCode.FAILED_PRECONDITION, "StaleEpoch")


@contextlib.asynccontextmanager
async def sender_peers(deadline: float) -> AsyncIterator[tuple[peers.Peers, Driver]]:
    """PNode "sender"'s `Peers`, resolving through the test Resolution of test_dataplane
    (its `endpoints` say where `act` is; the test changes them when its peer is replaced)."""
    resolution = Driver()
    server = aio.server()
    resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(resolution, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    orchestrators = peers.Orchestrators([f"127.0.0.1:{port}"])
    sender = peers.Peers(
        orchestrators,
        signer=identities.pnode_signer(peer_mod.SENDER),
        client_ca=lambda: identities.authority().certificate_pem,
        max_message_bytes=1 << 20,
        retry=peers.Retry(deadline=deadline, first_delay=0.05, max_delay=0.5, attempts=100),
    )
    try:
        yield sender, resolution
    finally:
        await sender.close()
        await orchestrators.close()
        await server.stop(None)


def endpoint(pnode: str, address: str) -> resolve_pb2.Endpoint:
    return resolve_pb2.Endpoint(pnode_id=pnode, address=address, replica=0, epoch=1)


async def test_a_stopped_peer_fails_delivery_at_its_deadline_and_a_new_stream_follows(
    ca_dir: Path,
) -> None:
    async with sender_peers(deadline=2.0) as (sender, resolution):
        with peer_process(ca_dir, "peer-a") as (proc, address):
            resolution.endpoints[peer_mod.TARGET] = endpoint("peer-a", address)
            assert await sender.send_forward(to_act(0))
            proc.send_signal(signal.SIGSTOP)
            delivered = await asyncio.wait_for(sender.send_forward(to_act(1)), HANG)
            assert delivered is False, "given up at the delivery's deadline, not hung"
            proc.send_signal(signal.SIGCONT)
            assert await asyncio.wait_for(sender.send_forward(to_act(2)), HANG)


async def test_messages_on_a_peer_sigkilled_mid_stream_reach_its_successor(
    ca_dir: Path,
) -> None:
    async with sender_peers(deadline=30.0) as (sender, resolution):
        events: collections.Counter[str] = collections.Counter()
        sender.on_stream = lambda event: events.update([event])
        with (
            peer_process(ca_dir, "peer-a") as (first, first_at),
            peer_process(ca_dir, "peer-b") as (_second, second_at),
        ):
            resolution.endpoints[peer_mod.TARGET] = endpoint("peer-a", first_at)
            assert await sender.send_forward(to_act(0))
            first.send_signal(signal.SIGSTOP)  # so what is sent next stays unanswered on it
            sends = [asyncio.create_task(sender.send_forward(to_act(i))) for i in range(1, 6)]
            stream = next(iter(sender._streams.values()))
            await wait.until(
                lambda: stream.unanswered, within=HANG, what="all five written to peer-a",
                accept=lambda n: n == len(sends),
            )  # fmt: skip
            assert not any(s.done() for s in sends)
            resolution.endpoints[peer_mod.TARGET] = endpoint("peer-b", second_at)  # re-placed
            first.send_signal(signal.SIGKILL)
            delivered = await asyncio.wait_for(asyncio.gather(*sends), HANG)
            assert delivered == [True] * len(sends)
            assert first.wait(timeout=HANG) == -signal.SIGKILL
            assert stream.failed is not None
            assert stream.failed.code == grpc.StatusCode.UNAVAILABLE
            assert events == {"opened": 2, "failed": 1}, "to peer-a, then to peer-b"


async def test_idle_streams_are_closed_and_the_next_message_opens_a_new_one(
    cluster,  # noqa: F811
) -> None:
    c = cluster
    sender = c["sender"]
    events: collections.Counter[str] = collections.Counter()
    sender.on_stream = lambda event: events.update([event])
    await restore_all(c)
    await run_step(c)
    opened = dict(sender._streams)
    assert opened, "the step's messages went on streams"
    for stream in opened.values():
        stream.last_used -= peers.STREAM_IDLE + 1  # as if a minute passed with no message
    await sender._close_idle_streams()
    assert sender._streams == {}
    assert events == {"opened": len(opened), "closed": len(opened)}
    assert all(s.failed is not None for s in opened.values())
    await run_step(c, step=2)
    assert set(sender._streams) == set(opened), "the same edges, on new streams"
    assert not set(sender._streams.values()) & set(opened.values())


class _Plaintext:
    """A call's context on a plaintext connection: no client certificate."""

    def auth_context(self) -> dict[str, list[bytes]]:
        return {}


async def test_a_waiting_message_does_not_hold_back_the_ones_behind_it_up_to_a_window(
    cluster,  # noqa: F811
) -> None:
    """Messages of one stream are handled concurrently (as the unary calls they replace
    were) and answered in order; a stream that floods the receiver gets at most
    `STREAM_WINDOW` of them in hand at once."""
    plane = cluster["plane"]
    started: list[int] = []
    gate = asyncio.Event()

    async def held(raw: bytes, context: Any, peer: bytes) -> vnode_pb2.DeliverResponse:
        sequence = int(raw)
        started.append(sequence)
        await gate.wait()
        return vnode_pb2.DeliverResponse(sequence=sequence)

    plane._answer = held
    count = 3 * dataplane.STREAM_WINDOW

    async def requests() -> AsyncIterator[bytes]:
        for sequence in range(1, count + 1):
            yield str(sequence).encode()

    answers = plane._deliver_stream(requests(), _Plaintext())
    first = asyncio.ensure_future(anext(answers))
    await wait.until(
        lambda: len(started),
        within=HANG,
        what="the messages behind the first one started while it waits",
        accept=lambda n: n >= dataplane.STREAM_WINDOW,
    )
    assert not first.done()
    assert len(started) == dataplane.STREAM_WINDOW, "the window bounds what is in hand"
    gate.set()
    got = [(await first).sequence] + [reply.sequence async for reply in answers]
    assert got == list(range(1, count + 1)), "answered in order"
