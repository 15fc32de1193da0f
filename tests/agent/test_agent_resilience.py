"""The agent's control loops against a scripted orchestrator: a real grpc.aio server on a
loopback port that answers each call as the test says — an error of any kind, a FENCED
lease, a stream that resets or hangs, or bytes that are no protobuf at all. Whatever it
does, the loops keep going, back off within their caps, and one fence makes one Register.

Backoff waits are recorded, not slept (`Agent._sleep` and `_pause` replaced), so the
retries run as fast as the loopback allows; nothing here waits for time to pass."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import logging
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import grpc
import pytest
from grpc import aio

from agent import agent as agent_mod
from agent import capacity, dataplane, keys, link, peers
from api.dcnr.v1 import pnode_pb2
from tests.support import identities, wait

SERVICE = "dcnr.v1.PNodeService"
INTERVAL = 0.05  # the heartbeat interval the fake asks for: the agent's minimum
#: Not a protobuf message of any type: a field number 0 is invalid on the wire.
GARBAGE = b"\x00\xff\xfe\xfd"
ERRORS = {
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "deadline": grpc.StatusCode.DEADLINE_EXCEEDED,
    "cancelled": grpc.StatusCode.CANCELLED,
    "internal": grpc.StatusCode.INTERNAL,
    "refused": grpc.StatusCode.FAILED_PRECONDITION,
}


class FakeOrchestrator:
    """One scripted PNodeService. `heartbeats`, `registers` and `watches` are queues of
    what the next calls get (empty: a normal answer); `seen` counts the calls."""

    def __init__(self) -> None:
        self.heartbeats: collections.deque[str] = collections.deque()
        self.registers: collections.deque[str] = collections.deque()
        self.watches: collections.deque[str] = collections.deque()
        self.seen: collections.Counter[str] = collections.Counter()
        self.incarnation = 0
        self.heartbeat_incarnations: list[int] = []
        self._fenced = asyncio.Event()
        #: "hold": the heartbeat waits for `release` (set by the test), `holding` set meanwhile
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.server = aio.server()
        handlers = {
            "Register": grpc.unary_unary_rpc_method_handler(
                self.register,
                request_deserializer=pnode_pb2.RegisterRequest.FromString,
                response_serializer=bytes,
            ),
            "Heartbeat": grpc.unary_unary_rpc_method_handler(
                self.heartbeat,
                request_deserializer=pnode_pb2.HeartbeatRequest.FromString,
                response_serializer=bytes,
            ),
            "WatchAssignments": grpc.unary_stream_rpc_method_handler(
                self.watch,
                request_deserializer=pnode_pb2.WatchAssignmentsRequest.FromString,
                response_serializer=bytes,
            ),
        }
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.address = f"127.0.0.1:{self.server.add_insecure_port('127.0.0.1:0')}"

    def fence_all(self) -> None:
        """As if the PNode had registered elsewhere: every call of the current
        incarnation is fenced from now on, open streams included."""
        self.incarnation += 1
        self._fenced.set()

    @staticmethod
    async def _misbehave(what: str, context: Any) -> bytes | None:
        """The error or garbage `what` stands for; None: answer normally."""
        if what in ERRORS:
            await context.abort(ERRORS[what], f"scripted {what}")
        if what == "garbage":
            return GARBAGE
        return None

    async def register(self, request: pnode_pb2.RegisterRequest, context: Any) -> bytes:
        self.seen["register"] += 1
        what = self.registers.popleft() if self.registers else ""
        bad = await self._misbehave(what, context)
        if bad is not None:
            return bad
        self.incarnation += 1
        now = identities.now()
        reply = pnode_pb2.RegisterResponse(
            pnode_id=request.name,
            incarnation=self.incarnation,
            credential="credential",
            certificate=identities.authority().issue_pnode(
                request.csr, request.name, now, dt.timedelta(hours=1)
            ),
            identity_ca=identities.authority().certificate_pem,
        )
        reply.heartbeat_interval.FromTimedelta(dt.timedelta(seconds=INTERVAL))
        return reply.SerializeToString()

    async def heartbeat(self, request: pnode_pb2.HeartbeatRequest, context: Any) -> bytes:
        self.seen["heartbeat"] += 1
        self.heartbeat_incarnations.append(request.incarnation)
        what = self.heartbeats.popleft() if self.heartbeats else ""
        if what == "hold":
            self.holding.set()
            await self.release.wait()
        bad = await self._misbehave(what, context)
        if bad is not None:
            return bad
        reply = pnode_pb2.HeartbeatResponse()
        if what == "fenced" or request.incarnation != self.incarnation:
            reply.lease_state = pnode_pb2.LEASE_STATE_FENCED
        elif what == "bad-certificate":
            reply.certificate = b"-----BEGIN CERTIFICATE-----\nnot one\n"
        else:
            reply.heartbeat_interval.FromTimedelta(dt.timedelta(seconds=INTERVAL))
        return reply.SerializeToString()

    async def watch(
        self, request: pnode_pb2.WatchAssignmentsRequest, context: Any
    ) -> AsyncIterator[bytes]:
        self.seen["watch"] += 1
        what = self.watches.popleft() if self.watches else "hang"
        if what == "reset":  # one set, then the stream breaks
            yield pnode_pb2.WatchAssignmentsResponse().SerializeToString()
            await context.abort(grpc.StatusCode.UNAVAILABLE, "stream reset")
        if what == "fenced" or request.incarnation != self.incarnation:
            yield pnode_pb2.WatchAssignmentsResponse(
                lease_state=pnode_pb2.LEASE_STATE_FENCED
            ).SerializeToString()
            return
        bad = await self._misbehave(what, context)
        if bad is not None:
            yield bad
            return
        await self._fenced.wait()  # "hang": open until the client goes away, or a fence
        if request.incarnation != self.incarnation:
            yield pnode_pb2.WatchAssignmentsResponse(
                lease_state=pnode_pb2.LEASE_STATE_FENCED
            ).SerializeToString()


class NoVNodes:
    """The data plane as far as the control loops need it."""

    def __init__(self) -> None:
        self.dropped = 0

    def drop_all(self) -> None:
        self.dropped += 1

    def statuses(self) -> list[Any]:
        return []

    def reconcile(self, assignments: Any) -> None:
        pass


class Running:
    """An agent with its heartbeat and watch loops running against `addresses`, its
    backoff waits recorded in `delays` (and yielded, never slept)."""

    def __init__(self, addresses: list[str], state_dir: Path) -> None:
        self.orchestrators = peers.Orchestrators(addresses)
        self.plane = NoVNodes()
        self.states: list[link.State] = []
        self.heartbeat_results: list[str] = []
        self.agent = agent_mod.Agent(
            agent_mod.AgentConfig(
                name="p",
                advertise="127.0.0.1:1",
                capabilities=capacity.Capabilities(cpu_millis=1000, memory_bytes=2**30),
                state_dir=state_dir,
            ),
            orchestrators=self.orchestrators,
            data_plane=cast(dataplane.DataPlane, self.plane),
            keeper=keys.Keeper(),
            on_link=self.states.append,
            on_heartbeat=self.heartbeat_results.append,
            rng=random.Random(16),
        )
        #: (the task that waited: "heartbeat", "watch" or the caller's, seconds)
        self.waits: list[tuple[str, float]] = []

        async def record(seconds: float) -> None:
            task = asyncio.current_task()
            self.waits.append((task.get_name() if task else "", seconds))
            await asyncio.sleep(0)

        self.agent._sleep = record  # type: ignore[method-assign]
        self.agent._pause = record  # type: ignore[method-assign]
        self.loops: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.agent.register()
        self.loops = [
            asyncio.create_task(self.agent.heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self.agent.watch_loop(), name="watch"),
        ]

    @property
    def delays(self) -> list[float]:
        return [seconds for _, seconds in self.waits]

    def delays_of(self, loop: str) -> list[float]:
        return [seconds for name, seconds in self.waits if name == loop]

    def alive(self) -> bool:
        for task in self.loops:
            if task.done():
                raise AssertionError(f"a loop ended: {task!r}")
        return True

    async def stop(self) -> None:
        for task in self.loops:
            task.cancel()
        for task in self.loops:
            with pytest.raises(asyncio.CancelledError):
                await task  # a real cancel is never swallowed
        await self.orchestrators.close()


@pytest.fixture
async def fake() -> AsyncIterator[FakeOrchestrator]:
    server = FakeOrchestrator()
    await server.server.start()
    yield server
    await server.server.stop(None)


@pytest.fixture
async def running(fake: FakeOrchestrator, tmp_path: Path) -> AsyncIterator[Running]:
    started = Running([fake.address], tmp_path)
    await started.start()
    yield started
    await started.stop()


async def _beats(fake: FakeOrchestrator, running: Running, count: int) -> None:
    """Until `count` more heartbeats arrived, the loops alive throughout."""
    target = fake.seen["heartbeat"] + count
    await wait.until(
        lambda: running.alive() and fake.seen["heartbeat"] >= target,
        within=30,
        what=f"{count} more heartbeats",
    )


HEARTBEAT_FAULTS = [
    "unavailable",
    "deadline",
    "cancelled",
    "internal",
    "refused",
    "garbage",
    "bad-certificate",
]


@pytest.mark.parametrize("fault", HEARTBEAT_FAULTS)
async def test_heartbeats_go_on_through_every_fault_and_back_off_within_the_interval(
    fake: FakeOrchestrator, running: Running, fault: str
) -> None:
    await _beats(fake, running, 2)
    fake.heartbeats.extend([fault] * 12)
    await wait.until(lambda: running.alive() and not fake.heartbeats, within=30, what="faults")
    await _beats(fake, running, 3)
    assert running.agent.incarnation == 1  # none of these is a fence
    assert running.agent.heartbeat_interval == INTERVAL  # a silly interval is not kept
    heartbeat = running.delays_of("heartbeat")
    assert heartbeat, "failures were retried without backoff"
    assert all(d <= INTERVAL for d in heartbeat), heartbeat


@pytest.mark.parametrize("fault", ["reset", "garbage", "unavailable", "internal", "fenced"])
async def test_the_watch_goes_on_through_resets_garbage_and_errors(
    fake: FakeOrchestrator, running: Running, fault: str
) -> None:
    await wait.until(lambda: fake.seen["watch"] >= 1, within=30, what="a first watch")
    fake.watches.extend([fault] * 5)
    # the hanging first stream ends with the next fail-over or never: end it by moving
    await running.orchestrators.fail_over()
    await wait.until(
        lambda: running.alive() and not fake.watches and fake.seen["watch"] >= 7,
        within=30,
        what="watches past the faults",
    )
    # "fenced" is the heartbeat's to act on: the fake fences only the watch, so no
    # registration follows, and none ever comes from the watch loop
    assert fake.seen["register"] == 1
    assert running.agent.incarnation == 1


async def test_a_fail_over_lets_a_call_in_flight_on_the_old_channel_finish(
    fake: FakeOrchestrator, running: Running
) -> None:
    """Another loop moving to the next replica must not cancel this one's call."""
    await _beats(fake, running, 2)
    fake.heartbeats.append("hold")
    await wait.until(fake.holding.is_set, within=30, what="a heartbeat held by the server")
    await running.orchestrators.fail_over()  # as resolution or the watch would
    answered = len(running.heartbeat_results)
    fake.release.set()
    await _beats(fake, running, 2)
    assert running.heartbeat_results[answered] == "ok"  # the held one, answered
    assert "failed" not in running.heartbeat_results


