"""Authorization like NodeRestriction, over real gRPC sockets: the one table of which method
needs which access, the read-only token role, and who ResolutionService answers.

The interceptor is tested in front of a generic handler that answers every method, so a
call that gets through says "served" and one that is refused never reached a handler.
ResolutionService is tested with its gate over a view of a real SQLite store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import descriptor, descriptor_pool
from grpc import aio

from api.dcnr.v1 import common_pb2, resolve_pb2, resolve_pb2_grpc
from api.resources import pnode
from controller import metrics as metrics_mod
from controller.runtime import clock as clocks
from controller.services import auth, catalog, resolution_service
from controller.state import credentials, identities
from controller.state import view as view_mod
from store import sqlite
from tests.controller.state import test_view as records

ADMIN, READ_ONLY = "admin-token", "read-only-token"
SERVED = b"served"
#: Raw bytes both ways: no message types are needed to be served or refused.
RAW: Any = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}


def dcnr_methods() -> list[descriptor.MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [
        method
        for full_name, _add, _servicer in catalog.generated()
        for method in pool.FindServiceByName(full_name).methods
    ]


def full_name(method: descriptor.MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


STREAMING = {full_name(m): m.server_streaming for m in dcnr_methods()}


def refused_count(metrics: metrics_mod.Metrics, method: str, reason: str) -> float:
    value = metrics.registry.get_sample_value(
        "dcnr_rpc_refused_total", {"method": method, "reason": reason}
    )
    return value or 0.0


# -- the table ------------------------------------------------------------------------------


def test_every_dcnr_method_is_in_exactly_one_row_of_the_table() -> None:
    assert len(STREAMING) >= 30
    assert sorted(auth.METHODS) == sorted(STREAMING), "add the new method to auth.METHODS"


def test_the_roles_of_the_table() -> None:
    admin = {m.rsplit("/", 1)[1] for m, a in auth.METHODS.items() if a is auth.Access.ADMIN}
    assert admin == {
        "Apply", "DeleteNetwork", "Train", "Infer", "CancelJob", "DeleteJob",
        "Cordon", "Uncordon", "Drain",
    }  # fmt: skip
    read = {m.rsplit("/", 1)[1] for m, a in auth.METHODS.items() if a is auth.Access.READ}
    assert all(m.startswith(("Get", "List", "Watch", "Explain")) for m in read), read
    assert auth.access("/grpc.health.v1.Health/Check") is None
    assert auth.access("/dcnr.v1.NetworkService/NotYetInTheTable") is auth.Access.ADMIN


def test_token_roles_are_checked_up_front(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="need admin tokens"):
        auth.Tokens((), {"r"})
    with pytest.raises(ValueError, match="both an admin and a read-only"):
        auth.Tokens({"same"}, {"same"})
    tokens = auth.Tokens({"a"}, {"r"})
    assert (tokens.role("a"), tokens.role("r"), tokens.role("x"), tokens.role(None)) == (
        "admin",
        "read-only",
        None,
        None,
    )
    empty = tmp_path / "empty"
    empty.write_text("# none\n")
    with pytest.raises(ValueError, match=r"--read-only-token-file .*holds no token"):
        auth.load_tokens(empty, "--read-only-token-file")


# -- the interceptor ------------------------------------------------------------------------


class AnswerEverything(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    """Serves every dcnr.v1 method (and one not in the table) with raw bytes."""

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method = handler_call_details.method
        if method == UNLISTED or not STREAMING.get(method, True):
            return grpc.unary_unary_rpc_method_handler(self._unary)
        if method in STREAMING:
            return grpc.unary_stream_rpc_method_handler(self._stream)
        return None

    async def _unary(self, request: bytes, context: Any) -> bytes:
        return SERVED

    async def _stream(self, request: bytes, context: Any) -> AsyncIterator[bytes]:
        yield SERVED


UNLISTED = "/dcnr.v1.NetworkService/NotYetInTheTable"


class Guarded:
    def __init__(self) -> None:
        self.metrics = metrics_mod.Metrics()
        self.server = aio.server(
            interceptors=[
                auth.AdminTokenInterceptor(
                    auth.Tokens({ADMIN}, {READ_ONLY}), on_refused=self.metrics.refused
                )
            ]
        )
        self.server.add_generic_rpc_handlers((AnswerEverything(),))
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")

    async def call(self, method: str, token: str | None) -> grpc.StatusCode:
        """OK when the call was served, else the refusal's code."""
        metadata = (("authorization", f"Bearer {token}"),) if token is not None else ()
        try:
            if STREAMING.get(method, False):
                streaming = self.channel.unary_stream(method, **RAW)
                stream = streaming(b"", metadata=metadata, timeout=10)
                assert [m async for m in stream] == [SERVED]
            else:
                unary = self.channel.unary_unary(method, **RAW)
                assert await unary(b"", metadata=metadata, timeout=10) == SERVED
        except aio.AioRpcError as exc:
            self.last = exc
            return exc.code()
        return grpc.StatusCode.OK


