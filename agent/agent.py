"""The agent's control loop: register, heartbeat, follow the assignment set, drain on leave.

Level-based like the orchestrator's loops: every assignment set is the full desired state,
and `DataPlane.reconcile` makes the hosted instances equal to it, whatever was missed in
between. Two sources deliver sets, the heartbeat (pull) and WatchAssignments (push); the
newest version of the current incarnation wins, so applying both is harmless.

Fencing (the orchestrator says our lease lapsed or our incarnation is old) means our
VNodes were moved: drop every instance, then register again under the same name with the
kept credential. The credential lives in memory and in `<state-dir>/credential.json`
(mode 0600), so a restarted agent re-registers under its name instead of becoming a
stranger; the name is kept there too when the orchestrator generated it.

Identity (`agent.keys`): Register carries a CSR for the agent's in-memory key and its answer
the PNode's certificate and the CA bundle; a heartbeat carries a CSR again once 2/3 of the
certificate's lifetime has passed, and its answer the renewed certificate.

On UNAVAILABLE the agent moves to the next orchestrator address (`peers.Orchestrators`).
Leaving (SIGTERM): Deregister; the orchestrator drains us (places our VNodes elsewhere)
while we keep heartbeating and serving the data plane; once our set is empty (or the
drain deadline passed) we Deregister again and return.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from agent import capacity, dataplane, keys, peers
from api import version
from api.dcnr.v1 import pnode_pb2, pnode_pb2_grpc, validation_pb2, validation_pb2_grpc

log = logging.getLogger("dcnr.agent")

VERSION = f"dcnr-agent/{version.current()}"
FENCED = pnode_pb2.LEASE_STATE_FENCED
_SWITCH = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
#: Backoff of a control loop after an unexpected failure: from the first, doubling, capped.
_BACKOFF_FIRST = 0.1
_BACKOFF_MAX = 10.0


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
    ) -> None:
        """`on_heartbeat(result)`: each heartbeat, "ok", "fenced" or "failed";
        `on_register(result)`: each Register attempt, "registered", "failed" or "refused"
        (for `agent.metrics`)."""
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
        self._load_credential()
        self._register_lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

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

    # -- registration -----------------------------------------------------------------------

    async def register(self, *, replacing: int | None = None) -> None:
        """Register (again), retrying across orchestrators until it succeeds or we stop.

        `replacing`: the incarnation a fence ended; if another loop has registered since,
        there is nothing left to do (the heartbeat and the watch both see a fence, and two
        registrations would skip an incarnation and drop the first one's assignments)."""
        delay = 0.1
        async with self._register_lock:
            if replacing is not None and self.incarnation != replacing:
                return
            while not self._stopping.is_set():
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
                    if exc.code() in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED,
                        grpc.StatusCode.INVALID_ARGUMENT,
                    ):
                        self._on_register("refused")
                        raise RegistrationRefused(
                            f"orchestrator {self._orchestrators.address} refused to register "
                            f"{self.name or '(a generated name)'}: {exc.details()}"
                        ) from None
                    self._on_register("failed")
                    log.warning("register at %s: %s", self._orchestrators.address, exc.code())
                    if exc.code() in _SWITCH:
                        await self._orchestrators.fail_over(channel)
                    await self._pause(delay)
                    delay = min(5.0, delay * 2)
                    continue
                if self.incarnation and reply.data_plane_plaintext != self._keys.plaintext:
                    # The listener's transport was chosen at the first Register; it cannot
                    # change under open connections.
                    raise RegistrationRefused(
                        f"orchestrator {self._orchestrators.address} now runs the data plane "
                        f"{'plaintext' if reply.data_plane_plaintext else 'over TLS'}, this "
                        "agent started otherwise: restart it to follow"
                    )
                self._on_register("registered")
                self._keys.plaintext = reply.data_plane_plaintext
                self._keys.accept(reply.certificate, reply.identity_ca)
                self.name = reply.pnode_id
                self._credential = reply.credential
                self._orchestrators.credential = reply.credential  # peers resolve with it
                self.incarnation = reply.incarnation
                self.version = 0
                self.heartbeat_interval = _seconds(reply.heartbeat_interval, 1.0)
                self._save_credential()
                log.info("registered as %s, incarnation %d", self.name, self.incarnation)
                return

    async def _fence(self, incarnation: int) -> None:
        """Our VNodes were moved elsewhere: drop them all, then register again."""
        if incarnation != self.incarnation:
            return  # a fence of an incarnation already left behind
        log.warning("fenced (incarnation %d): dropping every VNode, registering again", incarnation)
        self._data_plane.drop_all()
        self.version = 0
        self.assignment_count = 0
        self._changed.set()
        if not self._stopping.is_set():
            await self.register(replacing=incarnation)

    def _apply(self, aset: pnode_pb2.AssignmentSet, incarnation: int) -> None:
        if incarnation != self.incarnation or aset.version <= self.version:
            return  # stale, or already applied: heartbeat and watch both deliver
        self.version = aset.version
        self.assignment_count = len(aset.assignments)
        self._data_plane.reconcile(aset.assignments)
        self._changed.set()

    # -- loops ------------------------------------------------------------------------------

    async def heartbeat_loop(self) -> None:
        await self._keep_running("heartbeat", self._heartbeat_once)

    async def watch_loop(self) -> None:
        await self._keep_running("watch", self._watch_once)

    async def _keep_running(self, what: str, once: Callable[[], Awaitable[None]]) -> None:
        """Run `once` for ever. Nothing the orchestrator side does ends the loop: a
        refused or failed call, a stream reset, garbage, or a call cancelled because its
        channel was closed under it (a fail-over, the server shutting down) is logged and
        retried with capped, jittered backoff. Only cancelling this task stops it."""
        failures = 0
        while True:
            try:
                await once()
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # we are being stopped
                problem = "call cancelled under us (its channel was closed)"
            except Exception as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if failures:
                    log.info("%s: working again after %d failures", what, failures)
                failures = 0
                continue
            failures += 1
            delay = min(_BACKOFF_MAX, _BACKOFF_FIRST * 2 ** min(failures - 1, 16))
            delay *= random.uniform(0.5, 1.0)
            log.warning("%s failed (%s); retrying in %.2fs", what, problem, delay)
            await self._pause(delay)

    async def _heartbeat_once(self) -> None:
        """One heartbeat, then the wait until the next is due."""
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
        try:
            reply = await stub.Heartbeat(
                request, metadata=self._metadata(), timeout=max(2.0, self.heartbeat_interval)
            )
        except aio.AioRpcError as exc:
            self._on_heartbeat("failed")
            log.warning("heartbeat to %s: %s", self._orchestrators.address, exc.code())
            if exc.code() in _SWITCH:
                await self._orchestrators.fail_over(channel)
            elif exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                await self._fence(incarnation)
        else:
            self._on_heartbeat("fenced" if reply.lease_state == FENCED else "ok")
            if reply.certificate and incarnation == self.incarnation:
                self._keys.accept(reply.certificate)
                log.info("identity renewed, valid until %s", self._keys.expires_at)
            if reply.lease_state == FENCED:
                await self._fence(incarnation)
            elif reply.HasField("assignment_set"):
                self._apply(reply.assignment_set, incarnation)
            self.heartbeat_interval = _seconds(
                reply.heartbeat_interval, self.heartbeat_interval
            )
        await asyncio.sleep(max(0.0, self.heartbeat_interval - (time.monotonic() - sent)))

    async def _watch_once(self) -> None:
        """One WatchAssignments stream until it ends, then a short reconnect pause."""
        incarnation = self.incarnation
        channel, stub = self._stub()
        request = pnode_pb2.WatchAssignmentsRequest(
            header=peers.header(),
            pnode_id=self.name,
            incarnation=incarnation,
            known_assignment_set_version=self.version,
        )
        try:
            async for message in stub.WatchAssignments(request, metadata=self._metadata()):
                if message.lease_state == FENCED:
                    await self._fence(incarnation)
                    break  # and pace: a fence while leaving registers nothing new
                self._apply(message.assignment_set, incarnation)
        except aio.AioRpcError as exc:
            if exc.code() in _SWITCH:
                await self._orchestrators.fail_over(channel)
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
        loops = [
            asyncio.create_task(self.heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self.watch_loop(), name="watch"),
        ]
        try:
            stopping = asyncio.create_task(self._stopping.wait())
            done, _ = await asyncio.wait([stopping, *loops], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is not stopping:
                    task.result()  # a loop died: surface its error
            stopping.cancel()
            await self._leave()
        finally:
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
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), deadline - time.monotonic())
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
        except aio.AioRpcError as exc:
            log.warning("deregister at %s: %s", self._orchestrators.address, exc.details())
            if exc.code() in _SWITCH:
                await self._orchestrators.fail_over(channel)
                return False
            return True  # refused (fenced, unknown): there is nothing more to leave
        return reply.deregistered

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake at once when asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), seconds)

    @staticmethod
    async def _pause_for(seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


def _seconds(duration: Any, default: float) -> float:
    seconds = float(duration.ToTimedelta().total_seconds()) if duration.ByteSize() else 0.0
    return seconds if seconds > 0 else default