async def test_a_stream_whose_channel_is_closed_under_it_is_watched_again(
    fake: FakeOrchestrator, running: Running
) -> None:
    """The chaos run's crash: a channel closed under an open WatchAssignments raises
    asyncio.CancelledError in the watch loop, which is not the loop being stopped."""
    await wait.until(lambda: fake.seen["watch"] >= 1, within=30, what="a first watch")
    old = running.orchestrators.channel()
    running.orchestrators.on_fail_over = lambda _address: None  # the stream is not told
    await running.orchestrators.fail_over()
    await old.close(None)  # cancels the stream under the watch
    await wait.until(
        lambda: running.alive() and fake.seen["watch"] >= 2, within=30, what="a new watch"
    )
    await _beats(fake, running, 2)


async def test_a_fence_seen_by_both_loops_registers_exactly_once(
    fake: FakeOrchestrator, running: Running
) -> None:
    await _beats(fake, running, 2)
    fake.fence_all()
    await wait.until(
        lambda: running.alive() and fake.heartbeat_incarnations[-3:] == [3, 3, 3],
        within=30,
        what="heartbeats of the re-registered incarnation",
    )
    assert fake.seen["register"] == 2  # the start, and one after the fence
    assert running.agent.incarnation == 3
    assert running.plane.dropped == 1


