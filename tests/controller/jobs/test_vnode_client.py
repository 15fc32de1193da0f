"""The VNode client's policy against a fake transport: which failures are retried, when it
gives up, and how a pinned epoch stops it following a slot elsewhere. On the fake clock:
backoff costs no real time. (The gRPC transport itself is exercised by the driver tests.)"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any, cast

import pytest

from api.dcnr.v1 import vnode_pb2
from controller.jobs import vnode_client
from controller.runtime import clock as clocks
from controller.state import view as view_mod

#: Fake-clock tests finish at once; a hang is a bug to report quickly, not in two minutes.
pytestmark = pytest.mark.timeout(10)


class Endpoints:
    """The one question the client asks the view: the live endpoints of a VNode."""

    def __init__(self) -> None:
        self.live: dict[tuple[str, str], list[view_mod.Endpoint]] = {}

    def place(self, vnode: str, *, epoch: int, address: str = "10.0.0.1:7000") -> None:
        self.live[("net", vnode)] = [view_mod.Endpoint("p1", address, 0, epoch)]

    def endpoints(self, network: str, vnode: str, now: datetime) -> list[view_mod.Endpoint]:
        return list(self.live.get((network, vnode), []))


class FakeTransport:
    """Answers each call with the next of `outcomes` (an exception is raised)."""

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[tuple[str, str, Any, float]] = []
        self.closed = False

    async def _next(self, method: str, address: str, request: Any, seconds: float) -> Any:
        self.calls.append((method, address, request, seconds))
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def forward(
        self, address: str, request: vnode_pb2.ForwardRequest, *, seconds: float, pnode: str = ""
    ):
        return await self._next("forward", address, request, seconds)

    async def restore(
        self, address: str, request: vnode_pb2.RestoreRequest, *, seconds: float, pnode: str = ""
    ):
        return await self._next("restore", address, request, seconds)

    async def checkpoint(
        self, address: str, request: vnode_pb2.CheckpointRequest, *, seconds: float, pnode: str = ""
    ):
        return await self._next("checkpoint", address, request, seconds)

    async def describe_data(
        self,
        address: str,
        request: vnode_pb2.DescribeDataRequest,
        *,
        seconds: float,
        pnode: str = "",
    ):
        return await self._next("describe_data", address, request, seconds)

    async def close(self) -> None:
        self.closed = True


async def wake_next(clock: clocks.FakeClock) -> None:
    """Move the clock to the earliest sleeper's deadline (the backoff), and no further."""
    await clock.settle()
    deadline = clock.next_deadline()
    assert deadline is not None, "nothing is waiting"
    await clock.advance(deadline - clock.monotonic())


def unavailable() -> vnode_client.PeerError:
    return vnode_client.PeerError("UNAVAILABLE: connection reset", retryable=True)


def client(
    transport: FakeTransport, view: Endpoints, clock: clocks.FakeClock
) -> vnode_client.VNodeClient:
    return vnode_client.VNodeClient(
        view=cast(view_mod.View, view),
        clock=clock,
        transport=transport,
        rpc_timeout=5.0,
        retry_initial=0.05,
        retry_max=1.0,
    )


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


@pytest.fixture
def view() -> Endpoints:
    it = Endpoints()
    it.place("x", epoch=3)
    return it


async def test_a_retryable_failure_is_retried_with_backoff_then_succeeds(clock, view) -> None:
    answer = vnode_pb2.RestoreResponse(step=7)
    transport = FakeTransport(unavailable(), unavailable(), answer)
    request = vnode_pb2.RestoreRequest(vnode="x", epoch=3)
    call = asyncio.ensure_future(
        client(transport, view, clock).restore(
            "net", "x", request, deadline=clock.monotonic() + 10, epoch=3
        )
    )
    start = clock.monotonic()
    await clock.settle()
    assert len(transport.calls) == 1
    assert clock.next_deadline() == pytest.approx(start + 0.05), "the first backoff"
    await wake_next(clock)
    assert len(transport.calls) == 2
    assert clock.next_deadline() == pytest.approx(start + 0.15), "then twice as long"
    await wake_next(clock)
    assert await call == answer
    assert [c[:3] for c in transport.calls] == [("restore", "10.0.0.1:7000", request)] * 3


async def test_each_call_s_timeout_is_the_rpc_timeout_or_what_is_left(clock, view) -> None:
    transport = FakeTransport(unavailable(), vnode_pb2.CheckpointResponse())
    call = asyncio.ensure_future(
        client(transport, view, clock).checkpoint(
            "net", "x", vnode_pb2.CheckpointRequest(), deadline=clock.monotonic() + 5.02
        )
    )
    await wake_next(clock)
    await call
    assert [c[3] for c in transport.calls] == [5.0, pytest.approx(4.97)]


