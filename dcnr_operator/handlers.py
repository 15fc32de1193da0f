"""The kopf handlers: Network and Job CRs to the orchestrator and its status back.

Level-triggered: create/update handlers react fast, but correctness rests on the timer,
which every `resync` seconds compares the CR with the orchestrator and repairs what
differs (a network deleted behind the operator's back is applied again; a spec changed in
the orchestrator is overwritten by the CR's) and mirrors the status. Refusals of the
orchestrator (an invalid spec) become Warning Events on the CR, naming the field, and the
CR's status.message; they are permanent until the spec changes. Deleting a CR passes
through kopf's finalizer: the network is deleted (its jobs go with it), a job cancelled.
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
import kopf

from api.dcnr.v1 import common_pb2, job_pb2, network_pb2
from api.resources import job, meta, network
from dcnr_operator import client as client_mod
from dcnr_operator import status

GROUP, VERSION = meta.API_VERSION.split("/")
NETWORKS = network.Network.PLURAL
JOBS = job.Job.PLURAL
FINALIZER = "dcnr.io/finalizer"

log = logging.getLogger(__name__)


def _client(memo: kopf.Memo) -> client_mod.Client:
    found: client_mod.Client = memo["client"]
    return found


# -- Network ----------------------------------------------------------------------------


async def apply_network(
    c: client_mod.Client, body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch
) -> network.Network | None:
    """Applies the CR's spec; an orchestrator refusal becomes a Warning Event and the
    status message, and kopf.PermanentError (retrying cannot fix a spec)."""
    name, namespace = body.metadata.name, body.metadata.namespace or ""
    assert name is not None
    request = network_pb2.ApplyRequest(
        header=c.header(),
        document=common_pb2.ResourceDocument(
            kind=network.Network.KIND, json=status.network_document(name, namespace, spec)
        ),
        field_manager=client_mod.FIELD_MANAGER,
    )
    try:
        reply = await c.call(c.networks.Apply, request)
    except client_mod.Refused as exc:
        kopf.warn(body, reason="ApplyFailed", message=exc.message)
        patch.status["message"] = exc.message
        raise kopf.PermanentError(exc.message) from None
    for warning in reply.warnings:
        kopf.warn(body, reason="ApplyWarning", message=warning)
    applied = network.Network.model_validate_json(reply.document.json)
    patch.status.update(status.network_status(applied))
    return applied


async def get_network(c: client_mod.Client, name: str) -> network.Network | None:
    try:
        reply = await c.call(
            c.networks.GetNetwork, network_pb2.GetNetworkRequest(header=c.header(), name=name)
        )
    except client_mod.Refused as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return network.Network.model_validate_json(reply.document.json)


async def on_network_change(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    await apply_network(_client(memo), body, spec, patch)


async def resync_network(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    if body.metadata.deletion_timestamp is not None:
        return  # being deleted: the delete handler owns it now, never re-apply it
    c = _client(memo)
    name = body.metadata.name
    assert name is not None
    stored = await get_network(c, name)
    if stored is None or status.spec_drifted(spec, stored):
        why = "missing" if stored is None else "changed"
        if status.normal_spec(spec) is None and body.status.get("message"):
            return  # invalid, and already reported: a new spec is needed, not a retry
        log.info("network %s is %s in the orchestrator: applying the CR's spec", name, why)
        try:
            await apply_network(c, body, spec, patch)
        except kopf.PermanentError:
            return
        return
    patch.status.update(status.network_status(stored))


async def delete_network(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    c = _client(memo)
    request = network_pb2.DeleteNetworkRequest(
        header=c.header(),
        name=body.metadata.name,
        propagation=network_pb2.DELETE_PROPAGATION_BACKGROUND,
    )
    try:
        await c.call(c.networks.DeleteNetwork, request)
    except client_mod.Refused as exc:
        if exc.code != grpc.StatusCode.NOT_FOUND:
            kopf.warn(body, reason="DeleteFailed", message=exc.message)
            raise kopf.TemporaryError(exc.message, delay=5) from None


# -- Job --------------------------------------------------------------------------------


async def start_job(c: client_mod.Client, body: kopf.Body, spec: kopf.Spec) -> job.Job:
    """Starts the CR's job (training only: inference is a call, not a run); an existing
    job of that name is the one this CR started before."""
    name = body.metadata.name
    assert name is not None
    try:
        parsed = job.JobSpec.model_validate(dict(spec))
    except Exception as exc:  # pydantic's message names the field
        message = f"invalid spec: {exc}"
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(message) from None
    if parsed.type != "train":
        message = "spec.type: only 'train' jobs run from a Job CR; infer with 'dcnctl infer'"
        kopf.warn(body, reason="InvalidSpec", message=message)
        raise kopf.PermanentError(message)
    request = job_pb2.TrainRequest(
        header=c.header(),
        name=name,
        network=parsed.network,
        epochs=parsed.epochs,
        batch_size=parsed.batch_size,
        optimizer=parsed.optimizer,
        learning_rate=parsed.learning_rate,
        checkpoint_interval=parsed.checkpoint_interval,
        seed=parsed.seed,
        micro_batches=parsed.micro_batches,
        labels={status.NAMESPACE_LABEL: body.metadata.namespace or ""},
    )
    if parsed.data is not None:
        request.data.url = parsed.data.url
        request.data.dataset = parsed.data.dataset or ""
    try:
        reply = await c.call(c.jobs.Train, request)
    except client_mod.Refused as exc:
        if exc.code == grpc.StatusCode.ALREADY_EXISTS:
            found = await get_job(c, name)
            if found is not None:
                return found
        kopf.warn(body, reason="TrainFailed", message=exc.message)
        if exc.code == grpc.StatusCode.INVALID_ARGUMENT:
            raise kopf.PermanentError(exc.message) from None
        raise kopf.TemporaryError(exc.message, delay=5) from None
    return job.Job.model_validate_json(reply.job.json)


async def get_job(c: client_mod.Client, name: str) -> job.Job | None:
    try:
        reply = await c.call(c.jobs.GetJob, job_pb2.GetJobRequest(header=c.header(), name=name))
    except client_mod.Refused as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            return None
        raise
    return job.Job.model_validate_json(reply.job.json)


async def on_job_create(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    started = await start_job(_client(memo), body, spec)
    patch.status.update(status.job_status(started))


async def resync_job(
    body: kopf.Body, spec: kopf.Spec, patch: kopf.Patch, memo: kopf.Memo, **_: Any
) -> None:
    if body.metadata.deletion_timestamp is not None:
        return  # being deleted: the delete handler owns it now, never re-apply it
    c = _client(memo)
    name = body.metadata.name
    assert name is not None
    found = await get_job(c, name)
    if found is None:
        if body.status.get("phase") in status.FINAL_PHASES or "phase" not in body.status:
            return  # ended (and since forgotten), or never started: on_job_create owns that
        log.info("job %s is missing in the orchestrator: starting it again", name)
        found = await start_job(c, body, spec)
    patch.status.update(status.job_status(found))


async def delete_job(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    c = _client(memo)
    name = body.metadata.name
    try:
        await c.call(
            c.jobs.CancelJob,
            job_pb2.CancelJobRequest(header=c.header(), name=name, reason="Job CR deleted"),
        )
    except client_mod.Refused as exc:
        if exc.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
            raise kopf.TemporaryError(exc.message, delay=5) from None


def register(registry: kopf.OperatorRegistry, *, resync: float) -> None:
    """Every handler into `registry`; the timers every `resync` seconds."""
    for kind, on_change, resync_fn, on_delete in (
        (NETWORKS, on_network_change, resync_network, delete_network),
        (JOBS, on_job_create, resync_job, delete_job),
    ):
        kopf.on.create(GROUP, VERSION, kind, registry=registry)(on_change)
        if kind == NETWORKS:
            kopf.on.update(GROUP, VERSION, kind, field="spec", registry=registry)(on_change)
        kopf.on.delete(GROUP, VERSION, kind, registry=registry)(on_delete)
        kopf.timer(GROUP, VERSION, kind, interval=resync, registry=registry)(resync_fn)