@pytest.fixture
async def guarded() -> AsyncIterator[Guarded]:
    it = Guarded()
    await it.server.start()
    try:
        yield it
    finally:
        await it.channel.close(None)
        await it.server.stop(None)


OK, UNAUTH, DENIED = (
    grpc.StatusCode.OK,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
)
#: Access → what no token, a wrong one, a read-only and an admin token get.
EXPECTED = {
    auth.Access.ADMIN: (UNAUTH, DENIED, DENIED, OK),
    auth.Access.READ: (UNAUTH, DENIED, OK, OK),
    # Checked by the services themselves (ResolveGate, PNode credentials): passed on.
    auth.Access.RESOLVE: (OK, OK, OK, OK),
    auth.Access.PNODE: (OK, OK, OK, OK),
}


@pytest.mark.parametrize("method", sorted(auth.METHODS))
async def test_each_method_by_the_table(guarded: Guarded, method: str) -> None:
    got = tuple([await guarded.call(method, token) for token in (None, "wrong", READ_ONLY, ADMIN)])
    assert got == EXPECTED[auth.METHODS[method]], method


@pytest.mark.parametrize(
    "method", sorted(m for m, a in auth.METHODS.items() if a is auth.Access.ADMIN)
)
async def test_a_read_only_token_is_refused_every_mutating_call_naming_role_and_method(
    guarded: Guarded, method: str
) -> None:
    before = refused_count(guarded.metrics, method, "ReadOnly")
    assert await guarded.call(method, READ_ONLY) == DENIED
    details = guarded.last.details() or ""
    assert "read-only" in details, details
    assert method in details, details
    assert refused_count(guarded.metrics, method, "ReadOnly") == before + 1


async def test_a_method_missing_from_the_table_needs_the_admin_role(guarded: Guarded) -> None:
    assert await guarded.call(UNLISTED, READ_ONLY) == DENIED
    assert await guarded.call(UNLISTED, ADMIN) == OK


async def test_refusals_are_counted_by_method_and_reason(guarded: Guarded) -> None:
    method = "/dcnr.v1.NetworkService/ListNetworks"
    before = [refused_count(guarded.metrics, method, r) for r in ("Unauthenticated", "Forbidden")]
    assert await guarded.call(method, None) == UNAUTH
    assert await guarded.call(method, "wrong") == DENIED
    after = [refused_count(guarded.metrics, method, r) for r in ("Unauthenticated", "Forbidden")]
    assert after == [before[0] + 1, before[1] + 1]


# -- ResolutionService ----------------------------------------------------------------------