async def test_a_fenced_heartbeat_leads_to_exactly_one_register(
    fake: FakeOrchestrator, running: Running
) -> None:
    await _beats(fake, running, 2)
    fake.heartbeats.append("fenced")
    await wait.until(lambda: fake.seen["register"] >= 2, within=30, what="a registration")
    await _beats(fake, running, 5)
    assert fake.seen["register"] == 2
    assert running.agent.incarnation == 2


async def test_register_failures_are_retried_with_capped_jittered_backoff(
    fake: FakeOrchestrator, tmp_path: Path
) -> None:
    started = Running([fake.address], tmp_path)
    fake.registers.extend(["unavailable", "garbage", "deadline", "internal"] * 5)
    await started.start()  # returns once registered: 20 failures first
    try:
        assert fake.seen["register"] == 21
        assert len(started.delays) == 20
        assert all(0 <= d <= agent_mod.REGISTER_BACKOFF_MAX for d in started.delays)
        assert max(started.delays) > 1.0  # it grew from 0.1: backoff, not a fixed pause
        assert started.agent.incarnation == 1
    finally:
        await started.stop()


async def test_an_unanswering_first_address_at_start_up_is_said_once(
    fake: FakeOrchestrator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"127.0.0.1:{_closed_port()}"
    caplog.set_level(logging.DEBUG, logger="dcnr.agent")
    started = Running([dead, fake.address], tmp_path)
    await started.start()
    await started.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert warnings == [
        f"orchestrator {dead} not answering: register failed with UNAVAILABLE",
        f"reconnecting to orchestrator {fake.address}",
    ]
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert f"connected to orchestrator {fake.address}" in infos


async def test_a_refused_first_registration_is_final(tmp_path: Path) -> None:
    """The one way out besides SIGTERM: the orchestrator refuses our name at start-up."""
    started = Running(["127.0.0.1:1"], tmp_path)
    try:
        with pytest.raises(agent_mod.RegistrationRefused, match="name taken"):
            await _refusing_register(started)
    finally:
        await started.orchestrators.close()


async def _refusing_register(started: Running) -> None:
    server = aio.server()
    server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Register": grpc.unary_unary_rpc_method_handler(
                        _permission_denied,
                        request_deserializer=pnode_pb2.RegisterRequest.FromString,
                        response_serializer=bytes,
                    )
                },
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    started.orchestrators.addresses = [f"127.0.0.1:{port}"]
    try:
        await started.agent.register()
    finally:
        await server.stop(None)


