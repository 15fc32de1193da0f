"""The agent's control loop: register, heartbeat, follow the assignment set, drain on leave.

Level-based like the orchestrator's loops: every assignment set is the full desired state,
and `DataPlane.reconcile` makes the hosted instances equal to it, whatever was missed in
between. Two sources deliver sets, the heartbeat (pull) and WatchAssignments (push); the
newest version of the current incarnation wins, so applying both is harmless.

Fencing (the orchestrator says our lease lapsed or our incarnation is old) means our
VNodes were moved: drop every instance, then register again under the same name with the
kept credential. The heartbeat loop alone re-registers (the watch stream, seeing a fence,
wakes it), so one fence makes exactly one new incarnation. The credential lives in memory
and in `<state-dir>/credential.json` (mode 0600), so a restarted agent re-registers under
its name instead of becoming a stranger; the name is kept there too when the orchestrator
generated it.

Identity (`agent.keys`): Register carries a CSR for the agent's in-memory key and its answer
the PNode's certificate and the CA bundle; a heartbeat carries a CSR again once 2/3 of the
certificate's lifetime has passed, and its answer the renewed certificate.

Nothing the orchestrator side does ends a loop or the process (docs/operations.md, "When
agents cannot reach the orchestrator"): a call without an answer (UNAVAILABLE,
DEADLINE_EXCEEDED, CANCELLED) moves to the next orchestrator address
(`peers.Orchestrators`; the calls other loops have in flight on the old channel finish
there); every failure, a reset stream or a garbage answer included, is retried with
capped, fully jittered backoff (`agent.link`), and the link's state is logged once per
change. The process exits only after its own SIGTERM, or when the first Register is
refused (a configuration error).
Leaving (SIGTERM): Deregister; the orchestrator drains us (places our VNodes elsewhere)
while we keep heartbeating and serving the data plane; once our set is empty (or the
drain deadline passed) we Deregister again and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from agent import capacity, dataplane, keys, link, peers
from api import version
from api.dcnr.v1 import pnode_pb2, pnode_pb2_grpc, validation_pb2, validation_pb2_grpc

log = logging.getLogger("dcnr.agent")

VERSION = f"dcnr-agent/{version.current()}"
FENCED = pnode_pb2.LEASE_STATE_FENCED
#: No answer from this orchestrator: move to the next address.
_SWITCH = (
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED,
)
#: Register refusals only the operator can cure (a taken name, a lost credential).
_REFUSED = (
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.INVALID_ARGUMENT,
)
#: Longest waits between attempts (capped exponential backoff, full jitter: `link.Backoff`).
#: Heartbeats are also never further apart than the heartbeat interval.
REGISTER_BACKOFF_MAX = 5.0
HEARTBEAT_BACKOFF_MAX = 5.0
WATCH_BACKOFF_MAX = 5.0
#: Bounds on the heartbeat interval an orchestrator may ask for.
MIN_HEARTBEAT_INTERVAL = 0.05
MAX_HEARTBEAT_INTERVAL = 60.0


class RegistrationRefused(Exception):
    """The orchestrator will not let us have our name (another machine's, or our
    credential was lost): only the operator can fix that."""


@dataclass(frozen=True)
class AgentConfig:
    name: str
    advertise: str
    capabilities: capacity.Capabilities
    state_dir: Path
    drain_deadline: float = 30.0
    #: Sent on every Register; the orchestrator needs it only when it has join tokens and
    #: this is not a re-registration with the PNode's own credential.
    join_token: str = ""


#: Seconds between the end of a WatchAssignments stream and the next one.
WATCH_PACING = 0.2


class Agent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        orchestrators: peers.Orchestrators,
        data_plane: dataplane.DataPlane,
        keeper: keys.Keeper,
        on_heartbeat: Callable[[str], None] | None = None,
        on_register: Callable[[str], None] | None = None,
        on_link: Callable[[link.State], None] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        """`on_heartbeat(result)`: each heartbeat, "ok", "fenced" or "failed";
        `on_register(result)`: each Register attempt, "registered", "failed" or "refused";
        `on_link(state)`: each change of the link to the orchestrator (for
        `agent.metrics`). `rng`: the jitter of the backoffs."""
        self._on_heartbeat = on_heartbeat or (lambda _result: None)
        self._on_register = on_register or (lambda _result: None)
        self._config = config
        self._orchestrators = orchestrators
        self._data_plane = data_plane
        self._keys = keeper
        self.name = config.name
        self._credential = ""
        self.incarnation = 0
        self.version = 0
        self.assignment_count = 0
        self.heartbeat_interval = 1.0
        #: As the orchestrator last said (clamped like the interval); only paces the heartbeat
        #: timeout. Until it has said, 8 s: the timeout stays the old 2 s.
        self.lease_duration = 8.0
        self._load_credential()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()
        #: Set while the current incarnation stands; cleared while a fence re-registers.
        self._registered = asyncio.Event()
        #: Wakes the heartbeat loop before its next beat is due (the watch saw a fence).
        self._wake = asyncio.Event()
        self._watch_call: Any = None
        self._fenced = 0  # the last incarnation we were told is fenced
        rng = rng or random.Random()
        self._backoff = {
            "register": link.Backoff(first=0.1, cap=REGISTER_BACKOFF_MAX, rng=rng),
            "heartbeat": link.Backoff(first=0.05, cap=HEARTBEAT_BACKOFF_MAX, rng=rng),
            "watch": link.Backoff(first=0.1, cap=WATCH_BACKOFF_MAX, rng=rng),
        }
        self.link = link.Link(orchestrators.address, on_change=on_link)
        orchestrators.on_fail_over = self._on_fail_over

    # -- credential -------------------------------------------------------------------------

    @property
    def _credential_file(self) -> Path:
        return self._config.state_dir / "credential.json"

    def _load_credential(self) -> None:
        try:
            saved = json.loads(self._credential_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if isinstance(saved, dict) and (not self.name or saved.get("name") == self.name):
            self.name = str(saved.get("name", ""))
            self._credential = str(saved.get("credential", ""))

    def _save_credential(self) -> None:
        directory = self._config.state_dir
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = directory / ".credential.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            json.dump({"name": self.name, "credential": self._credential}, out)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self._credential_file)

    def _metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", f"Bearer {self._credential}"),) if self._credential else ()

    def _stub(self) -> tuple[aio.Channel, pnode_pb2_grpc.PNodeServiceAsyncStub]:
        channel = self._orchestrators.channel()
        return channel, pnode_pb2_grpc.PNodeServiceStub(channel)

    async def report(self, request: validation_pb2.ReportResultRequest) -> None:
        """A result that failed a check here, reported with our identity (best effort: the
        refusal already protects this VNode; the report strikes the producer)."""
        request.header.CopyFrom(peers.header())
        request.pnode_id = self.name
        request.incarnation = self.incarnation
        stub = validation_pb2_grpc.ValidationServiceStub(self._orchestrators.channel())
        try:
            await stub.ReportResult(request, metadata=self._metadata(), timeout=5)
        except grpc.RpcError as exc:
            log.warning("validation report not delivered: %s", exc)
        except asyncio.CancelledError:
            if self._cancelled_by_us():
                raise
            log.warning("validation report not delivered: its channel was closed")

    # -- registration -----------------------------------------------------------------------

    async def register(self) -> None:
        """Register (again), retrying across orchestrators until it succeeds or we stop.

        Only `run` (the first time) and `_fence` (the heartbeat loop, sole owner of
        re-registration) call this, so a fence leads to exactly one new incarnation.
        Raises RegistrationRefused when the orchestrator refuses our name or credential;
        every other failure (no answer, a reset, a garbage reply) is retried with backoff."""
        failures = 0
        while not self._stopping.is_set():
            if failures:
                await self._pause(self._backoff["register"].delay(failures))
                if self._stopping.is_set():
                    return
            try:
                await self._register_once()
                return
            except RegistrationRefused:
                raise
            except asyncio.CancelledError:
                if self._cancelled_by_us():
                    raise
                problem = "call cancelled under us (its channel was closed)"
            except Exception as exc:
                problem = _describe(exc)
            failures += 1
            self._on_register("failed")
            # Said once when the loop starts failing, and not at all when the link's own
            # line ("lost orchestrator ...") already said why.
            quiet = failures > 1 or self.link.state is not link.State.CONNECTED
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "register at %s failed (%s); retrying", self._orchestrators.address,
                    problem)  # fmt: skip

    async def _register_once(self) -> None:
        channel, stub = self._stub()
        request = pnode_pb2.RegisterRequest(
            header=peers.header(),
            name=self.name,
            capacity=self._config.capabilities.capacity(),
            data_plane_address=self._config.advertise,
            labels=self._config.capabilities.labels,
            datasets=sorted(self._config.capabilities.datasets),
            agent_version=VERSION,
            join_token=self._config.join_token,
            csr=self._keys.csr(self.name),
        )
        try:
            reply = await stub.Register(request, metadata=self._metadata(), timeout=10)
        except aio.AioRpcError as exc:
            await self._call_failed("register", channel, exc)
            if exc.code() in _REFUSED:
                self._on_register("refused")
                raise RegistrationRefused(
                    f"orchestrator {self._orchestrators.address} refused to register "
                    f"{self.name or '(a generated name)'}: {exc.details()}"
                ) from None
            raise
        self.link.answered()
        if not reply.pnode_id or reply.incarnation <= 0:
            raise ValueError(
                f"malformed RegisterResponse: pnode_id={reply.pnode_id!r}, "
                f"incarnation={reply.incarnation}"
            )
        if self.incarnation and reply.data_plane_plaintext != self._keys.plaintext:
            # The listener's transport was chosen at the first Register; it cannot
            # change under open connections.
            raise RegistrationRefused(
                f"orchestrator {self._orchestrators.address} now runs the data plane "
                f"{'plaintext' if reply.data_plane_plaintext else 'over TLS'}, this "
                "agent started otherwise: restart it to follow"
            )
        self._keys.accept(reply.certificate, reply.identity_ca)  # garbage raises: retried
        self._on_register("registered")
        self._keys.plaintext = reply.data_plane_plaintext
        self._keys.driver_mutual_tls = reply.driver_mutual_tls
        self.name = reply.pnode_id
        self._credential = reply.credential
        self._orchestrators.credential = reply.credential  # peers resolve with it
        self.incarnation = reply.incarnation
        self.version = 0
        self.heartbeat_interval = _interval(reply.heartbeat_interval, 1.0)
        self.lease_duration = _interval(reply.lease_duration, self.lease_duration)
        self._save_credential()
        self._registered.set()
        log.info("registered as %s, incarnation %d", self.name, self.incarnation)

    async def _fence(self, incarnation: int) -> None:
        """Our VNodes were moved elsewhere: drop them all, then register again. Called by
        the heartbeat loop only; the watch loop, seeing a fence, wakes the heartbeat."""
        if incarnation != self.incarnation:
            return  # a fence of an incarnation already left behind
        if self._fenced != incarnation:  # said once, even if registering takes retries
            self._fenced = incarnation
            log.warning(
                "fenced (incarnation %d): dropping every VNode, registering again", incarnation
            )
            self._data_plane.drop_all()
            self.version = 0
            self.assignment_count = 0
            self._changed.set()
        if not self._stopping.is_set():
            self._registered.clear()
            await self.register()
            call, self._watch_call = self._watch_call, None
            if call is not None:
                call.cancel()  # a stream of the fenced incarnation: watch the new one

    def _apply(self, aset: pnode_pb2.AssignmentSet, incarnation: int) -> None:
        if incarnation != self.incarnation or aset.version <= self.version:
            return  # stale, or already applied: heartbeat and watch both deliver
        self._data_plane.reconcile(aset.assignments)  # garbage raises: the set is retried
        self.version = aset.version
        self.assignment_count = len(aset.assignments)
        self._changed.set()

    # -- talking to the orchestrator -----------------------------------------------------

    def _cancelled_by_us(self) -> bool:
        """Whether the CancelledError being handled is a cancel of our own task (shutdown),
        rather than a call cancelled because its channel was closed under it."""
        task = asyncio.current_task()
        return task is None or task.cancelling() > 0

    async def _call_failed(self, what: str, channel: aio.Channel, exc: aio.AioRpcError) -> None:
        """Account for a failed call: an answer (a refusal) keeps us connected; no answer
        marks the link lost and moves to the next orchestrator."""
        if exc.code() in _SWITCH:
            self.link.failed(what, exc.code().name)
            await self._orchestrators.fail_over(channel)
        else:
            self.link.answered()

    def _on_fail_over(self, address: str) -> None:
        self.link.moved(address)
        call, self._watch_call = self._watch_call, None
        if call is not None:
            call.cancel()  # the watch reconnects to `address` at once

    # -- loops ------------------------------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        await self._keep_running("heartbeat", self._heartbeat_once)

    async def watch_loop(self) -> None:
        await self._keep_running("watch", self._watch_once)

    async def _keep_running(self, what: str, once: Callable[[], Awaitable[None]]) -> None:
        """Run `once` for ever. Nothing the orchestrator side does ends the loop: a
        refused or failed call, a stream reset, garbage, or a call cancelled because its
        channel was closed under it (a fail-over, the server shutting down) is retried
        with capped, fully jittered backoff (`link.Backoff`), logged once when the loop
        starts failing and once when it works again. Only cancelling this task stops it."""
        backoff = self._backoff[what]
        failures = 0
        while True:
            try:
                await once()
            except asyncio.CancelledError:
                if self._cancelled_by_us():
                    raise  # we are being stopped
                problem = "call cancelled under us (its channel was closed)"
            except Exception as exc:
                problem = _describe(exc)
            else:
                if self._cancelled_by_us():
                    raise asyncio.CancelledError  # a cancel something below swallowed
                if failures:
                    log.info("%s: working again after %d failures", what, failures)
                failures = 0
                continue
            failures += 1
            cap = self.heartbeat_interval if what == "heartbeat" else None
            delay = backoff.delay(failures, cap=cap)
            # Said once when the loop starts failing, and not at all when the link's own
            # line ("lost orchestrator ...") already said why.
            quiet = failures > 1 or self.link.state is not link.State.CONNECTED
            level = logging.DEBUG if quiet else logging.WARNING
            log.log(level, "%s failed (%s); retrying with backoff up to %.2fs", what, problem,
                    backoff.ceiling(failures + 8, cap=cap))  # fmt: skip
            await self._sleep(delay)  # not `_pause`: a leaving agent still heartbeats

    async def _heartbeat_once(self) -> None:
        """One heartbeat, then the wait until the next is due (or the watch saw a fence).
        A heartbeat that gets no answer raises, so the loop backs off (never longer than
        the heartbeat interval: the lease depends on it)."""
        incarnation = self.incarnation
        channel, stub = self._stub()
        request = pnode_pb2.HeartbeatRequest(
            header=peers.header(),
            pnode_id=self.name,
            incarnation=incarnation,
            known_assignment_set_version=self.version,
            assignment_statuses=self._data_plane.statuses(),
        )
        if self._keys.due():
            request.csr = self._keys.csr(self.name)
        sent = time.monotonic()
        self._wake.clear()
        try:
            reply = await stub.Heartbeat(
                request, metadata=self._metadata(), timeout=self._heartbeat_timeout()
            )
        except aio.AioRpcError as exc:
            self._on_heartbeat("failed")
            await self._call_failed("heartbeat", channel, exc)
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            await self._fence(incarnation)  # our credential is no longer ours
        except asyncio.CancelledError:
            if not self._cancelled_by_us():
                self._on_heartbeat("failed")
            raise
        else:
            self.link.answered()
            self._on_heartbeat("fenced" if reply.lease_state == FENCED else "ok")
            self.heartbeat_interval = _interval(reply.heartbeat_interval, self.heartbeat_interval)
            self.lease_duration = _interval(reply.lease_duration, self.lease_duration)
            if reply.lease_state == FENCED:
                await self._fence(incarnation)
            else:
                if reply.certificate and incarnation == self.incarnation:
                    self._keys.accept(reply.certificate)
                    log.info("identity renewed, valid until %s", self._keys.expires_at)
                if reply.HasField("assignment_set"):
                    self._apply(reply.assignment_set, incarnation)
        wait = max(0.0, self.heartbeat_interval - (time.monotonic() - sent))
        await _wait(self._wake, wait)

    def _heartbeat_timeout(self) -> float:
        """How long a heartbeat waits for its answer before the agent moves on (and fails
        over): never shorter than the interval, 2 s unless a quarter of the lease is less. A
        replica that stopped answering may not have persisted this PNode's last renewals
        (they lag by up to half a lease), so with the default 4 s lease a 2 s wait plus the
        move could let the stored lease run out while the agent is alive."""
        return max(self.heartbeat_interval, min(2.0, self.lease_duration / 4))

    async def _watch_once(self) -> None:
        """One WatchAssignments stream until it ends, then a short reconnect pause. A
        fence seen here is the heartbeat loop's to handle: it is woken, and the watch
        waits for the new incarnation."""
        await self._registered.wait()
        incarnation = self.incarnation
        channel, stub = self._stub()
        request = pnode_pb2.WatchAssignmentsRequest(
            header=peers.header(),
            pnode_id=self.name,
            incarnation=incarnation,
            known_assignment_set_version=self.version,
        )
        call = self._watch_call = stub.WatchAssignments(request, metadata=self._metadata())
        try:
            async for message in call:
                self.link.answered()
                if message.lease_state == FENCED:
                    if self._fenced != incarnation:
                        self._wake.set()  # the heartbeat loop re-registers (once)
                    break  # and pace: a fence while leaving registers nothing new
                self._apply(message.assignment_set, incarnation)
        except aio.AioRpcError as exc:
            await self._call_failed("watch", channel, exc)
            raise
        except asyncio.CancelledError:
            if self._cancelled_by_us():
                raise
            # cancelled by a fail-over or the channel's close: reconnect at once
        finally:
            if self._watch_call is call:
                self._watch_call = None
        await self._pause_for(WATCH_PACING)  # reconnect pacing; the heartbeat covers the gap

    # -- running and leaving ----------------------------------------------------------------

    def request_stop(self) -> None:
        self._stopping.set()

    async def run(
        self, on_registered: Callable[[Agent], Awaitable[None] | None] = lambda _a: None
    ) -> None:
        """Serve until `request_stop`, then drain and leave. Raises RegistrationRefused.
        `on_registered` runs once the first Register answered (the data-plane listener
        starts there: its transport and certificate come from that answer)."""
        await self.register()
        if self._stopping.is_set():
            return
        started = on_registered(self)
        if started is not None:
            await started
        bodies = {"heartbeat": self.heartbeat_loop, "watch": self.watch_loop}
        running = {what: asyncio.create_task(body(), name=what) for what, body in bodies.items()}
        loops = list(running.values())
        stopping = asyncio.create_task(self._stopping.wait())
        try:
            while not self._stopping.is_set():
                await asyncio.wait([stopping, *running.values()],
                                   return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
                for what, task in list(running.items()):
                    if task.done() and not self._stopping.is_set():
                        # A loop only ends by a bug; an agent that exits for it would
                        # take its VNodes down with it, so the loop starts over.
                        error = None if task.cancelled() else task.exception()
                        log.error("the %s loop ended; starting it again", what,
                                  exc_info=error)  # fmt: skip
                        running[what] = asyncio.create_task(bodies[what](), name=what)
                        loops.append(running[what])
            await self._leave()
        finally:
            stopping.cancel()
            for task in loops:
                task.cancel()
            for task in loops:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task

    async def _leave(self) -> None:
        deadline = time.monotonic() + self._config.drain_deadline
        while time.monotonic() < deadline:
            if await self._deregister():
                log.info("deregistered %s", self.name)
                return
            self._changed.clear()
            while self.assignment_count and time.monotonic() < deadline:
                await _wait(self._changed, deadline - time.monotonic())
                self._changed.clear()
            if self.assignment_count:
                break
            await self._pause_for(min(self.heartbeat_interval, deadline - time.monotonic()))
        log.warning(
            "leaving with %d VNodes still assigned after %.0fs",
            self.assignment_count,
            self._config.drain_deadline,
        )

    async def _deregister(self) -> bool:
        """True once the orchestrator says we are gone (or cannot be reached to say more)."""
        channel, stub = self._stub()
        request = pnode_pb2.DeregisterRequest(
            header=peers.header(),
            pnode_id=self.name,
            incarnation=self.incarnation,
            reason="shutdown",
        )
        try:
            reply = await stub.Deregister(request, metadata=self._metadata(), timeout=10)
        except asyncio.CancelledError:
            if self._cancelled_by_us():
                raise
            return False  # its channel was closed under it: ask again
        except aio.AioRpcError as exc:
            log.warning("deregister at %s: %s", self._orchestrators.address, exc.details())
            if exc.code() in _SWITCH:
                await self._orchestrators.fail_over(channel)
                return False
            return True  # refused (fenced, unknown): there is nothing more to leave
        return reply.deregistered

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        await _wait(self._stopping, seconds)

    @staticmethod
    async def _pause_for(seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def _sleep(self, seconds: float) -> None:
        """A loop's backoff (tests replace it to record the delays)."""
        await asyncio.sleep(seconds)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until `event` is set or `seconds` have passed. Not `asyncio.wait_for`: on
    Python 3.11 it swallows a cancel that arrives as the event is set (the task then runs
    on, cancelled in name only: an agent that kept heartbeating after SIGTERM, until it
    was killed); `asyncio.timeout` lets the cancel through."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(max(0.0, seconds)):
            await event.wait()


def _interval(duration: Any, default: float) -> float:
    """A heartbeat interval the orchestrator sent, within sane bounds (garbage: `default`)."""
    try:
        seconds = float(duration.seconds) + duration.nanos / 1e9 if duration.ByteSize() else 0.0
    except (OverflowError, ValueError):
        seconds = 0.0
    if not math.isfinite(seconds) or seconds <= 0:
        return default
    return min(MAX_HEARTBEAT_INTERVAL, max(MIN_HEARTBEAT_INTERVAL, seconds))


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aio.AioRpcError):
        return f"{exc.code().name}: {exc.details()}"
    return f"{type(exc).__name__}: {exc}"
