"""Inference through the driver: tensors in at the sources, the sinks' outputs back.

Answered within the call, not as a Job: nothing durable happens, so nothing needs to
survive a restart. The driver moves tensors only; a source the caller gave nothing gets an
empty tensor (a loss's target input, which inference ignores).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable
from typing import Any

import grpc

from api import tensors
from api.dcnr.v1 import common_pb2, vnode_pb2
from controller import driver, driver_inbox, driver_plan, model_state, rpc, vnode_client
from controller import view as view_mod


async def infer(
    ctx: driver.DriverContext,
    network: str,
    inputs: dict[str, common_pb2.Tensor],
    *,
    seconds: float,
) -> dict[str, common_pb2.Tensor]:
    net = ctx.view.networks.get(network)
    if net is None:
        raise rpc.RpcFailure(
            grpc.StatusCode.NOT_FOUND, f"network {network!r} not found", reason="NotFound"
        )
    sources, sinks = driver_plan.topology(net)
    for name in sorted(inputs):
        if name not in sources:
            raise rpc.invalid(
                f"tensors[{name!r}]",
                name,
                f"must name a source VNode of {network!r}: {', '.join(sources)}",
            )
    missing = [v.name for v in net.spec.vnodes if ctx.client.endpoint(network, v.name) is None]
    if missing:
        raise rpc.RpcFailure(
            grpc.StatusCode.UNAVAILABLE,
            f"network {network!r} is not ready: no live replica 0 of {', '.join(missing)}",
            reason="NotReady",
        )
    try:
        await model_state.ensure_restored(ctx, network, deadline=ctx.clock.monotonic() + seconds)
    except vnode_client.SendFailed as exc:
        raise rpc.RpcFailure(
            grpc.StatusCode.UNAVAILABLE,
            f"network {network!r}: a re-placed VNode could not be restored from its trained "
            f"state: {exc}",
            reason="Unavailable",
        ) from None
    request_id = uuid.uuid4().hex
    job = f"infer-{request_id}"
    reply_to = await ctx.wait_reply_to()
    clock = ctx.clock
    deadline = clock.monotonic() + seconds
    box = ctx.inbox.open(job=job, network=network, attempt=0, position=request_id, sinks=sinks)

    async def one(source: str) -> None:
        tensor = inputs[source] if source in inputs else tensors.empty()

        async def invoke(
            stub: vnode_client.Stub, endpoint: view_mod.Endpoint, timeout_s: float
        ) -> vnode_pb2.ForwardResponse:
            request = vnode_pb2.ForwardRequest(
                job=job,
                request_id=request_id,
                network=network,
                sender_vnode=driver_inbox.DRIVER,
                target_vnode=source,
                target_replica=0,
                target_epoch=endpoint.epoch,
                tensor=tensor,
                reply_to=reply_to,
                attempt=0,
            )
            return await stub.Forward(request, timeout=timeout_s)

        await ctx.client.call(network, source, invoke, deadline=deadline)

    sends = asyncio.ensure_future(asyncio.gather(*(one(s) for s in sources)))
    try:
        while not (box.complete and sends.done()):
            if box.failed is not None:
                raise rpc.RpcFailure(
                    grpc.StatusCode.UNAVAILABLE,
                    f"inference on {network!r}: a result failed validation ({box.failed}); "
                    "nothing unchecked is returned: retry",
                    reason="Unavailable",
                )
            if sends.done():
                sends.result()
            remaining = deadline - clock.monotonic()
            if remaining <= 0:
                waiting = ", ".join(box.missing()) or "the sources to accept the input"
                raise rpc.RpcFailure(
                    grpc.StatusCode.DEADLINE_EXCEEDED,
                    f"inference on {network!r} got no answer within {seconds:g} s from {waiting}",
                    reason="Timeout",
                )
            waits: list[Awaitable[Any]] = [box.changed.wait_past(box.changed.value)]
            if not sends.done():
                waits.append(asyncio.shield(sends))
            await driver_inbox.first_of(clock, waits, seconds=remaining)
        sends.result()
    except vnode_client.SendFailed as exc:
        raise rpc.RpcFailure(grpc.StatusCode.UNAVAILABLE, str(exc), reason="Unavailable") from None
    finally:
        if not sends.done():
            sends.cancel()
        await asyncio.gather(sends, return_exceptions=True)
        ctx.inbox.forget(job)
    return dict(box.outputs)