class Resolving:
    """Network mnist (input -> out): p1 hosts input.1 and out.0, p2 hosts input.0; network
    other (a -> b) on p3; p4 hosts nothing."""

    def __init__(self, store: sqlite.SqliteStore) -> None:
        self.store = store
        self.clock = clocks.FakeClock()
        self.view = view_mod.View(store, self.clock, config=records.CONFIG)
        self.metrics = metrics_mod.Metrics()
        self.identities = identities.Identities(self.view)
        self.server = aio.server()
        gate = auth.ResolveGate(
            tokens=auth.Tokens({ADMIN}, {READ_ONLY}),
            identities=self.identities,
            view=self.view,
            on_refused=self.metrics.refused,
        )
        service = resolution_service.ResolutionService(
            view=self.view, clock=self.clock, replica_id="r", gate=gate
        )
        resolve_pb2_grpc.add_ResolutionServiceServicer_to_server(service, self.server)
        self.port = self.server.add_insecure_port("127.0.0.1:0")
        self.channel = aio.insecure_channel(f"127.0.0.1:{self.port}")
        self.stub = resolve_pb2_grpc.ResolutionServiceStub(self.channel)
        self.secrets: dict[str, str] = {}

    async def fill(self) -> None:
        now: datetime = self.clock.now()
        nodes = []
        for name in ("p1", "p2", "p3", "p4"):
            node = records.pnode_record(name)
            self.secrets[name], node.spec.credential_hash = credentials.issue()
            nodes += [node, records.lease_record(name, renewed=now)]
        await records.create_all(
            self.store,
            *nodes,
            records.network_record("mnist", ("input", "out")),
            records.network_record("other", ("a", "b")),
            records.allocation_record("mnist", "input", 1, "p1", epoch=3),
            records.allocation_record("mnist", "input", 0, "p2"),
            records.allocation_record("mnist", "out", 0, "p1"),
            records.allocation_record("other", "a", 0, "p3"),
        )
        await self.view.refresh()

    def who(self, caller: str | None) -> tuple[tuple[str, str], ...]:
        """Metadata of `caller`: a PNode name (its credential), a token, or None."""
        if caller is None:
            return ()
        return (("authorization", f"Bearer {self.secrets.get(caller, caller)}"),)

    async def resolve(self, caller: str | None, network: str, vnode: str) -> list[str]:
        reply = await self.stub.Resolve(
            resolve_pb2.ResolveRequest(network=network, vnode=vnode),
            metadata=self.who(caller),
            timeout=10,
        )
        return [e.pnode_id for e in reply.endpoints.endpoints]

    async def batch(self, caller: str | None, *refs: tuple[str, str]) -> int:
        reply = await self.stub.BatchResolve(
            resolve_pb2.BatchResolveRequest(
                vnodes=[common_pb2.VNodeRef(network=n, vnode=v) for n, v in refs]
            ),
            metadata=self.who(caller),
            timeout=10,
        )
        return len(reply.endpoints)

    async def watch_first(self, caller: str | None, network: str) -> list[str]:
        call = self.stub.WatchEndpoints(
            resolve_pb2.WatchEndpointsRequest(network=network),
            metadata=self.who(caller),
            timeout=10,
        )
        try:
            first = await call.read()
        finally:
            call.cancel()
        assert isinstance(first, resolve_pb2.WatchEndpointsResponse)
        return sorted(v.vnode for v in first.changed)

    def refused(self, method: str, reason: str) -> float:
        return refused_count(self.metrics, f"/dcnr.v1.ResolutionService/{method}", reason)


@pytest.fixture
async def resolving(tmp_path: Path) -> AsyncIterator[Resolving]:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    it = Resolving(store)
    await it.fill()
    await it.server.start()
    try:
        yield it
    finally:
        await it.channel.close(None)
        await it.server.stop(None)
        await store.close()


async def refusal(awaitable: Any) -> tuple[grpc.StatusCode, str, Any]:
    with pytest.raises(aio.AioRpcError) as caught:
        await awaitable
    error = caught.value
    return error.code(), error.details() or "", error.trailing_metadata()


@pytest.mark.parametrize("caller", [None, "not-a-credential-or-token"])
async def test_anonymous_and_unknown_callers_are_unauthenticated_on_every_method(
    resolving: Resolving, caller: str | None
) -> None:
    for call, method in (
        (resolving.resolve(caller, "mnist", "input"), "Resolve"),
        (resolving.batch(caller, ("mnist", "input")), "BatchResolve"),
        (resolving.watch_first(caller, "mnist"), "WatchEndpoints"),
    ):
        code, details, _ = await refusal(call)
        assert code == UNAUTH, method
        assert "mnist" not in details
        assert "input" not in details
        assert resolving.refused(method, "Unauthenticated") == 1


async def test_hosting_pnodes_and_their_neighbours_are_answered(resolving: Resolving) -> None:
    assert await resolving.resolve("p1", "mnist", "input") == ["p2", "p1"]
    # p2 hosts only input.0: out is its neighbour, and a replica of input its own VNode.
    assert await resolving.resolve("p2", "mnist", "out") == ["p1"]
    assert await resolving.batch("p2", ("mnist", "input"), ("mnist", "out")) == 2
    assert await resolving.watch_first("p2", "mnist") == ["input", "out"]
    assert await resolving.watch_first("p3", "other") == ["a", "b"]


@pytest.mark.parametrize("token", [ADMIN, READ_ONLY])
async def test_admin_and_read_only_tokens_are_answered(resolving: Resolving, token: str) -> None:
    assert await resolving.resolve(token, "other", "a") == ["p3"]
    assert await resolving.batch(token, ("mnist", "out"), ("other", "b")) == 2
    assert await resolving.watch_first(token, "mnist") == ["input", "out"]
    # An entitled caller's NOT_FOUND still lists the network's VNodes.
    code, details, _ = await refusal(resolving.resolve(token, "mnist", "nope"))
    assert code == grpc.StatusCode.NOT_FOUND
    assert "input, out" in details


