"""A fake agent and an orchestrator-side harness for the driver tests, over real gRPC.

The fake agent hosts network "lin": `x` (a source reading rows of a data file) → `loss` (a
sink with one parameter w: prediction w·x, loss mean((w·x - 3x)^2), trained by SGD). Like a
real agent it holds the data: it answers DescribeData (its rows, or a named file's array
"x"), and reads a job's data named in x's Restore, or an inference input named by data. It
computes in numpy in the test process and answers the driver exactly as the data-plane
design says: the sink Forwards [loss, accuracy] to `__driver__` at reply_to, the source
then sends an empty Backward; Checkpoint writes w to the blob store; Restore loads it (or
starts at w = 0) and adopts the attempt; messages of an older attempt or another epoch are
refused. Tests hold steps (swallow them) to cause timeouts, move epochs, and so on.

With replicas (`cluster_of`), agent r hosts replica r of both VNodes on PNode p{r+1}: its
x.r feeds its own loss.r, which answers the driver with sender_replica r. An agent may also
answer for further loss replicas in inference (`extra`: a tiebreaker placed beside it), and
may lie: `lie(position)` is added to its loss output, `checkpoint_noise` to the weight it
checkpoints.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import math
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from grpc import aio

from api import identity, tensors
from api.dcnr.v1 import common_pb2, job_pb2_grpc, vnode_pb2, vnode_pb2_grpc
from api.resources import allocation, job, lease, meta, pnode
from api.resources import network as net_model
from controller import config as config_mod
from controller import metrics
from controller.jobs import (
    driver,
    driver_context,
    driver_inbox,
    job_loop,
    job_watch,
    suspects,
    tiebreakers,
    vnode_client,
)
from controller.runtime import clock as clocks
from controller.runtime import recorder
from controller.services import driver_inbox_service, job_service, vnode_transport
from controller.state import view as view_mod
from controller.trust import book as trust
from controller.trust import exposure
from store import sqlite
from tests.support import identities

Network = net_model.Network
NET = "lin"
CONFIG = config_mod.ControlPlaneConfig(lease_duration=3600.0)


def network_record(
    data_url: str, *, replicas: int = 1, validation: net_model.ValidationPolicy = "none"
) -> net_model.Network:
    return net_model.Network(
        metadata=meta.ObjectMeta(name=NET),
        spec=net_model.NetworkSpec(
            vnodes=[
                net_model.VNodeSpec(
                    name="x",
                    kind="input",
                    params={"field": "x"},
                    data=net_model.DataRef(url=data_url),
                    replicas=replicas,
                ),
                net_model.VNodeSpec(name="loss", kind="fake_loss", inputs=["x"], replicas=replicas),
            ],
            validation=validation,
        ),
    )


def reference_w(xs: np.ndarray, *, seed: int, epochs: int, batch: int, lr: float) -> float:
    """The weight an undisturbed run reaches, computed here without the driver."""
    w = 0.0
    per_epoch = math.ceil(len(xs) / batch)
    for epoch in range(epochs):
        order = np.random.default_rng([seed, epoch]).permutation(len(xs))
        for k in range(per_epoch):
            w = _sgd(w, xs[order[k * batch : (k + 1) * batch]], lr)[0]
    return w


def _sgd(w: float, xb: np.ndarray, lr: float) -> tuple[float, float]:
    error = w * xb - 3 * xb
    loss = float(np.mean(error**2))
    return w - lr * float(np.mean(2 * error * xb)), loss


class FakeAgent(vnode_pb2_grpc.VNodeServiceServicer):
    def __init__(self, xs: np.ndarray, replica: int = 0) -> None:
        self.xs = xs
        self.replica = replica
        self.epochs = {"x": 1, "loss": 1}
        #: Further loss replicas this agent answers for in inference: replica → epoch.
        self.extra: dict[int, int] = {}
        #: Added to the loss output at a position (a step or a request id): a lie.
        self.lie: Callable[[int | str], float] = lambda position: 0.0
        #: Added to the weight written by Checkpoint.
        self.checkpoint_noise = 0.0
        #: Write the noisy weight but claim the digest of the honest bytes (a forged digest).
        self.forge_digest = False
        #: Every RestoreRequest received.
        self.restore_requests: list[vnode_pb2.RestoreRequest] = []
        #: Where relative file:// urls resolve (an agent's --workdir).
        self.workdir = Path.cwd()
        #: Every DescribeDataRequest received.
        self.describes: list[vnode_pb2.DescribeDataRequest] = []
        self.attempt = 0
        self.w: float | None = None
        self.lr = 0.0
        self.restores: list[tuple[str, int, int, str]] = []
        self.checkpoints: list[tuple[str, int]] = []
        self.batches: list[tuple[int, int, list[int]]] = []
        #: (step, micro, micro_batches) of every batch sent to x, in arrival order.
        self.parts: list[tuple[int, int, int]] = []
        #: (step, attempt) → True: accept the batch but never answer (a lost/hung agent).
        self.hold: Callable[[int, int], bool] = lambda step, attempt: False
        #: Called with (step, attempt) when a batch arrives, before anything else.
        self.on_batch: Callable[[int, int], Awaitable[None]] | None = None
        #: Called when an inference request reaches "loss", before it computes.
        self.on_infer: Callable[[], Awaitable[None]] | None = None
        self.seen_steps: dict[tuple[int, int], asyncio.Event] = {}
        #: (position, attempt) → the kind's error when "loss" cannot compute it: the agent
        #: tells the driver (compute_failure) instead of answering, as a real one does.
        self.cannot_compute: Callable[[int | str, int], str | None] = lambda p, a: None
        #: Refuse every inference input "Invalid" with this message (None: take it).
        self.refuse_input: str | None = None
        self.refused: list[str] = []
        self.server = aio.server()
        vnode_pb2_grpc.add_VNodeServiceServicer_to_server(self, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self._tasks: set[asyncio.Task[None]] = set()
        self._channels: dict[str, aio.Channel] = {}
        self._signer = identities.pnode_signer(f"p{replica + 1}")

    def path(self, url: str) -> Path:
        """A file:// url as a real agent reads it: relative ones against its workdir."""
        return self.workdir / url.removeprefix("file://")

    def saw(self, step: int, attempt: int) -> asyncio.Event:
        return self.seen_steps.setdefault((step, attempt), asyncio.Event())

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for channel in self._channels.values():
            await channel.close(None)
        await self.server.stop(None)

    async def _refuse(self, context: Any, code: grpc.StatusCode, message: str) -> None:
        self.refused.append(message)
        await context.abort(code, message)

    async def _check(
        self, context: Any, vnode: str, epoch: int, attempt: int | None, replica: int = 0
    ) -> None:
        if vnode == "loss" and replica in self.extra:
            if epoch != self.extra[replica]:
                await self._refuse(context, grpc.StatusCode.FAILED_PRECONDITION, "epoch")
            return
        if vnode not in self.epochs or replica != self.replica:
            await self._refuse(context, grpc.StatusCode.NOT_FOUND, f"{vnode}.{replica} not hosted")
        if epoch != self.epochs[vnode]:
            await self._refuse(
                context,
                grpc.StatusCode.FAILED_PRECONDITION,
                f"epoch {epoch} != {self.epochs[vnode]}",
            )
        if attempt is not None and attempt < self.attempt:
            await self._refuse(
                context, grpc.StatusCode.FAILED_PRECONDITION, f"attempt {attempt} is stale"
            )

    async def Forward(self, request: vnode_pb2.ForwardRequest, context: Any) -> Any:
        await self._check(
            context,
            request.target_vnode,
            request.target_epoch,
            request.attempt if request.WhichOneof("position") == "step" else None,
            request.target_replica,
        )
        if self.refuse_input is not None and request.WhichOneof("position") == "request_id":
            details = common_pb2.ErrorDetails(reason="Invalid").SerializeToString()
            context.set_trailing_metadata((("dcnr-error-details-bin", details),))
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, self.refuse_input)
        data = tensors.decode(request.tensor)
        if request.data.url:  # an inference input by data reference: x reads its array
            with np.load(self.path(request.data.url)) as archive:
                data = archive["x"]
        if request.WhichOneof("position") == "step":
            step, attempt = request.step, request.attempt
            self.batches.append((step, attempt, [int(i) for i in data]))
            self.parts.append((step, request.micro, request.micro_batches))
            self.saw(step, attempt).set()
            if self.on_batch is not None:
                await self.on_batch(step, attempt)
            if not self.hold(step, attempt):
                self._spawn(self._train(request, data))
        else:
            self._spawn(self._infer(request, data))
        return vnode_pb2.ForwardResponse()

    def _spawn(self, work: Awaitable[None]) -> None:
        task = asyncio.ensure_future(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _driver(self, address: str) -> Any:
        if address not in self._channels:
            self._channels[address] = aio.insecure_channel(address)
        # Replica r of every VNode lives on PNode p{r+1} (`cluster_of`): sign as that PNode.
        return identities.SignedVNodeStub(self._channels[address], self._signer)

    def _message(
        self, request: vnode_pb2.ForwardRequest, sender: str, tensor: Any, replica: int = -1
    ) -> dict[str, Any]:
        own = replica < 0 or replica == self.replica
        fields = {
            "job": request.job,
            "network": request.network,
            "sender_vnode": sender,
            "sender_replica": self.replica if own else replica,
            "sender_epoch": self.epochs[sender] if own else self.extra[replica],
            "target_vnode": driver_inbox.DRIVER,
            "tensor": tensor,
            "reply_to": request.reply_to,
            "attempt": request.attempt,
        }
        which = request.WhichOneof("position")
        assert which is not None
        fields[which] = getattr(request, which)
        fields["micro"], fields["micro_batches"] = request.micro, request.micro_batches
        return fields

    async def _failed(self, request: vnode_pb2.ForwardRequest) -> bool:
        """Tell the driver that "loss" could not compute the position, if it cannot."""
        which = request.WhichOneof("position")
        assert which is not None
        why = self.cannot_compute(getattr(request, which), request.attempt)
        if why is None:
            return False
        fields = self._message(request, "loss", tensors.empty())
        await self._driver(request.reply_to).Forward(
            vnode_pb2.ForwardRequest(**fields, compute_failure=why)
        )
        return True

    async def _train(self, request: vnode_pb2.ForwardRequest, indices: np.ndarray) -> None:
        assert self.w is not None, "trained before any Restore"
        if await self._failed(request):
            return
        self.w, loss = _sgd(self.w, self.xs[indices], self.lr)
        stub = self._driver(request.reply_to)
        out = tensors.encode(np.array([loss + self.lie(request.step), math.nan]))
        try:
            await stub.Forward(vnode_pb2.ForwardRequest(**self._message(request, "loss", out)))
        except aio.AioRpcError as refused:  # a lie refused by its checks: backward goes on
            self.refused.append(f"driver: {refused.details()}")
        done = tensors.empty()
        await stub.Backward(vnode_pb2.BackwardRequest(**self._message(request, "x", done)))

    async def _infer(self, request: vnode_pb2.ForwardRequest, xb: np.ndarray) -> None:
        if await self._failed(request):
            return
        if self.on_infer is not None:
            await self.on_infer()
        value = (self.w or 0.0) * xb
        stub = self._driver(request.reply_to)
        lie = tensors.encode(np.asarray(value + self.lie(request.request_id), dtype=np.float64))
        await stub.Forward(vnode_pb2.ForwardRequest(**self._message(request, "loss", lie)))
        honest = tensors.encode(np.asarray(value, dtype=np.float64))
        for replica in sorted(self.extra):
            message = self._message(request, "loss", honest, replica)
            await stub.Forward(vnode_pb2.ForwardRequest(**message))

    async def Deliver(self, request_iterator: Any, context: Any) -> Any:
        """Not served: the driver sends unary calls (its own agents' streams are not here)."""
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "this fake agent takes unary calls")
        yield vnode_pb2.DeliverResponse()

    async def DescribeData(self, request: vnode_pb2.DescribeDataRequest, context: Any) -> Any:
        """x's data: the request's file (a job's or an inference's data), else the rows this
        agent was built with; an unreadable file is a DataError, as the real agent says."""
        await self._check(context, request.vnode, request.epoch, None, request.replica)
        self.describes.append(request)
        if not request.data.url:
            return vnode_pb2.DescribeDataResponse(
                has_field=True, shape=list(self.xs.shape), dtype=self.xs.dtype.name, fields=["x"]
            )
        path = self.path(request.data.url)
        try:
            with np.load(path) as archive:
                fields = list(archive.files)
                x = archive["x"] if "x" in fields else None
        except OSError as exc:
            details = common_pb2.ErrorDetails(reason="DataError").SerializeToString()
            context.set_trailing_metadata((("dcnr-error-details-bin", details),))
            await self._refuse(context, grpc.StatusCode.INVALID_ARGUMENT, f"data.url: {exc}")
        return vnode_pb2.DescribeDataResponse(
            has_field=x is not None,
            shape=list(x.shape) if x is not None else [],
            dtype=x.dtype.name if x is not None else "",
            fields=fields,
            resolved_url=str(path),
        )

    async def Backward(self, request: vnode_pb2.BackwardRequest, context: Any) -> Any:
        # Only the driver talks to this agent, and the driver never sends gradients.
        await self._refuse(context, grpc.StatusCode.UNIMPLEMENTED, "no backward into x")

    async def Restore(self, request: vnode_pb2.RestoreRequest, context: Any) -> Any:
        await self._check(context, request.vnode, request.epoch, None, request.replica)
        self.restore_requests.append(request)
        if request.replica in self.extra:
            return vnode_pb2.RestoreResponse(step=request.step)
        self.attempt = request.attempt
        self.restores.append((request.vnode, request.step, request.attempt, request.blob.url))
        if request.vnode == "x" and request.data.url:  # the job's data: batches come from it
            with np.load(self.path(request.data.url)) as archive:
                self.xs = archive["x"]
        if request.vnode == "loss":
            self.lr = request.learning_rate
            if request.blob.url:
                path = Path(request.blob.url.removeprefix("file://"))
                body = await asyncio.to_thread(path.read_bytes)
                assert hashlib.sha256(body).digest() == request.blob.sha256
                self.w = float(np.load(io.BytesIO(body))["w"])
            else:
                self.w = 0.0
        return vnode_pb2.RestoreResponse(step=request.step)

    async def Checkpoint(self, request: vnode_pb2.CheckpointRequest, context: Any) -> Any:
        await self._check(context, request.vnode, request.epoch, request.attempt, request.replica)
        self.checkpoints.append((request.vnode, request.step))
        if request.vnode == "x":
            return vnode_pb2.CheckpointResponse()
        url = f"{request.destination}{request.job}/loss-{self.replica}/step-{request.step}.npz"
        buffer = io.BytesIO()
        np.savez(buffer, w=np.array((self.w or 0.0) + self.checkpoint_noise))
        body = buffer.getvalue()
        claimed = hashlib.sha256(body).digest()
        if self.forge_digest:
            honest = io.BytesIO()
            np.savez(honest, w=np.array(self.w or 0.0))
            claimed = hashlib.sha256(honest.getvalue()).digest()
        path = Path(url.removeprefix("file://"))
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        await asyncio.to_thread(path.write_bytes, body)
        blob = common_pb2.BlobRef(url=url, sha256=claimed, size_bytes=len(body))
        return vnode_pb2.CheckpointResponse(blob=blob)


