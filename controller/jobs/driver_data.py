"""What the driver learns about the sources' data: from the agents that hold it, never a file.

The orchestrator never opens a data set: it coordinates and never computes, and it may run
where no data is (a service started in any directory, in a container without the data).
The one fact a training run needs, how many samples an epoch has, comes from the agents
hosting the source VNodes: VNodeService.DescribeData of every replica of every source. Each
agent resolves the data ref as it will when it reads the batches (its `--dataset` mapping
first, then relative file:// URLs against its `--workdir`), so the answer describes exactly
the data the batches are cut from; placement's data locality already decided which agents
those are.

Which data: the job's (`spec.data`, what `train --data URL` sets) overrides every source's
own ref (controller.jobs.driver_plan.source_data); it is named in the request, and again in
each source's Restore, so the agents read it. Without it the request names nothing and the
agent describes the VNode's own (its assignment's) data ref.

The decision on the answers is pure (`samples`), each rule with its reason:

    a source's data lacks its params.field   JobFailed, naming the VNode, the URL and the
                                             arrays there are: the data is wrong
    the agent cannot read the data           JobFailed with the agent's words (reason
      ("DataError": no such file, not an     DataError): no retry can fix a missing file
      .npz/.npy, S3 refused)
    answers differ in the number of samples  JobFailed listing them: data sets are immutable,
      (replicas of a source, or sources)     so no retry makes two copies agree
    no samples                               JobFailed: nothing to train on

Anything else that keeps an answer from coming (the agent restarting, a VNode not hosted
yet, a deadline) is a Rollback: the run tries again in a new attempt.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping, Sequence

from api.dcnr.v1 import common_pb2, vnode_pb2
from api.resources import network as net_model
from controller.jobs import driver_calls, driver_plan, vnode_client
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod

JobFailed = driver_plan.JobFailed
DATA_ERROR = "DataError"


@dataclasses.dataclass(frozen=True, slots=True)
class Answer:
    """One replica of one source: the data it was asked about, and what its agent said."""

    vnode: str
    replica: int
    url: str
    field: str
    described: vnode_pb2.DescribeDataResponse


def samples(answers: Sequence[Answer], *, network: str) -> int:
    """The number of samples per epoch every answer agrees on; JobFailed otherwise (the
    module docstring's rules)."""
    counts: dict[str, int] = {}
    for a in answers:
        d = a.described
        if not d.has_field or not d.shape:
            held = ", ".join(repr(f) for f in d.fields) or "none"
            raise JobFailed(
                f"vnode {a.vnode!r}: params.field {a.field!r} is not an array of "
                f"{a.url!r} (read at {d.resolved_url}; it holds: {held})"
            )
        counts[f"{a.vnode}.{a.replica}"] = int(d.shape[0])
    if not counts:
        raise JobFailed(f"network {network!r} has no source to read data")
    if len(set(counts.values())) > 1:
        listed = ", ".join(f"{slot}: {n}" for slot, n in sorted(counts.items()))
        raise JobFailed(
            f"the sources' data differ in samples ({listed}); every source, and every "
            "replica's copy, must hold the same number"
        )
    rows = next(iter(counts.values()))
    if rows == 0:
        raise JobFailed(f"the sources' data of network {network!r} have no samples")
    return rows


async def ask(
    client: vnode_client.VNodeClient,
    clock: clock_mod.Clock,
    *,
    net: net_model.Network,
    data: Mapping[str, net_model.DataRef],
    override: net_model.DataRef | None,
    seconds: float,
) -> list[Answer]:
    """DescribeData of every replica (tiebreakers included) of every source in `data`
    (source → the data it reads in this job). `override`: the job's data, named in each
    request; None: each agent describes its VNode's own data ref."""
    network = net.name
    replicas = driver_plan.replica_counts(net)
    deadline = clock.monotonic() + seconds
    ref = common_pb2.DataRef(url=override.url, dataset=override.dataset or "") if override else None

    async def one(vnode: str, replica: int) -> Answer:
        def addressed(endpoint: view_mod.Endpoint) -> vnode_pb2.DescribeDataRequest:
            request = vnode_pb2.DescribeDataRequest(
                network=network, vnode=vnode, replica=replica, epoch=endpoint.epoch
            )
            if ref is not None:
                request.data.CopyFrom(ref)
            return request

        try:
            described = await client.describe_data(
                network, vnode, addressed, deadline=deadline, replica=replica
            )
        except vnode_client.SendFailed as exc:
            if exc.reason == DATA_ERROR:
                raise JobFailed(f"vnode {vnode!r}: its data cannot be read: {exc}") from None
            raise driver_calls.Rollback(f"describing the data of {vnode!r}: {exc}") from None
        spec = net.vnode(vnode)
        field = spec.params.get("field") if spec is not None else None
        return Answer(
            vnode, replica, data[vnode].url, field if isinstance(field, str) else "", described
        )

    found = await asyncio.gather(
        *(one(v, r) for v in data for r in range(replicas.get(v, 1))), return_exceptions=True
    )
    for outcome in found:  # a JobFailed outranks a Rollback: retrying cannot fix it
        if isinstance(outcome, JobFailed):
            raise outcome
    for outcome in found:
        if isinstance(outcome, BaseException):
            raise outcome
    return [a for a in found if isinstance(a, Answer)]