async def test_a_refusal_for_good_is_raised_at_once(clock, view) -> None:
    refused = vnode_client.PeerError("INVALID_ARGUMENT: tensor: bad dtype", retryable=False)
    transport = FakeTransport(refused, vnode_pb2.ForwardResponse())
    with pytest.raises(vnode_client.SendFailed) as failed:
        await client(transport, view, clock).forward(
            "net", "x", vnode_pb2.ForwardRequest(), deadline=clock.monotonic() + 10
        )
    assert str(failed.value) == "net.x.0 at 10.0.0.1:7000: INVALID_ARGUMENT: tensor: bad dtype"
    assert len(transport.calls) == 1
    assert not isinstance(failed.value, vnode_client.EpochMoved)


async def test_retries_stop_at_the_deadline_naming_the_last_failure(clock, view) -> None:
    transport = FakeTransport(*[unavailable() for _ in range(20)])
    call = asyncio.ensure_future(
        client(transport, view, clock).forward(
            "net", "x", vnode_pb2.ForwardRequest(), deadline=clock.monotonic() + 1.0
        )
    )
    await clock.advance(1.0)
    with pytest.raises(vnode_client.SendFailed) as failed:
        await call
    assert str(failed.value) == "net.x.0: gave up retrying; last: UNAVAILABLE: connection reset"
    assert 1 < len(transport.calls) < 20


async def test_a_pinned_epoch_that_moved_fails_without_calling(clock, view) -> None:
    view.place("x", epoch=4)
    transport = FakeTransport(vnode_pb2.RestoreResponse())
    with pytest.raises(vnode_client.EpochMoved) as moved:
        await client(transport, view, clock).restore(
            "net", "x", vnode_pb2.RestoreRequest(), deadline=clock.monotonic() + 10, epoch=3
        )
    assert str(moved.value) == "net.x.0: epoch moved from 3 to 4 (re-placed or re-issued)"
    assert transport.calls == []


async def test_an_epoch_moving_between_retries_ends_the_call(clock, view) -> None:
    stale = vnode_client.PeerError("FAILED_PRECONDITION: epoch 3 is stale", retryable=True)
    transport = FakeTransport(stale, vnode_pb2.ForwardResponse())
    call = asyncio.ensure_future(
        client(transport, view, clock).forward(
            "net", "x", vnode_pb2.ForwardRequest(), deadline=clock.monotonic() + 10, epoch=3
        )
    )
    await clock.settle()
    view.place("x", epoch=4, address="10.0.0.2:7000")
    await wake_next(clock)
    with pytest.raises(vnode_client.EpochMoved):
        await call
    assert len(transport.calls) == 1


async def test_an_unpinned_call_follows_the_slot_and_addresses_its_epoch(clock, view) -> None:
    stale = vnode_client.PeerError("FAILED_PRECONDITION: epoch 3 is stale", retryable=True)
    transport = FakeTransport(stale, vnode_pb2.ForwardResponse())

    def addressed(endpoint: view_mod.Endpoint) -> vnode_pb2.ForwardRequest:
        return vnode_pb2.ForwardRequest(target_vnode="x", target_epoch=endpoint.epoch)

    call = asyncio.ensure_future(
        client(transport, view, clock).forward(
            "net", "x", addressed, deadline=clock.monotonic() + 10
        )
    )
    await clock.settle()
    view.place("x", epoch=4, address="10.0.0.2:7000")
    await wake_next(clock)
    await call
    sent = [(address, request.target_epoch) for _, address, request, _ in transport.calls]
    assert sent == [("10.0.0.1:7000", 3), ("10.0.0.2:7000", 4)]


async def test_no_live_endpoint_is_waited_for_until_the_deadline(clock, view) -> None:
    transport = FakeTransport()
    call = asyncio.ensure_future(
        client(transport, view, clock).forward(
            "net", "y", vnode_pb2.ForwardRequest(), deadline=clock.monotonic() + 1.0
        )
    )
    await clock.advance(1.0)
    with pytest.raises(vnode_client.SendFailed) as failed:
        await call
    assert str(failed.value) == "net.y.0: gave up retrying; last: no live endpoint"


async def test_closing_the_client_closes_its_transport(clock, view) -> None:
    transport = FakeTransport()
    await client(transport, view, clock).close()
    assert transport.closed


async def test_describe_data_asks_the_live_epoch_and_keeps_the_agent_s_reason(clock, view) -> None:
    """A data error must reach the driver as such: it fails the job, where a VNode not
    hosted yet only rolls back."""
    refused = vnode_client.PeerError(
        "INVALID_ARGUMENT: data.url: no such file", retryable=False, reason="DataError"
    )
    answer = vnode_pb2.DescribeDataResponse(has_field=True, shape=[10])
    transport = FakeTransport(answer, refused)
    asked = client(transport, view, clock)

    def addressed(endpoint: view_mod.Endpoint) -> vnode_pb2.DescribeDataRequest:
        return vnode_pb2.DescribeDataRequest(vnode="x", epoch=endpoint.epoch)

    view.place("x", epoch=4)
    assert await asked.describe_data("net", "x", addressed, deadline=clock.monotonic() + 5) == (
        answer
    )
    assert transport.calls[0][2].epoch == 4
    with pytest.raises(vnode_client.SendFailed) as failed:
        await asked.describe_data("net", "x", addressed, deadline=clock.monotonic() + 5)
    assert failed.value.reason == "DataError"
    assert "no such file" in str(failed.value)