class Orchestrator:
    """The orchestrator's side: store, view, driver context, inbox + JobService, job loop."""

    def __init__(
        self,
        store: sqlite.SqliteStore,
        view: view_mod.View,
        tmp: Path,
        replica: str,
        *,
        book: trust.TrustBook | None = None,
        **config: Any,
    ) -> None:
        self.store = store
        self.view = view
        self.server = aio.server()
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        settings = {"step_timeout": 2.0, "progress_every": 0.0, "job_recheck": 0.5, **config}
        clock = clocks.SystemClock()
        options = driver.DriverConfig(
            blob_store=f"file://{tmp}/blobs", advertise=f"127.0.0.1:{self.port}", **settings
        )
        self.metrics = metrics.Metrics()
        self.exposure = exposure.Exposure()
        #: Never started: a test flushes it to read what the runs told.
        self.events = recorder.Recorder(store=store, clock=clock, replica=replica)
        inbox = driver_inbox.Inbox(clock=clock, book=book, on_disagreed=self.metrics.disagreed)
        self.ctx = driver_context.DriverContext(
            store=store,
            view=view,
            clock=clock,
            config=options,
            replica_id=replica,
            client=vnode_client.VNodeClient(
                view=view,
                clock=clock,
                rpc_timeout=options.rpc_timeout,
                transport=vnode_transport.GrpcTransport(
                    # The harness's agents listen plaintext, in process; TLS is tested
                    # against real agents (tests/agent/test_dataplane_tls.py).
                    signer=identities.orchestrator_signer(),
                    ca=lambda: None,
                ),
            ),
            results=driver_context.ResultSinks(
                inbox=inbox, book=book, metrics=self.metrics, exposure=self.exposure
            ),
            suspects=suspects.Suspects(view=view, book=book),
            tiebreakers=tiebreakers.Tiebreakers(store=store, view=view, metrics=self.metrics),
            reply_to=driver_context.ReplyTo(options.advertise),
            feed=job_watch.JobFeed(clock),
            events=self.events,
        )
        self.inbox = driver_inbox_service.DriverInboxService(
            inbox=inbox,
            view=view,
            clock=clock,
            verifier=identity.Verifier(identities.authority().certificate_pem),
            replica_id=replica,
            max_message_bytes=1 << 20,
            book=book,
            on_refused=self.metrics.driver_refused,
        )
        driver_inbox_service.add_to_server(self.inbox, self.server)
        #: Jobs JobService told the server about (it wires this to enqueue the job loop).
        self.changed: list[str] = []
        self.service = job_service.JobService(
            context=self.ctx, watch_poll=0.2, on_changed=lambda j: self.changed.append(j.name)
        )
        job_pb2_grpc.add_JobServiceServicer_to_server(self.service, self.server)
        self.loop = job_loop.JobLoop(self.ctx)
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.jobs = job_pb2_grpc.JobServiceStub(self.channel)
        #: The inbox as PNode p1 (replica 0's host) sends to it.
        self.vnodes = identities.SignedVNodeStub(self.channel, identities.pnode_signer("p1"))

    async def start(self) -> None:
        await self.server.start()

    async def close(self) -> None:
        await self.loop.stop()
        await self.channel.close(None)
        await self.server.stop(None)
        await self.ctx.client.close()

    async def until(
        self, name: str, predicate: Callable[[job.Job], bool], *, seconds: float = 30.0
    ) -> job.Job:
        """The Job once `predicate` holds, waiting on this replica's writes (no sleeps)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        signal = self.ctx.feed.signal(name)
        while True:
            seen = signal.value
            current = await self.store.get(job.Job, name)
            if predicate(current):
                return current
            remaining = deadline - loop.time()
            assert remaining > 0, f"job {name} never got there; status: {current.status}"
            await signal.wait_past(seen, within=min(remaining, 0.5))


async def cluster(tmp: Path, xs: np.ndarray) -> tuple[sqlite.SqliteStore, view_mod.View, FakeAgent]:
    """A store holding network "lin" placed on one live PNode served by a FakeAgent."""
    store, view, agents = await cluster_of(tmp, xs)
    return store, view, agents[0]


async def cluster_of(
    tmp: Path,
    xs: np.ndarray,
    *,
    replicas: int = 1,
    validation: net_model.ValidationPolicy = "none",
    tiebreakers: tuple[str, ...] = (),
) -> tuple[sqlite.SqliteStore, view_mod.View, list[FakeAgent]]:
    """Network "lin" with `replicas` replicas (at least 2 under a validation policy) of each
    VNode, replica r on PNode p{r+1} served by FakeAgent r. `tiebreakers`: both VNodes must
    be named or neither (agent r hosts replica r of both)."""
    np.savez(tmp / "data.npz", x=xs)
    store = await sqlite.SqliteStore.open(tmp / "state.db")
    net = network_record(f"file://{tmp}/data.npz", replicas=replicas, validation=validation)
    net.status.tiebreakers = list(tiebreakers)
    count = net.replicas_of("x")
    agents = [FakeAgent(xs, r) for r in range(count)]
    for agent in agents:
        agent.workdir = tmp
    clock = clocks.SystemClock()
    view = view_mod.View(store, clock, config=CONFIG)
    for r, agent in enumerate(agents):
        await agent.server.start()
        await add_pnode(store, clock, f"p{r + 1}", agent.port)
    await store.create(net)
    for r in range(count):
        for vnode in ("x", "loss"):
            await store.create(slot(vnode, epoch=1, replica=r, pnode=f"p{r + 1}"))
    await view.refresh()
    return store, view, agents


async def add_pnode(store: sqlite.SqliteStore, clock: clocks.Clock, name: str, port: int) -> None:
    await store.create(
        pnode.PNode(
            metadata=meta.ObjectMeta(name=name),
            spec=pnode.PNodeSpec(
                address=f"127.0.0.1:{port}", capacity=pnode.Capacity(cpu="4", memory="1Gi")
            ),
            status=pnode.PNodeStatus(phase="Ready", incarnation=1),
        )
    )
    await store.create(
        lease.PNodeLease(
            metadata=meta.ObjectMeta(name=name),
            spec=lease.LeaseSpec(
                incarnation=1, renew_time=clock.now(), duration_seconds=CONFIG.lease_duration
            ),
        )
    )


def slot(vnode: str, *, epoch: int, replica: int = 0, pnode: str = "p1") -> allocation.Allocation:
    return allocation.Allocation(
        metadata=meta.ObjectMeta(name=allocation.slot_name(NET, vnode, replica)),
        spec=allocation.AllocationSpec(
            network=NET,
            vnode=vnode,
            replica=replica,
            pnode=pnode,
            epoch=epoch,
            pnode_incarnation=1,
        ),
    )


async def move_slot(store: sqlite.SqliteStore, view: view_mod.View, vnode: str) -> int:
    """Re-issue a slot with epoch+1, as the network loop does after a re-placement."""
    current = await store.get(allocation.Allocation, allocation.slot_name(NET, vnode, 0))
    current.spec.epoch += 1
    written = await store.update(current)
    view.apply_written([written])
    return written.spec.epoch