async def _permission_denied(request: Any, context: Any) -> bytes:
    await context.abort(grpc.StatusCode.PERMISSION_DENIED, "name taken")
    return b""


@pytest.fixture
async def two() -> AsyncIterator[tuple[FakeOrchestrator, FakeOrchestrator]]:
    first, second = FakeOrchestrator(), FakeOrchestrator()
    await first.server.start()
    await second.server.start()
    yield first, second
    await first.server.stop(None)
    await second.server.stop(None)


async def test_an_unanswering_replica_is_left_for_the_next_with_one_log_line_per_change(
    two: tuple[FakeOrchestrator, FakeOrchestrator],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first, second = two
    caplog.set_level(logging.DEBUG, logger="dcnr.agent")
    started = Running([first.address, second.address], tmp_path)
    await started.start()
    try:
        await wait.until(lambda: first.seen["watch"] >= 1, within=30, what="a watch on first")
        second.incarnation = first.incarnation  # one store behind both
        # first stops answering heartbeats; its watch stream hangs open
        first.heartbeats.extend(["unavailable"] * 1000)
        await wait.until(
            lambda: started.alive() and second.seen["heartbeat"] >= 5 and second.seen["watch"] >= 1,
            within=30,
            what="heartbeats and a watch on the second replica",
        )
        assert started.orchestrators.address == second.address
        assert started.agent.incarnation == 1  # a fail-over is no fence
    finally:
        await started.stop()
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    changes = [m for m in warnings if "orchestrator" in m and "register" not in m]
    assert changes == [
        f"lost orchestrator {first.address}: heartbeat failed with UNAVAILABLE",
        f"reconnecting to orchestrator {second.address}",
        f"connected to orchestrator {second.address} again after "
        + changes[-1].rsplit(" after ", 1)[-1],
    ], warnings
    assert started.states == [
        link.State.CONNECTED,
        link.State.LOST,
        link.State.RECONNECTING,
        link.State.CONNECTED,
    ]


async def test_backing_off_over_dead_replicas_says_so_once_per_address(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Rotating over replicas that never answer: retries at debug level, one line per
    address, and the heartbeat never waits longer than its interval."""
    fake = FakeOrchestrator()
    await fake.server.start()
    caplog.set_level(logging.DEBUG, logger="dcnr.agent")
    dead = [f"127.0.0.1:{_closed_port()}" for _ in range(2)]
    started = Running([fake.address, *dead], tmp_path)
    await started.start()
    await fake.server.stop(None)  # the only live one goes away
    try:
        await wait.until(
            lambda: started.alive() and len(started.delays) >= 30,
            within=30,
            what="thirty retries",
        )
    finally:
        await started.stop()
    reconnecting = [r.getMessage() for r in caplog.records if "reconnecting" in r.getMessage()]
    warned = [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and "reconnecting" in r.getMessage()
    ]
    assert len(reconnecting) > len(warned)
    # the replica it lost was named in the "lost" line; each other address once
    assert sorted(warned) == sorted(f"reconnecting to orchestrator {a}" for a in dead)
    assert started.delays_of("heartbeat")
    assert all(d <= INTERVAL for d in started.delays_of("heartbeat"))
    assert all(d <= agent_mod.WATCH_BACKOFF_MAX for d in started.delays_of("watch"))


def _closed_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def test_backoff_grows_to_its_cap_with_full_jitter() -> None:
    backoff = link.Backoff(first=0.1, cap=5.0, rng=random.Random(1))
    ceilings = [backoff.ceiling(n) for n in range(1, 12)]
    assert ceilings == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0, 5.0]
    delays = [backoff.delay(n) for n in range(1, 2000)]
    assert all(0 <= d <= 5.0 for d in delays)
    late = delays[100:]
    assert min(late) < 0.5  # full jitter: the whole of [0, cap]
    assert max(late) > 4.5
    assert backoff.ceiling(50, cap=0.3) == 0.3


@pytest.mark.parametrize(("first", "cap"), [(0, 1), (2, 1), (-1, 5)])
def test_a_backoff_that_cannot_work_names_its_values(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match=f"first={first}.*cap={cap}"):
        link.Backoff(first=first, cap=cap)


@pytest.mark.parametrize(
    ("seconds", "nanos", "expected"),
    [(0, 0, 7.0), (-5, 0, 7.0), (0, 1, agent_mod.MIN_HEARTBEAT_INTERVAL),
     (315360000, 0, agent_mod.MAX_HEARTBEAT_INTERVAL), (2, 500_000_000, 2.5)],
)  # fmt: skip
def test_a_heartbeat_interval_from_the_orchestrator_is_kept_within_bounds(
    seconds: int, nanos: int, expected: float
) -> None:
    duration = pnode_pb2.HeartbeatResponse().heartbeat_interval
    duration.seconds, duration.nanos = seconds, nanos
    assert agent_mod._interval(duration, 7.0) == expected


async def test_a_loop_ended_by_a_bug_is_started_again_and_only_sigterm_ends_run(
    fake: FakeOrchestrator, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    started = Running([fake.address], tmp_path)
    agent = started.agent
    real_watch = agent.watch_loop
    calls = 0

    async def buggy_then_real() -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug in the watch loop")
        await real_watch()

    agent.watch_loop = buggy_then_real  # type: ignore[method-assign]
    run = asyncio.create_task(agent.run())
    try:
        await wait.until(
            lambda: not run.done() and fake.seen["watch"] >= 1 and fake.seen["heartbeat"] >= 3,
            within=30,
            what="the watch loop started again while the agent runs",
        )
    finally:
        agent.request_stop()  # SIGTERM's handler
        await asyncio.wait_for(run, 30)  # drains (nothing assigned) and returns
        await started.orchestrators.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == ["the watch loop ended; starting it again"]


async def test_a_stop_that_arrives_as_a_loop_wakes_is_not_swallowed() -> None:
    """The agent's waits let a cancel through even when the event they wait on is set in
    the same turn of the loop (asyncio.wait_for on 3.11 returned normally then, and a
    SIGTERMed agent fenced at that moment heartbeated on until it was killed)."""
    event = asyncio.Event()
    waiting = asyncio.create_task(agent_mod._wait(event, 10.0))
    await asyncio.sleep(0)  # the task now waits on the event
    event.set()
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting


async def test_a_wait_ends_at_its_timeout_or_its_event() -> None:
    event = asyncio.Event()
    await agent_mod._wait(event, 0.0)  # times out at once, quietly
    event.set()
    await agent_mod._wait(event, 10.0)  # set: returns at once


def test_the_heartbeat_timeout_leaves_room_in_a_short_lease() -> None:
    """A quarter of the lease when that is under 2 s, never under the interval."""
    a = agent_mod.Agent.__new__(agent_mod.Agent)  # only the two numbers matter here
    a.heartbeat_interval, a.lease_duration = 1.0, 4.0
    assert a._heartbeat_timeout() == 1.0
    a.heartbeat_interval, a.lease_duration = 1.0, 30.0
    assert a._heartbeat_timeout() == 2.0
    a.heartbeat_interval, a.lease_duration = 10.0, 30.0
    assert a._heartbeat_timeout() == 10.0
