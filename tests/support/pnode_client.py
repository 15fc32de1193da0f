"""A minimal test PNode: an agent reduced to its protocol, written as a plain gRPC client.

It registers, heartbeats on its own task, follows its assignment set (from heartbeats and,
optionally, a WatchAssignments stream) and can die (`stop`) or be partitioned (`pause`,
`resume`) on command. Like a third-party agent it imports only the contract (`api.dcnr.v1`,
and `api.identity` for the CSR of its identity key) and grpc (and, for tests waiting on it,
tests/support/wait.py), so whatever it can do, any agent can.

Its heartbeat cadence is the agent's own business, not a test waiting for time to pass, so
the loop sleeps for real between heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Sequence

import grpc
from grpc import aio

from api import identity
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from tests.support import wait

FENCED = pnode_pb2.LEASE_STATE_FENCED
ACTIVE = pnode_pb2.LEASE_STATE_ACTIVE


def _header() -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="test-pnode")


class TestPNode:
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        address: str | Sequence[str],
        name: str = "",
        *,
        cpu_millis: int = 4000,
        memory_bytes: int = 8 * 2**30,
        accelerators: Sequence[tuple[str, int]] = (),
        labels: dict[str, str] | None = None,
        datasets: Sequence[str] = (),
        data_plane_address: str = "127.0.0.1:7100",
        heartbeat_interval: float | None = None,
        reregister_when_fenced: bool = False,
        credentials: grpc.ChannelCredentials | None = None,
        report_running: bool = False,
    ) -> None:
        """`credentials`: TLS to the orchestrator (`grpc.ssl_channel_credentials`); plaintext
        without. `report_running`: each heartbeat reports every assignment held as running,
        as an agent does once its VNodes are built."""
        self.report_running = report_running
        #: While set, every heartbeat asks for a renewed identity certificate, which the
        #: replica answering records in the PNode's status (a PNode write it makes for its
        #: own reasons, as the trust book's are).
        self.renew_identity = False
        #: Orchestrator replicas to talk to, the first preferred; an agent moves to the next
        #: when one is unreachable, as behind a load balancer.
        self.addresses = [address] if isinstance(address, str) else list(address)
        self.address = self.addresses[0]
        self.name = name
        #: The identity key Register asks a certificate for (docs/security.md).
        self.key = identity.generate_key()
        self.certificate = b""
        self.capacity = common_pb2.Capacity(
            cpu_millis=cpu_millis,
            memory_bytes=memory_bytes,
            accelerators=[
                common_pb2.Accelerator(type=kind, count=count) for kind, count in accelerators
            ],
        )
        self.labels = dict(labels or {})
        self.datasets = list(datasets)
        self.data_plane_address = data_plane_address
        self.interval_override = heartbeat_interval
        self.reregister_when_fenced = reregister_when_fenced
        self.credentials = credentials
        self.credential = ""
        self.incarnation = 0
        self.heartbeat_interval = 1.0
        self.version = 0
        #: Allocation name → assignment, the last full set applied.
        self.assignments: dict[str, pnode_pb2.Assignment] = {}
        self.fenced = False
        self.heartbeats = 0
        self.lease_state = pnode_pb2.LEASE_STATE_UNSPECIFIED
        self.last_error: grpc.RpcError | None = None
        #: (source, incarnation, version, time.monotonic()) of every assignment set received,
        #: applied or not: "heartbeat" or "watch", for measuring delivery latency.
        self.arrivals: list[tuple[str, int, int, float]] = []
        self._channel: aio.Channel | None = None
        self._stub: pnode_pb2_grpc.PNodeServiceAsyncStub | None = None
        self._task: asyncio.Task[None] | None = None
        self._watch_task: asyncio.Task[None] | None = None
        self._running = asyncio.Event()
        self._register_lock = asyncio.Lock()

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def stub(self) -> pnode_pb2_grpc.PNodeServiceAsyncStub:
        if self._stub is None:
            self._channel = (
                aio.secure_channel(self.address, self.credentials)
                if self.credentials is not None
                else aio.insecure_channel(self.address)
            )
            self._stub = pnode_pb2_grpc.PNodeServiceStub(self._channel)
        return self._stub

    def metadata(self, credential: str | None = None) -> tuple[tuple[str, str], ...]:
        secret = self.credential if credential is None else credential
        return (("authorization", f"Bearer {secret}"),) if secret else ()

    async def close(self) -> None:
        await self.stop()
        await self._drop_channel()

    async def _drop_channel(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
            self._stub = None

    async def fail_over(self) -> None:
        """Move to the next orchestrator replica (after this one proved unreachable)."""
        if len(self.addresses) > 1:
            self.addresses = [*self.addresses[1:], self.addresses[0]]
            self.address = self.addresses[0]
            await self._drop_channel()

    async def __aenter__(self) -> TestPNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # -- protocol ---------------------------------------------------------------------------

    async def register(self) -> pnode_pb2.RegisterResponse:
        request = pnode_pb2.RegisterRequest(
            header=_header(),
            name=self.name,
            capacity=self.capacity,
            data_plane_address=self.data_plane_address,
            labels=self.labels,
            datasets=self.datasets,
            agent_version="test-pnode/0",
            csr=identity.csr_pem(self.key, self.name),
        )
        reply = await self.stub.Register(request, metadata=self.metadata(), timeout=10)
        self.name = reply.pnode_id
        self.credential = reply.credential
        self.incarnation = reply.incarnation
        self.certificate = reply.certificate
        self.heartbeat_interval = reply.heartbeat_interval.ToTimedelta().total_seconds()
        self.fenced = False
        self.version = 0
        self.assignments = {}
        return reply

    async def heartbeat_once(self) -> pnode_pb2.HeartbeatResponse:
        incarnation = self.incarnation
        request = pnode_pb2.HeartbeatRequest(
            header=_header(),
            pnode_id=self.name,
            incarnation=incarnation,
            known_assignment_set_version=self.version,
        )
        if self.renew_identity:
            request.csr = identity.csr_pem(self.key, self.name)
        if self.report_running:
            request.assignment_statuses.extend(
                pnode_pb2.AssignmentStatus(
                    network=a.network,
                    vnode=a.vnode,
                    replica=a.replica,
                    epoch=a.epoch,
                    state=pnode_pb2.ASSIGNMENT_STATE_RUNNING,
                )
                for a in self.assignments.values()
            )
        reply = await self.stub.Heartbeat(request, metadata=self.metadata(), timeout=10)
        self.heartbeats += 1
        self.lease_state = reply.lease_state
        if reply.lease_state == FENCED:
            await self._fence(incarnation)
        elif reply.HasField("assignment_set"):
            await self._apply(reply.assignment_set, incarnation, source="heartbeat")
        if reply.HasField("heartbeat_interval"):
            self.heartbeat_interval = reply.heartbeat_interval.ToTimedelta().total_seconds()
        return reply

    async def _fence(self, incarnation: int) -> None:
        """What an agent must do when fenced: drop everything of that incarnation (and, if
        told to, register again). A fence of an incarnation already left behind is moot."""
        async with self._register_lock:
            if incarnation != self.incarnation:
                return
            self.fenced = True
            self.assignments = {}
            self.version = 0
            if self.reregister_when_fenced:
                await self.register()

    async def _apply(self, aset: pnode_pb2.AssignmentSet, incarnation: int, *, source: str) -> None:
        self.arrivals.append((source, incarnation, aset.version, time.monotonic()))
        if incarnation != self.incarnation or aset.version <= self.version:
            return  # stale, or already applied (a stream and a heartbeat both deliver)
        self.version = aset.version
        self.assignments = {a.allocation: a for a in aset.assignments}

    # -- background heartbeats --------------------------------------------------------------

    def start(self) -> None:
        """Heartbeat in the background until `stop` (death) or while not `pause`d."""
        self._running.set()
        if self._task is None:
            self._task = asyncio.create_task(self._heartbeat_loop(), name=f"hb-{self.name}")

    async def stop(self) -> None:
        """Simulate the machine dying: no more calls of any kind."""
        for task in (self._task, self._watch_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch_task = None

    def pause(self) -> None:
        """Simulate a partition or a suspended process: heartbeats stop, state is kept."""
        self._running.clear()

    def resume(self) -> None:
        self._running.set()

    async def _heartbeat_loop(self) -> None:
        while True:
            await self._running.wait()
            incarnation = self.incarnation
            try:
                await self.heartbeat_once()
            except grpc.RpcError as exc:  # the orchestrator may be down; keep trying
                self.last_error = exc
                if exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                    await self.fail_over()
                elif exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                    # As the agent does: the PNode is gone (or the credential is not its
                    # current one), which the orchestrator does not tell apart.
                    await self._fence(incarnation)
            await asyncio.sleep(self.interval_override or self.heartbeat_interval)

    # -- watching ---------------------------------------------------------------------------

    def watch(self) -> None:
        """Follow the assignment set over WatchAssignments too (push, not poll)."""
        if self._watch_task is None:
            self._watch_task = asyncio.create_task(self._watch_loop(), name=f"w-{self.name}")

    async def _watch_loop(self) -> None:
        while True:
            incarnation = self.incarnation
            request = pnode_pb2.WatchAssignmentsRequest(
                header=_header(),
                pnode_id=self.name,
                incarnation=incarnation,
                known_assignment_set_version=self.version,
            )
            try:
                async for message in self.stub.WatchAssignments(request, metadata=self.metadata()):
                    if message.lease_state == FENCED:
                        await self._fence(incarnation)
                        break
                    await self._apply(message.assignment_set, incarnation, source="watch")
            except grpc.RpcError as exc:
                self.last_error = exc
            if self.fenced and not self.reregister_when_fenced:
                return
            await asyncio.sleep(0.05)  # reconnect pacing, as any agent's

    async def wait_until(
        self, predicate: Callable[[TestPNode], bool], *, within: float = 10.0
    ) -> None:
        """Return once `predicate(self)` holds; AssertionError after `within`."""
        await wait.until(
            self._state,
            within=within,
            what=f"test pnode {self.name}: the predicate",
            accept=lambda _: predicate(self),
        )

    def _state(self) -> str:
        """What a failed wait reports."""
        return (
            f"assignments {sorted(self.assignments)} (version {self.version}, fenced={self.fenced})"
        )

    async def wait_for(
        self,
        predicate: Callable[[dict[str, pnode_pb2.Assignment]], bool],
        *,
        within: float = 10.0,
    ) -> dict[str, pnode_pb2.Assignment]:
        """The assignments once `predicate` holds for them; AssertionError after `within`."""
        await self.wait_until(lambda node: predicate(node.assignments), within=within)
        return dict(self.assignments)
