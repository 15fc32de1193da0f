"""Admission and limits at the gRPC boundary (issue 11), over real loopback sockets.

The server is the orchestrator's interceptor chain around a real PNodeService (SQLite store,
view, lease keeper): the decode guard with its raw size caps, the per-address Register and
per-caller hot-call token buckets, and the registration gate (join tokens, pending cap).
The buckets run on a FakeClock that the tests never advance, so "the burst and nothing
more" is exact, whatever real time the calls take.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc import aio

from api import identity
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from api.resources import pnode
from controller import config as config_mod
from controller.runtime import clock as clock_mod
from controller.runtime import ratelimit
from controller.services import admission, pnode_service, registration_gate, rpc_decode
from controller.state import leases as leases_mod
from controller.state import view as view_mod
from store import base, sqlite
from tests.support import identities

HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="test")
CAPACITY = common_pb2.Capacity(cpu_millis=1000, memory_bytes=2**30)
TOKEN = "abcdef.0123456789abcdef"
#: One agent key for every registration here: the CSR's subject is ignored.
CSR = identity.csr_pem(identity.generate_key(), "test")
UNLIMITED = admission.Limits(register=ratelimit.Limit(0, 1), hot=ratelimit.Limit(0, 1))


@dataclasses.dataclass
class Plane:
    store: base.Store
    clock: clock_mod.FakeClock
    stub: pnode_pb2_grpc.PNodeServiceAsyncStub
    refused: Counter[tuple[str, str]]

    async def register(
        self, name: str = "", *, join_token: str = "", credential: str = ""
    ) -> pnode_pb2.RegisterResponse:
        request = pnode_pb2.RegisterRequest(
            header=HEADER,
            name=name,
            capacity=CAPACITY,
            data_plane_address="127.0.0.1:7100",
            join_token=join_token,
            csr=CSR,
        )
        return await self.stub.Register(request, metadata=_bearer(credential), timeout=10)

    async def heartbeat(
        self, reply: pnode_pb2.RegisterResponse, statuses: int = 0
    ) -> pnode_pb2.HeartbeatResponse:
        request = pnode_pb2.HeartbeatRequest(
            header=HEADER,
            pnode_id=reply.pnode_id,
            incarnation=reply.incarnation,
            assignment_statuses=[
                pnode_pb2.AssignmentStatus(network="net", vnode=f"v{i}", epoch=1)
                for i in range(statuses)
            ],
        )
        return await self.stub.Heartbeat(request, metadata=_bearer(reply.credential), timeout=30)


def _bearer(credential: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {credential}"),) if credential else ()


@contextlib.asynccontextmanager
async def serving(
    tmp_path,
    *,
    limits: admission.Limits = UNLIMITED,
    join_tokens: frozenset[str] = frozenset(),
    max_pending: int = 1000,
) -> AsyncIterator[Plane]:
    config = config_mod.ControlPlaneConfig(
        heartbeat_interval=0.2,
        lease_duration=1.0,
        lost_grace=0.5,
        view_refresh=0.1,
        max_pending_pnodes=max_pending,
    )
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    view = view_mod.View(store, clock, config=config)
    await view.refresh()
    view.start()
    keeper = leases_mod.LeaseKeeper(store, clock, view=view, config=config)
    keeper.start()
    refused: Counter[tuple[str, str]] = Counter()

    def count(method: str, reason: str) -> None:
        refused[(method, reason)] += 1

    gate = registration_gate.RegistrationGate(
        view=view, clock=clock, config=config, join_tokens=join_tokens, on_refused=count
    )
    service = pnode_service.PNodeService(
        store=store,
        view=view,
        clock=clock,
        config=config,
        leases=keeper,
        replica_id="replica-t",
        authority=identities.authority(),
        gate=gate,
    )
    server = aio.server(
        interceptors=[
            rpc_decode.DecodeGuard(on_refused=count),
            admission.AdmissionLimits(limits, clock, on_refused=count),
        ]
    )
    pnode_pb2_grpc.add_PNodeServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Plane(store, clock, pnode_pb2_grpc.PNodeServiceStub(channel), refused)
    finally:
        await channel.close(None)
        await server.stop(None)
        await keeper.stop()
        await view.stop()
        await store.close()


async def refusal(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as caught:
        await call
    return caught.value.code(), caught.value.details() or ""


# -- per-address Register rate limit ---------------------------------------------------------


async def test_a_flood_of_anonymous_registrations_from_one_address_is_mostly_refused(
    tmp_path,
) -> None:
    limits = admission.Limits(register=ratelimit.Limit(5.0, 20), hot=ratelimit.Limit(0, 1))
    async with serving(tmp_path, limits=limits) as plane:
        codes: Counter[grpc.StatusCode] = Counter()
        details: set[str] = set()
        for _ in range(10):  # 2,000 registrations, 200 in flight at a time
            results = await asyncio.gather(
                *(plane.register() for _ in range(200)), return_exceptions=True
            )
            for result in results:
                if isinstance(result, grpc.RpcError):
                    codes[result.code()] += 1
                    details.add(result.details() or "")
                else:
                    assert isinstance(result, pnode_pb2.RegisterResponse)
                    codes[grpc.StatusCode.OK] += 1
        # The clock never moved: the burst, and not one registration more.
        assert codes == {grpc.StatusCode.OK: 20, grpc.StatusCode.RESOURCE_EXHAUSTED: 1980}
        assert details == {
            "Register: rate limit of 5/s, burst 20 per source address 127.0.0.1 exceeded; "
            "retry with backoff"
        }
        assert len((await plane.store.list(pnode.PNode)).items) == 20
        assert plane.refused == {("/dcnr.v1.PNodeService/Register", "RateLimited"): 1980}
        await plane.clock.advance(1.0)  # five more tokens
        for _ in range(5):
            await plane.register()
        code, _ = await refusal(plane.register())
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@pytest.mark.parametrize(
    ("peer", "address"),
    [
        ("ipv4:10.0.0.7:5123", "10.0.0.7"),
        ("ipv6:[::1]:5123", "::1"),
        ("ipv6:[2001:db8::1]:443", "2001:db8::1"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_the_source_address_is_the_peer_ip_without_the_port(peer: str, address: str) -> None:
    assert admission.peer_address(peer) == address


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("10.0.0.7", "10.0.0.7"),
        ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
        ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),  # the same host's /64: one bucket
        ("::ffff:10.0.0.7", "10.0.0.7"),
        ("fe80::1%eth0", "fe80::/64"),
        ("unix:/tmp/sock", "unix:/tmp/sock"),
    ],
)
def test_addresses_are_limited_per_ipv4_address_and_per_ipv6_64(address: str, key: str) -> None:
    assert admission.rate_key(address) == key


# -- per-caller hot-call rate limit ----------------------------------------------------------


async def test_heartbeats_are_limited_per_credential(tmp_path) -> None:
    limits = admission.Limits(register=ratelimit.Limit(0, 1), hot=ratelimit.Limit(1.0, 5))
    async with serving(tmp_path, limits=limits) as plane:
        greedy, other = await plane.register("greedy"), await plane.register("other")
        for _ in range(5):
            await plane.heartbeat(greedy)
        code, details = await refusal(plane.heartbeat(greedy))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "Heartbeat: rate limit of 1/s, burst 5 per caller" in details
        # One caller's flood does not spend another's budget.
        beat = await plane.heartbeat(other)
        assert beat.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
        assert plane.refused == {("/dcnr.v1.PNodeService/Heartbeat", "RateLimited"): 1}


async def test_invented_credentials_do_not_escape_the_address_budget(tmp_path) -> None:
    limits = admission.Limits(register=ratelimit.Limit(0, 1), hot=ratelimit.Limit(1.0, 2))
    async with serving(tmp_path, limits=limits) as plane:
        codes: Counter[grpc.StatusCode] = Counter()
        for i in range(30):  # a new made-up credential every call: a fresh per-caller bucket
            forged = pnode_pb2.RegisterResponse(pnode_id="nobody", incarnation=1)
            forged.credential = f"made-up-{i}"
            try:
                await plane.heartbeat(forged)
            except grpc.RpcError as exc:
                codes[exc.code()] += 1
            else:
                codes[grpc.StatusCode.OK] += 1
        # The address's burst (2 x ADDRESS_FACTOR) reaches the service, which refuses the
        # unknown name as it refuses a wrong credential; the limit refuses the rest unread.
        assert codes == {
            grpc.StatusCode.UNAUTHENTICATED: 2 * admission.ADDRESS_FACTOR,
            grpc.StatusCode.RESOURCE_EXHAUSTED: 30 - 2 * admission.ADDRESS_FACTOR,
        }
        assert plane.refused == {
            ("/dcnr.v1.PNodeService/Heartbeat", "RateLimited"): 30 - 2 * admission.ADDRESS_FACTOR
        }


# -- statuses per heartbeat ------------------------------------------------------------------


async def test_a_heartbeat_with_100000_statuses_is_refused_unparsed(tmp_path) -> None:
    async with serving(tmp_path) as plane:
        reply = await plane.register("p1")
        code, details = await refusal(plane.heartbeat(reply, statuses=100_000))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "exceeds the limit of 262144 bytes for a dcnr.v1.HeartbeatRequest" in details
        assert "assignment_statuses" in details
        assert "nothing of it was read" in details
        assert plane.refused == {("/dcnr.v1.PNodeService/Heartbeat", "RequestTooLarge"): 1}
        stored = await plane.store.get(pnode.PNode, "p1")
        assert stored.status.phase == "Ready"  # and the PNode itself is untouched


async def test_more_statuses_than_assignments_plus_slack_are_refused_naming_the_field(
    tmp_path,
) -> None:
    async with serving(tmp_path) as plane:
        reply = await plane.register("p1")
        # The agent knows its (empty) set: it may report at most the slack.
        beat = await plane.heartbeat(reply)
        request = pnode_pb2.HeartbeatRequest(
            header=HEADER,
            pnode_id="p1",
            incarnation=1,
            known_assignment_set_version=beat.assignment_set_version,
            assignment_statuses=[
                pnode_pb2.AssignmentStatus(network="net", vnode=f"v{i}")
                for i in range(pnode_service.STATUS_SLACK + 1)
            ],
        )
        code, details = await refusal(
            plane.stub.Heartbeat(request, metadata=_bearer(reply.credential))
        )
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert details.startswith("assignment_statuses: 9 entries; this PNode may report at most 8")
        assert plane.refused == {("/dcnr.v1.PNodeService/Heartbeat", "TooMany"): 1}
        del request.assignment_statuses[-1]
        ok = await plane.stub.Heartbeat(request, metadata=_bearer(reply.credential))
        assert ok.lease_state == pnode_pb2.LEASE_STATE_ACTIVE


async def test_a_forged_heartbeat_is_not_told_about_status_caps(tmp_path) -> None:
    async with serving(tmp_path) as plane:
        reply = await plane.register("p1")
        forged = pnode_pb2.RegisterResponse()
        forged.CopyFrom(reply)
        forged.credential = "forged"
        code, _ = await refusal(plane.heartbeat(forged, statuses=2000))
        assert code == grpc.StatusCode.UNAUTHENTICATED


# -- join tokens -----------------------------------------------------------------------------


async def test_join_tokens_gate_new_pnodes_but_not_their_re_registration(tmp_path) -> None:
    async with serving(tmp_path, join_tokens=frozenset({TOKEN, "second.token"})) as plane:
        code, details = await refusal(plane.register("p1"))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        assert details.startswith("join_token:")
        code, details = await refusal(plane.register("p1", join_token=TOKEN + "x"))
        assert code == grpc.StatusCode.PERMISSION_DENIED
        assert details.startswith("join_token:")
        assert TOKEN not in details
        assert (await plane.store.list(pnode.PNode)).items == []

        first = await plane.register("p1", join_token=TOKEN)
        assert (await plane.store.get(pnode.PNode, "p1")).status.joined_by == "token"
        again = await plane.register("p1", credential=first.credential)  # no token needed
        assert again.incarnation == 2
        assert (await plane.store.get(pnode.PNode, "p1")).status.joined_by == "token"
        # A credential of another PNode is no substitute for a token.
        code, _ = await refusal(plane.register("p2", credential=first.credential))
        assert code == grpc.StatusCode.UNAUTHENTICATED
        await plane.register("p2", join_token="second.token")
        assert plane.refused == {
            ("/dcnr.v1.PNodeService/Register", "JoinTokenMissing"): 2,
            ("/dcnr.v1.PNodeService/Register", "JoinTokenInvalid"): 1,
        }


async def test_open_registration_records_joined_by_open(tmp_path) -> None:
    async with serving(tmp_path) as plane:
        await plane.register("p1", join_token="ignored-when-open")
        assert (await plane.store.get(pnode.PNode, "p1")).status.joined_by == "open"


# -- pending cap -----------------------------------------------------------------------------


async def test_new_pnodes_are_refused_while_the_pending_cap_is_reached(tmp_path) -> None:
    async with serving(tmp_path, max_pending=3) as plane:
        replies = [await plane.register(f"p{i}") for i in range(3)]
        code, details = await refusal(plane.register("p3"))
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "the cap is 3, --max-pending-pnodes" in details
        # Re-registering an existing PNode is never refused by the cap.
        await plane.register("p0", credential=replies[0].credential)
        assert plane.refused == {("/dcnr.v1.PNodeService/Register", "PendingCap"): 1}


@dataclasses.dataclass(frozen=True)
class _Details:
    """What `intercept_service` reads of a call: its method."""

    method: str
    invocation_metadata: tuple[tuple[str, str], ...] = ()


async def test_a_method_without_a_limit_is_served_unwrapped() -> None:
    """A limit of 0 (off): the interceptor hands back the service's own handler, so a call
    pays for no bucket, no address parse and no credential digest; a limited one is wrapped."""
    handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
        lambda request, context: request
    )

    async def continuation(
        _details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[bytes, bytes]:
        return handler

    clock = clock_mod.FakeClock()
    off = admission.AdmissionLimits(UNLIMITED, clock)
    on = admission.AdmissionLimits(
        admission.Limits(register=ratelimit.Limit(1, 1), hot=ratelimit.Limit(1, 1)), clock
    )
    for method in (admission.REGISTER, *sorted(admission.HOT_METHODS)):
        details: Any = _Details(method)
        assert await off.intercept_service(continuation, details) is handler, method
        assert await on.intercept_service(continuation, details) is not handler, method
