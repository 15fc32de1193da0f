"""JobService: Train creates a Job the job loop drives; Infer runs in the call.

Train refuses a second training job on a network whose job is not final (FAILED_PRECONDITION,
reason NetworkBusy, naming the running job): controller.jobs.training_lock decides it in the
store, safely across replicas. Train validates every field against `JobSpec` (zero means
"the default", common.proto rule 6) and answers INVALID_ARGUMENT naming the field. A
retried Train with the same header.request_id and no name finds the job the first call
created instead of starting a second run: the generated name is derived from the request id.

Infer on a data reference does not read it here: the orchestrator never opens data. The
agents hosting the sources do (controller.jobs.inference): each source gets the array of
the data named by its `params.field`; a source whose field the data lacks gets an empty
tensor (a loss target, which inference ignores). A .npy file holds one array, so it suits
networks with a single source. An empty tensor map is refused
at once (no source would get anything), tensors no VNode could take are refused before any
is sent (`controller.jobs.inference`), and an answer from a network no training job has
finished carries a warning: it comes from initial weights.

Reads go to the store (a client that wrote through another replica must see its write).
WatchJob follows this replica's own writes at once (controller.jobs.job_watch) and re-reads
the store every `watch_poll` seconds for the others'.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from typing import Any

import pydantic
from grpc import aio

from api import labels, tensors
from api.dcnr.v1 import common_pb2, job_pb2, job_pb2_grpc
from api.resources import job as job_model
from api.resources import meta
from api.resources import network as net_model
from controller import errors as faults
from controller.jobs import driver, driver_inbox, driver_plan, inference, model_state, training_lock
from controller.services import rpc
from store import base, errors, retry

log = logging.getLogger("dcnr.jobs")

Job = job_model.Job
REQUEST_ID_ANNOTATION = "dcnr.io/request-id"
DEFAULT_LIMIT = base.DEFAULT_PAGE_SIZE
MAX_LIMIT = 1000
FINAL_PHASES = driver.FINAL_PHASES


def document(job: Job) -> common_pb2.ResourceDocument:
    return common_pb2.ResourceDocument(kind=job.KIND, json=job.to_json().encode())


def _not_found(name: str) -> faults.NotFound:
    return faults.NotFound(f"job {name!r} not found")


class JobService(job_pb2_grpc.JobServiceServicer):
    def __init__(
        self,
        *,
        context: driver.DriverContext,
        watch_poll: float = 1.0,
        on_changed: Callable[[Job], None] | None = None,
    ) -> None:
        """`on_changed(job)` after Train and CancelJob wrote: the server wires it to enqueue
        the job loop, so a run starts (or stops) without waiting for a resync."""
        self._ctx = context
        self._store = context.store
        self._watch_poll = watch_poll
        self._on_changed = on_changed

    def _tell(self, name: str, type_: str, reason: str, message: str) -> None:
        if self._ctx.events is not None:
            self._ctx.events.record("Job", name, type=type_, reason=reason, message=message)

    def _changed(self, job: Job) -> None:
        self._ctx.feed.published(job)
        if self._on_changed is not None:
            self._on_changed(job)

    # -- Train ------------------------------------------------------------------------------

    @rpc.handler
    async def Train(
        self, request: job_pb2.TrainRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.TrainResponse:
        if not request.network:
            raise faults.FieldInvalid("network", request.network, "must name a network")
        spec = _spec(request)
        net = await self._network(request.network)
        if net.metadata.deletion_timestamp is not None:
            raise faults.FailedPrecondition(
                f"network: {net.name!r} is being deleted; apply it again to train on it",
                reason="Terminating",
            )
        request_id = request.header.request_id
        name = request.name or _generated_name(net.name, request_id)
        try:
            meta.check_dns1123_subdomain(name)
        except ValueError as exc:
            raise faults.FieldInvalid("name", name, str(exc)) from None
        try:
            job_labels = meta.check_labels(dict(request.labels))
        except ValueError as exc:
            raise faults.FieldInvalid("labels", dict(request.labels), str(exc)) from None
        annotations = {REQUEST_ID_ANNOTATION: request_id} if request_id else {}
        job = Job(
            metadata=meta.ObjectMeta(name=name, labels=job_labels, annotations=annotations),
            spec=spec,
        )
        retried = await self._retried(name, request_id)
        if retried is not None:
            created = retried  # the retry of a Train that already succeeded
        else:
            try:
                created = await training_lock.create(self._store, job)
            except errors.AlreadyExists:
                retried = await self._retried(name, request_id)
                if retried is None:
                    raise
                created = retried
            else:
                self._changed(created)
                self._tell(created.name, "Normal", "Created", f"training job on {net.name!r}")
        return job_pb2.TrainResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id),
            job=document(created),
        )

    async def _retried(self, name: str, request_id: str) -> Job | None:
        """The job an earlier Train with this request id created under `name`, if any: its
        retry answers that job, before the network's lock (which that job holds) refuses."""
        if not request_id:
            return None
        try:
            existing = await self._store.get(Job, name)
        except errors.NotFound:
            return None
        if existing.metadata.annotations.get(REQUEST_ID_ANNOTATION) != request_id:
            return None
        return existing

    async def _network(self, name: str) -> net_model.Network:
        if not name:
            raise faults.FieldInvalid("network", name, "must name a network")
        try:
            return await self._store.get(net_model.Network, name)
        except errors.NotFound:
            raise faults.NotFound(
                f"network: {name!r} not found; apply it before training on it",
            ) from None

    # -- Infer ------------------------------------------------------------------------------

    @rpc.handler
    async def Infer(
        self, request: job_pb2.InferRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.InferResponse:
        if not request.network:
            raise faults.FieldInvalid("network", request.network, "must name a network")
        net = self._ctx.view.networks.get(request.network)
        if net is None:
            net = await self._network(request.network)
        which = request.WhichOneof("input")
        data = None
        if which == "tensors":
            inputs = dict(request.tensors.tensors)
            if not inputs:  # every source would get "nothing given": no answer could come
                sources, _ = driver_plan.topology(net)
                raise faults.FieldInvalid(
                    "tensors", {}, f"must hold a tensor for a source VNode of {net.name!r} "
                    f"({', '.join(sources)})",
                )  # fmt: skip
            for name, tensor in inputs.items():
                _check_tensor(f"tensors[{name!r}]", tensor, self._ctx.config.max_message_bytes)
        elif which == "data":
            try:
                net_model.check_data_url(request.data.url)
            except ValueError as exc:
                raise faults.FieldInvalid("data.url", request.data.url, str(exc)) from None
            inputs, data = {}, request.data
        else:
            raise faults.FieldInvalid(
                "input", None, "give tensors (by source VNode) or a data reference"
            )
        seconds = self._ctx.config.step_timeout
        remaining = context.time_remaining()
        if remaining is not None:
            seconds = min(seconds, remaining)
        outputs = await inference.infer(
            self._ctx, request.network, inputs, seconds=seconds, data=data
        )
        warnings = []
        if await model_state.latest_model(self._ctx.store, net.name) is None:
            warnings.append(
                f"network {net.name!r} has not been trained (no training job of it "
                "succeeded); answers come from initial weights"
            )
        return job_pb2.InferResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id),
            outputs=outputs,
            warnings=warnings,
        )

    # -- reads ------------------------------------------------------------------------------

    @rpc.handler
    async def GetJob(
        self, request: job_pb2.GetJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.GetJobResponse:
        found = await self._get(request.name)
        return job_pb2.GetJobResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id), job=document(found)
        )

    @rpc.handler
    async def ListJobs(
        self, request: job_pb2.ListJobsRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.ListJobsResponse:
        try:
            selector = labels.parse_selector(request.label_selector)
        except labels.SelectorError as exc:
            raise faults.FieldInvalid("label_selector", request.label_selector, str(exc)) from None
        if request.limit < 0 or request.limit > MAX_LIMIT:
            raise faults.FieldInvalid(
                "limit", request.limit, f"must be between 0 (server default) and {MAX_LIMIT}"
            )
        limit = request.limit or DEFAULT_LIMIT
        index = ("network", request.network) if request.network else None
        items: list[Job] = []
        token: str | None = request.continue_token or None
        while len(items) < limit:
            try:
                page = await self._store.list(
                    Job, index=index, limit=limit - len(items), continue_token=token
                )
            except errors.InvalidRequest:
                raise faults.FieldInvalid(
                    "continue_token", request.continue_token[:40], "must be a previous page's"
                ) from None
            items += [j for j in page.items if selector.matches(j.metadata.labels)]
            token = page.continue_token
            if token is None:
                break
        return job_pb2.ListJobsResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id),
            items=[document(j) for j in items],
            continue_token=token or "",
        )

    async def WatchJob(
        self, request: job_pb2.WatchJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[job_pb2.WatchJobResponse]:
        try:
            rpc.check_header(request.header)
            if request.resource_version < 0:
                raise faults.FieldInvalid(
                    "resource_version", request.resource_version, "must be >= 0"
                )
            sent = await self._get(request.name)
        except Exception as exc:
            await rpc.abort(context, exc)
            return
        if not request.resource_version:
            yield _event(common_pb2.WATCH_EVENT_TYPE_ADDED, sent)
        elif sent.metadata.resource_version > request.resource_version:
            yield _event(common_pb2.WATCH_EVENT_TYPE_MODIFIED, sent)
        signal = self._ctx.feed.signal(request.name)
        while sent.status.phase not in FINAL_PHASES:
            seen = signal.value
            await driver_inbox.first_of(
                self._ctx.clock, [signal.wait_past(seen)], seconds=self._watch_poll
            )
            latest = self._ctx.feed.latest(request.name)
            if signal.value == seen:  # quiet: another replica may have written
                try:
                    latest = await self._store.get(Job, request.name)
                except errors.NotFound:
                    yield _event(common_pb2.WATCH_EVENT_TYPE_DELETED, sent)
                    return
            if latest is not None and _newer(latest, sent):
                sent = latest
                yield _event(common_pb2.WATCH_EVENT_TYPE_MODIFIED, sent)

    # -- CancelJob --------------------------------------------------------------------------

    @rpc.handler
    async def CancelJob(
        self, request: job_pb2.CancelJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.CancelJobResponse:
        async def attempt() -> Job:
            current = await self._get(request.name)
            phase = current.status.phase
            if phase == "Cancelled":
                return current
            if phase in FINAL_PHASES:
                raise faults.FailedPrecondition(
                    f"job {request.name!r} already ended {phase}; only a running job cancels",
                    reason="Finished",
                )
            cancelled = current.model_copy(deep=True)
            cancelled.status.phase = "Cancelled"
            cancelled.status.message = f"cancelled: {request.reason or 'by request'}"
            try:
                result = await self._store.update(cancelled)
            except errors.NotFound:
                raise _not_found(request.name) from None
            self._changed(result)
            self._tell(result.name, "Normal", "Cancelled", result.status.message)
            return result

        # A Conflict: the driver wrote progress meanwhile; read again. Exhausted answers
        # ABORTED (rpc's table).
        result = await retry.retry_on_conflict(attempt, what=f"cancel job {request.name!r}")
        return job_pb2.CancelJobResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id), job=document(result)
        )

    # -- DeleteJob --------------------------------------------------------------------------

    @rpc.handler
    async def DeleteJob(
        self, request: job_pb2.DeleteJobRequest, context: aio.ServicerContext[Any, Any]
    ) -> job_pb2.DeleteJobResponse:
        async def attempt() -> None:
            current = await self._get(request.name)
            phase = current.status.phase
            if phase not in FINAL_PHASES:
                raise faults.FailedPrecondition(
                    f"job {request.name!r} is {phase}; cancel it first"
                    f" (dcnctl delete job {request.name} cancels a running job)",
                    reason="Running",
                )
            try:
                await self._store.delete(
                    Job,
                    request.name,
                    resource_version=current.metadata.resource_version,
                    uid=current.metadata.uid,
                )
            except errors.NotFound:
                raise _not_found(request.name) from None

        # Only a final job is deleted, so a Conflict is the last write of a stopping driver.
        await retry.retry_on_conflict(attempt, what=f"delete job {request.name!r}")
        return job_pb2.DeleteJobResponse(
            header=rpc.response_header(request.header, self._ctx.replica_id)
        )

    async def _get(self, name: str) -> Job:
        if not name:
            raise faults.FieldInvalid("name", name, "must name a job")
        try:
            return await self._store.get(Job, name)
        except errors.NotFound:
            raise _not_found(name) from None


