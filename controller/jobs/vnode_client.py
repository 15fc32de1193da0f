"""The driver's calls to agents' VNodeService: where to send, and how hard to try.

Endpoints come from the in-memory view (the same answer ResolutionService gives agents), so
the driver never resolves over the network. The wire is a `Transport` (httpx's habit: one
I/O boundary with a narrow method set, and fakes implementing the same protocol in tests),
implemented over gRPC by `controller.services.vnode_transport`. It says whether a failure
may pass (`PeerError.retryable`: the agent restarting, a connection reset, a deadline,
bytes corrupted in transit, or a stale epoch, for which the endpoint is read from the view
again before the retry); such a call is retried with bounded exponential backoff. Anything
else is the agent refusing the message for good, and is raised at once.

A run pins the epochs it restored: once a VNode has been restored at epoch e, sending the
step to the same slot at epoch e+1 would reach a fresh instance that never loaded the
checkpoint. So a call given `epoch` refuses to follow the slot elsewhere and fails instead
(`EpochMoved`), and the run rolls back.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

from api.dcnr.v1 import vnode_pb2
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod

log = logging.getLogger("dcnr.driver.client")

T = TypeVar("T")


class PeerError(Exception):
    """A call to an agent failed, as the transport saw it: the message is "CODE: details";
    `retryable` says whether the same call may succeed later; `reason` is the agent's
    ErrorDetails reason ("DataError", "StaleEpoch", ...; empty when it gave none)."""

    def __init__(self, message: str, *, retryable: bool, reason: str = "") -> None:
        super().__init__(message)
        self.retryable = retryable
        self.reason = reason


class Transport(Protocol):
    """One call to the VNodeService at `address`, given up after `seconds`; raises
    `PeerError` when it does not succeed. `pnode` is the PNode the view says serves there:
    the name a TLS transport expects in the listener's certificate."""

    async def forward(
        self, address: str, request: vnode_pb2.ForwardRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.ForwardResponse: ...

    async def restore(
        self, address: str, request: vnode_pb2.RestoreRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.RestoreResponse: ...

    async def checkpoint(
        self, address: str, request: vnode_pb2.CheckpointRequest, *, seconds: float, pnode: str = ""
    ) -> vnode_pb2.CheckpointResponse: ...

    async def describe_data(
        self,
        address: str,
        request: vnode_pb2.DescribeDataRequest,
        *,
        seconds: float,
        pnode: str = "",
    ) -> vnode_pb2.DescribeDataResponse: ...

    async def close(self) -> None:
        """Release connections; the transport is not used again."""


class SendFailed(Exception):
    """A call to a VNode did not get through; the message says which and why. `reason` is
    the agent's ErrorDetails reason when it refused the call for good (empty otherwise):
    "DataError" means the data cannot be read, which no retry or rollback can fix."""

    def __init__(self, message: str, *, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class EpochMoved(SendFailed):
    """The slot's epoch is no longer the one the run restored."""


class VNodeClient:
    def __init__(
        self,
        *,
        view: view_mod.View,
        clock: clock_mod.Clock,
        transport: Transport,
        rpc_timeout: float = 5.0,
        retry_initial: float = 0.05,
        retry_max: float = 1.0,
    ) -> None:
        self._view = view
        self._clock = clock
        self._transport = transport
        self._rpc_timeout = rpc_timeout
        self._retry_initial = retry_initial
        self._retry_max = retry_max

    def endpoint(self, network: str, vnode: str, replica: int = 0) -> view_mod.Endpoint | None:
        for found in self._view.endpoints(network, vnode, self._clock.now()):
            if found.replica == replica:
                return found
        return None

    async def forward(
        self,
        network: str,
        vnode: str,
        request: vnode_pb2.ForwardRequest | Callable[[view_mod.Endpoint], vnode_pb2.ForwardRequest],
        *,
        deadline: float,
        epoch: int | None = None,
        replica: int = 0,
    ) -> vnode_pb2.ForwardResponse:
        """`request`, or a function building it for the endpoint found (a call not pinned to
        an epoch addresses whichever epoch is live)."""

        def send(found: view_mod.Endpoint, seconds: float) -> Awaitable[vnode_pb2.ForwardResponse]:
            built = request(found) if callable(request) else request
            return self._transport.forward(found.address, built, seconds=seconds, pnode=found.pnode)

        return await self._call(
            network, vnode, send, deadline=deadline, epoch=epoch, replica=replica
        )

    async def restore(
        self,
        network: str,
        vnode: str,
        request: vnode_pb2.RestoreRequest,
        *,
        deadline: float,
        epoch: int | None = None,
        replica: int = 0,
    ) -> vnode_pb2.RestoreResponse:
        def send(found: view_mod.Endpoint, seconds: float) -> Awaitable[vnode_pb2.RestoreResponse]:
            return self._transport.restore(
                found.address, request, seconds=seconds, pnode=found.pnode
            )

        return await self._call(
            network, vnode, send, deadline=deadline, epoch=epoch, replica=replica
        )

    async def checkpoint(
        self,
        network: str,
        vnode: str,
        request: vnode_pb2.CheckpointRequest,
        *,
        deadline: float,
        epoch: int | None = None,
        replica: int = 0,
    ) -> vnode_pb2.CheckpointResponse:
        def send(
            found: view_mod.Endpoint, seconds: float
        ) -> Awaitable[vnode_pb2.CheckpointResponse]:
            return self._transport.checkpoint(
                found.address, request, seconds=seconds, pnode=found.pnode
            )

        return await self._call(
            network, vnode, send, deadline=deadline, epoch=epoch, replica=replica
        )

    async def describe_data(
        self,
        network: str,
        vnode: str,
        request: Callable[[view_mod.Endpoint], vnode_pb2.DescribeDataRequest],
        *,
        deadline: float,
        replica: int = 0,
    ) -> vnode_pb2.DescribeDataResponse:
        """What a source's data holds, asked of whichever epoch of the slot is live
        (`request` builds the message for the endpoint found)."""

        def send(
            found: view_mod.Endpoint, seconds: float
        ) -> Awaitable[vnode_pb2.DescribeDataResponse]:
            return self._transport.describe_data(
                found.address, request(found), seconds=seconds, pnode=found.pnode
            )

        return await self._call(
            network, vnode, send, deadline=deadline, epoch=None, replica=replica
        )

    async def _call(
        self,
        network: str,
        vnode: str,
        send: Callable[[view_mod.Endpoint, float], Awaitable[T]],
        *,
        deadline: float,
        epoch: int | None,
        replica: int,
    ) -> T:
        """`send(endpoint, timeout)` to `replica` of `vnode` until it succeeds, fails for
        good, or `deadline` (clock.monotonic()) passes."""
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
                    return await send(found, min(self._rpc_timeout, remaining))
                except PeerError as exc:
                    last = str(exc)
                    if not exc.retryable:
                        raise SendFailed(
                            f"{where} at {found.address}: {last}", reason=exc.reason
                        ) from None
            if self._clock.monotonic() + delay >= deadline:
                raise SendFailed(f"{where}: gave up retrying; last: {last}")
            await self._clock.sleep(delay)
            delay = min(delay * 2, self._retry_max)

    async def close(self) -> None:
        """Closes the transport too: the client is its one user (httpx's Client and its
        transport)."""
        await self._transport.close()
