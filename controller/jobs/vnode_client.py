"""The driver's calls to agents' VNodeService: where to send, and how hard to try.

Endpoints come from the in-memory view (the same answer ResolutionService gives agents), so
the driver never resolves over the network. A call is retried with bounded exponential
backoff while the cause may pass: UNAVAILABLE (agent restarting, connection reset),
DEADLINE_EXCEEDED, DATA_LOSS (corrupted in transit), and FAILED_PRECONDITION (the epoch we
used is stale: the endpoint is read from the view again before the retry). Anything else
is the agent refusing the message for good, and is raised at once.

A run pins the epochs it restored: once a VNode has been restored at epoch e, sending the
step to the same slot at epoch e+1 would reach a fresh instance that never loaded the
checkpoint. So a call given `epoch` refuses to follow the slot elsewhere and fails instead
(`EpochMoved`), and the run rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc import aio

from api.dcnr.v1 import vnode_pb2_grpc
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod

log = logging.getLogger("dcnr.driver.client")

T = TypeVar("T")

RETRYABLE = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.DATA_LOSS,
        grpc.StatusCode.FAILED_PRECONDITION,
    }
)

if TYPE_CHECKING:  # the async stub class exists for type checkers only
    Stub = vnode_pb2_grpc.VNodeServiceAsyncStub
    #: invoke(stub, endpoint, seconds): one call with that timeout.
    Invoke = Callable[[Stub, view_mod.Endpoint, float], Awaitable[T]]


class SendFailed(Exception):
    """A call to a VNode did not get through; the message says which and why."""


class EpochMoved(SendFailed):
    """The slot's epoch is no longer the one the run restored."""


class VNodeClient:
    def __init__(
        self,
        *,
        view: view_mod.View,
        clock: clock_mod.Clock,
        rpc_timeout: float = 5.0,
        retry_initial: float = 0.05,
        retry_max: float = 1.0,
    ) -> None:
        self._view = view
        self._clock = clock
        self._rpc_timeout = rpc_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max
        self._channels: dict[str, aio.Channel] = {}

    def endpoint(self, network: str, vnode: str, replica: int = 0) -> view_mod.Endpoint | None:
        for found in self._view.endpoints(network, vnode, self._clock.now()):
            if found.replica == replica:
                return found
        return None

    def _stub(self, address: str) -> Stub:
        channel = self._channels.get(address)
        if channel is None:
            channel = self._channels[address] = aio.insecure_channel(address)
        return vnode_pb2_grpc.VNodeServiceStub(channel)

    async def call(
        self,
        network: str,
        vnode: str,
        invoke: Invoke[T],
        *,
        deadline: float,
        epoch: int | None = None,
        replica: int = 0,
    ) -> T:
        """`invoke(stub, endpoint, timeout)` against `replica` of `vnode` until it succeeds,
        fails for good, or `deadline` (clock.monotonic()) passes."""
        delay = self._retry_initial
        last = "no live endpoint"
        where = f"{network}.{vnode}.{replica}"
        while True:
            found = self.endpoint(network, vnode, replica)
            if found is not None and epoch is not None and found.epoch != epoch:
                raise EpochMoved(
                    f"{where}: epoch moved from {epoch} to {found.epoch} (re-placed or re-issued)"
                )
            remaining = deadline - self._clock.monotonic()
            if found is not None and remaining > 0:
                try:
                    return await invoke(
                        self._stub(found.address), found, min(self._rpc_timeout, remaining)
                    )
                except aio.AioRpcError as exc:
                    code = exc.code()
                    last = f"{code.name}: {exc.details()}"
                    if code not in RETRYABLE:
                        raise SendFailed(f"{where} at {found.address}: {last}") from None
            if self._clock.monotonic() + delay >= deadline:
                raise SendFailed(f"{where}: gave up retrying; last: {last}")
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def close(self) -> None:
        channels, self._channels = self._channels, {}
        for channel in channels.values():
            await channel.close(None)