async def test_a_pnode_of_another_network_is_refused(resolving: Resolving) -> None:
    for caller in ("p3", "p4"):  # another network's host; a PNode hosting nothing
        for call in (
            resolving.resolve(caller, "mnist", "input"),
            resolving.batch(caller, ("mnist", "input")),
            resolving.watch_first(caller, "mnist"),
        ):
            code, details, _ = await refusal(call)
            assert code == DENIED
            assert f"pnode {caller!r} hosts no VNode of network 'mnist'" in details
    # A batch is refused as a whole when one of its networks is not the caller's.
    code, _, _ = await refusal(resolving.batch("p3", ("other", "a"), ("mnist", "input")))
    assert code == DENIED
    assert resolving.refused("Resolve", "NotHosting") == 2
    assert resolving.refused("BatchResolve", "NotHosting") == 3
    assert resolving.refused("WatchEndpoints", "NotHosting") == 2


async def test_not_found_reveals_nothing_to_a_caller_not_entitled(resolving: Resolving) -> None:
    """The same answer, byte for byte, for a VNode or network that exists and one that does
    not: no VNode list, nothing about existence."""
    for caller in (None, "p3"):
        real = await refusal(resolving.resolve(caller, "mnist", "input"))
        no_vnode = await refusal(resolving.resolve(caller, "mnist", "no-such-vnode"))
        assert real == no_vnode
        ghost = await refusal(resolving.resolve(caller, "ghost", "input"))
        assert ghost[0] == real[0]
        assert ghost[2] == real[2]
        assert ghost[1] == real[1].replace("mnist", "ghost")
        watch_ghost = await refusal(resolving.watch_first(caller, "ghost"))
        assert watch_ghost[0] == real[0]
        assert "input" not in ghost[1] + watch_ghost[1]


async def test_a_credential_stops_working_when_its_pnode_registers_again(
    resolving: Resolving,
) -> None:
    assert await resolving.resolve("p2", "mnist", "out") == ["p1"]
    old = resolving.secrets["p2"]
    node = await resolving.store.get(pnode.PNode, "p2")
    new, node.spec.credential_hash = credentials.issue()
    node.status.incarnation += 1
    resolving.view.apply_written([await resolving.store.update(node)])
    code, _, _ = await refusal(resolving.resolve(old, "mnist", "out"))
    assert code == UNAUTH
    assert await resolving.resolve(new, "mnist", "out") == ["p1"]


async def test_a_watch_ends_when_its_pnode_no_longer_hosts_part_of_the_network(
    resolving: Resolving,
) -> None:
    call = resolving.stub.WatchEndpoints(
        resolve_pb2.WatchEndpointsRequest(network="mnist"), metadata=resolving.who("p2")
    )
    try:
        first = await call.read()
        assert isinstance(first, resolve_pb2.WatchEndpointsResponse)
        # p2's only VNode of mnist (input.0) moves to p1: the next change is not p2's to see.
        moved = records.allocation_record("mnist", "input", 0, "p1", epoch=2)
        current = await resolving.store.get(type(moved), moved.name)
        moved.metadata.resource_version = current.metadata.resource_version
        resolving.view.apply_written([await resolving.store.update(moved)])
        with pytest.raises(aio.AioRpcError) as caught:
            await call.read()
    finally:
        call.cancel()
    assert caught.value.code() == DENIED
    assert "pnode 'p2' hosts no VNode of network 'mnist'" in (caught.value.details() or "")
    assert resolving.refused("WatchEndpoints", "NotHosting") == 1


# -- identities -----------------------------------------------------------------------------


def test_a_verified_credential_is_not_hashed_again(
    resolving: Resolving, monkeypatch: pytest.MonkeyPatch
) -> None:
    hashed: list[str] = []
    digest = credentials.digest

    def counting(credential: str) -> str:
        hashed.append(credential)
        return digest(credential)

    monkeypatch.setattr(credentials, "digest", counting)
    cache = identities.Identities(resolving.view, max_cached=2)
    for _ in range(100):
        assert cache.pnode(resolving.secrets["p1"]) == "p1"
    assert len(hashed) == 1
    assert [cache.pnode(resolving.secrets[n]) for n in ("p2", "p3", "p1")] == ["p2", "p3", "p1"]
    assert len(hashed) == 4  # p1 was dropped (at most two kept) and verified again
    assert cache.pnode("invented") is None
    assert cache.pnode(None) is None