# -- pure helpers --------------------------------------------------------------------------


def _spec(request: job_pb2.TrainRequest) -> job_model.JobSpec:
    given: dict[str, Any] = {"network": request.network}
    for name in (
        "epochs", "batch_size", "learning_rate", "checkpoint_interval", "optimizer",
        "micro_batches",
    ):  # fmt: skip
        value = getattr(request, name)
        if value:
            given[name] = value
    if request.seed < 0:
        raise faults.FieldInvalid("seed", request.seed, "must be >= 0")
    given["seed"] = request.seed
    if request.data.url or request.data.dataset:
        data: dict[str, Any] = {"url": request.data.url}
        if request.data.dataset:
            data["dataset"] = request.data.dataset
        given["data"] = data
    try:
        return job_model.JobSpec.model_validate(given)
    except pydantic.ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(p) for p in first["loc"]) or "request"
        raise faults.FieldInvalid(field, first.get("input"), first["msg"]) from None


def _generated_name(network: str, request_id: str) -> str:
    suffix = (
        hashlib.sha256(request_id.encode()).hexdigest()[:8] if request_id else secrets.token_hex(4)
    )
    return f"{network[:240].rstrip('.-')}-{suffix}"


def _check_tensor(field: str, tensor: common_pb2.Tensor, max_bytes: int) -> None:
    try:
        tensors.decode(tensor, max_bytes=max_bytes)
    except tensors.TensorError as exc:
        kind = faults.DataLoss if exc.reason == "checksum" else faults.InvalidArgument
        raise kind(f"{field}: {exc}", reason="FieldInvalid") from None


def _newer(latest: Job, sent: Job) -> bool:
    if latest.metadata.uid != sent.metadata.uid:
        return True
    return latest.metadata.resource_version > sent.metadata.resource_version


def _event(kind: common_pb2.WatchEventType.ValueType, job: Job) -> job_pb2.WatchJobResponse:
    return job_pb2.WatchJobResponse(
        event=common_pb2.WatchEvent(
            type=kind, document=document(job), resource_version=job.metadata.resource_version
        )
    )
