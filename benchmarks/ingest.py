"""Scenario 3: heartbeat ingest and resolution on a real orchestrator process, against a bare
grpc.aio echo service answering with payloads of the same sizes, driven by the same clients
in the same run (`benchmarks.load`, in `Size.clients` processes of `benchmarks.load_worker`).

The conditions are issue 13's: 10,000 registered PNodes, half through the measured replica
and half through a second replica on the same SQLite file. Each replica takes
`background_rate` heartbeats/s of its own PNodes throughout (from a load process of their
own), so no lease expires mid-run and the second replica writes leases, which the measured
replica's view follows through the change feed.

Heartbeats: each call a real, authenticated Heartbeat of one of the measured replica's
PNodes (no VNodes), sent closed-loop by 64 concurrent callers (as fast as the server
allows). Resolution: `Resolve` of the VNodes of a placed 50-VNode network, first closed-loop
(saturation), then open-loop at rising fractions of that saturation rate for latency. The
echo baseline gets the same request bytes, and answers with as many bytes as the
orchestrator's answer had.

The orchestrators run with a 60 s lease and grace (`SERVE_FLAGS`) so that PNodes registered
early do not expire while later ones register: with the default 4 s lease the first
registrations would be fenced by the time the heartbeat phase starts, and a fenced answer
is a cheaper code path than the one being measured. Lease persistence is coalesced to one
write per PNode per lease/3 whatever the lease (DESIGN.md), so this changes how often the
store is written (every 20 s rather than 1.3 s per PNode), not what a heartbeat costs.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc

from api import identity
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc, resolve_pb2
from benchmarks import harness, load, load_worker
from tests.integration import cluster
from tests.support import procs

NAME = "ingest"
HEARTBEAT = "/dcnr.v1.PNodeService/Heartbeat"
RESOLVE = "/dcnr.v1.ResolutionService/Resolve"
#: The admission limits are off: this measures the services, and one benchmark client
#: registers thousands of PNodes and resolves hundreds of times a second from one address,
#: far past the per-address and per-caller defaults (docs/security.md; `admission` measures
#: the limiter itself), and registers them all before any heartbeats (past the cap on
#: pending PNodes, which refused the 1,001st registration).
FLAGS = (
    "--lease-duration", "30", "--lost-grace", "30", "--register-rate", "0", "--call-rate", "0",
    "--max-pending-pnodes", "1000000",
)  # fmt: skip
#: This scenario's flags: FLAGS with a 60 s lease and grace. 10,000 registrations take 20 s
#: or more, and a PNode registered first must not expire before the load reaches it (the
#: second replica's round through its PNodes takes 5,000 / `background_rate` = 20 s).
SERVE_FLAGS = (*FLAGS, "--lease-duration", "60", "--lost-grace", "60")
CONCURRENCY = 64
TARGET_SHARE = 0.6
TARGET_P99 = 0.005


@dataclass(frozen=True, slots=True)
class Size:
    pnodes: int
    vnodes: int
    seconds: float
    fractions: tuple[float, ...]
    #: Heartbeats per second sent to each replica, of the PNodes registered through it,
    #: throughout: the second replica's make it write (its lease keeper persists each
    #: PNode's renewal every lease/3), which the measured replica's view follows through
    #: the feed; the measured replica's keep its PNodes' leases alive.
    background_rate: float
    #: Load-generating processes driving each measurement (`benchmarks.load_worker`).
    clients: int


FULL = Size(
    pnodes=10_000, vnodes=50, seconds=8.0, fractions=(0.1, 0.25, 0.5, 0.75, 0.9),
    background_rate=250.0, clients=2,
)  # fmt: skip
SMOKE = Size(pnodes=20, vnodes=5, seconds=1.0, fractions=(0.5,), background_rate=10.0, clients=2)


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    report = harness.Report(
        NAME,
        "Heartbeat ingest and resolution vs a bare grpc.aio echo service",
        {
            "pnodes": size.pnodes,
            "network_vnodes": size.vnodes,
            "closed_loop_concurrency": CONCURRENCY,
            "client_processes": size.clients,
            "channels_per_client": 4,
            "seconds_per_measurement": size.seconds,
            "open_loop_fractions_of_saturation": list(size.fractions),
            "orchestrator_flags": list(SERVE_FLAGS),
            "store": "sqlite",
            "replicas": 2,
            "background_heartbeats_per_s_per_replica": size.background_rate,
        },
    )
    store_url = f"sqlite:///{ctx.workdir / 'ingest.db'}"
    with (
        procs.orchestrator(
            store_url, extra=SERVE_FLAGS, log=ctx.workdir / "orchestrator.log", log_level="warning"
        ) as served,
        procs.orchestrator(
            store_url, extra=SERVE_FLAGS, log=ctx.workdir / "second.log", log_level="warning"
        ) as second,
    ):
        address = served.address
        half = size.pnodes // 2
        ctx.log(f"ingest: registering {size.pnodes} PNodes, half through each replica")
        (names, beats), (others, other_beats) = await asyncio.gather(
            _register(address, half),
            _register(second.address, size.pnodes - half, first=half),
        )
        writer = load_worker.Driver(1)
        clients = load_worker.Driver(size.clients)
        keeper: asyncio.Task[None] | None = None
        try:
            # Every PNode heartbeats from now on, at one beat per PNode per 20 s, through the
            # replica it registered with (an agent talks to one replica), so none expires
            # mid-run: a lease running out on thousands of PNodes at once is a burst of
            # lifecycle writes, not what this measures. The second replica's heartbeats are
            # what makes it write; the measured one's are background beside its load.
            await writer.client("writer", second.address, HEARTBEAT, other_beats)
            await writer.client("alive", address, HEARTBEAT, beats)
            await writer.background("writer", rate=size.background_rate)
            await writer.background("alive", rate=size.background_rate)
            resolves, hosts = await _network(address, size.vnodes)
            by_name = dict(zip(names + others, beats + other_beats, strict=True))
            mine = [by_name[h] for h in sorted(hosts & set(names))]
            keeper = asyncio.create_task(_keep_alive(address, mine))
            await _measure(ctx, report, address, size, beats, resolves, clients)
            for ident, which in (("writer", "second replica"), ("alive", "measured replica")):
                (written,) = await writer.stop(ident)
                if written["failed"]:
                    raise AssertionError(
                        f"{which}: {written['failed']} of {written['sent']} background"
                        f" heartbeats failed, first: {written['first_error']}"
                    )
                report.extra[f"{which} background heartbeats"] = written["sent"]
        finally:
            clients.close()
            writer.close()
            if keeper is not None:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
    return report


async def _measure(
    ctx: harness.Context,
    report: harness.Report,
    address: str,
    size: Size,
    beats: list[load.Call],
    resolves: list[load.Call],
    clients: load_worker.Driver,
) -> None:
    probe_hb_client = load.Client(address, HEARTBEAT, channels=1)
    probe_rs_client = load.Client(address, RESOLVE, channels=1)
    try:
        probe_hb = await probe_hb_client.closed_loop(beats[:1], concurrency=1, seconds=0.2)
        probe_rs = await probe_rs_client.closed_loop(resolves[:1], concurrency=1, seconds=0.2)
    finally:
        await probe_hb_client.close()
        await probe_rs_client.close()
    hb_reply = pnode_pb2.HeartbeatResponse.FromString(probe_hb.sample)
    assert hb_reply.lease_state == pnode_pb2.LEASE_STATE_ACTIVE, hb_reply
    rs_reply = resolve_pb2.ResolveResponse.FromString(probe_rs.sample)
    assert rs_reply.endpoints.endpoints, f"resolution answered no endpoint: {rs_reply}"
    sizes = {"Heartbeat": len(probe_hb.sample), "Resolve": len(probe_rs.sample)}
    with _echo(sizes) as echo_address:
        for ident, target, method, calls in (
            ("real_hb", address, HEARTBEAT, beats),
            ("real_rs", address, RESOLVE, resolves),
            ("echo_hb", echo_address, "/bench.Echo/Heartbeat", beats),
            ("echo_rs", echo_address, "/bench.Echo/Resolve", resolves),
        ):
            await clients.client(ident, target, method, calls)
        # Unmeasured warm-up: connections, the server's first calls of each method.
        warm = 0.5 if ctx.smoke else 1.5
        for ident in ("real_hb", "echo_hb", "real_rs", "echo_rs"):
            await clients.closed_loop(ident, concurrency=CONCURRENCY, seconds=warm)
        ctx.log("ingest: heartbeats, closed loop")
        hb = await clients.closed_loop("real_hb", concurrency=CONCURRENCY, seconds=size.seconds)
        hb_base = await clients.closed_loop(
            "echo_hb", concurrency=CONCURRENCY, seconds=size.seconds
        )
        _check(hb.outcome, "heartbeat")
        ctx.log("ingest: resolution, closed loop")
        rs = await clients.closed_loop("real_rs", concurrency=CONCURRENCY, seconds=size.seconds)
        rs_base = await clients.closed_loop(
            "echo_rs", concurrency=CONCURRENCY, seconds=size.seconds
        )
        _check(rs.outcome, "resolve")
        curve_real, curve_echo = [], []
        half: tuple[load.Outcome, load.Outcome] | None = None
        for fraction in size.fractions:
            rate = fraction * rs.outcome.rate
            ctx.log(f"ingest: resolution, open loop at {rate:.0f}/s")
            real = (await clients.open_loop("real_rs", rate=rate, seconds=size.seconds)).outcome
            base = (await clients.open_loop("echo_rs", rate=rate, seconds=size.seconds)).outcome
            if real.failed or base.failed:
                # An open loop has no cap on calls in flight: when the server falls behind
                # (a busy shared machine), its gRPC core cancels calls it has not taken up
                # yet. A point of the curve, reported (and a missed target at half), not a
                # failed run.
                report.notes.append(
                    f"open loop at {rate:,.0f}/s: {real.failed} of"
                    f" {real.completed + real.failed} Resolve calls failed on the orchestrator,"
                    f" {base.failed} of {base.completed + base.failed} on echo; first:"
                    f" {' '.join((real.first_error or base.first_error).split())[:160]}"
                )
            curve_real.append((rate, harness.Stats.of(real.latencies)))
            curve_echo.append((rate, harness.Stats.of(base.latencies)))
            if fraction == 0.5:
                half = (real, base)

    report.extra["reply_bytes"] = sizes
    report.extra["request_bytes"] = {
        "Heartbeat": len(beats[0].body),
        "Resolve": len(resolves[0].body),
    }
    for label, real_m, base_m in (("heartbeats", hb, hb_base), ("resolution", rs, rs_base)):
        real, base = real_m.outcome, base_m.outcome
        share = real.rate / base.rate if base.rate else 0.0
        report.compare(
            harness.Comparison(
                name=f"{label}, closed loop, throughput",
                unit="calls/s",
                measured=harness.Stats.of(real.per_second),
                baseline_name=f"bare grpc.aio echo, same sizes, same {size.clients} clients",
                baseline=harness.Stats.of(base.per_second),
                targets=(
                    harness.Target(
                        f">= {TARGET_SHARE:.0%} of echo",
                        None if ctx.smoke else share >= TARGET_SHARE,
                    ),
                ),
                note=f"overall {real.rate:,.0f} vs {base.rate:,.0f} calls/s; "
                f"latency p50 {_ms(real.latencies, 50)} vs {_ms(base.latencies, 50)}; the"
                f" {size.clients} client processes used {_shares(real_m)} vs"
                f" {_shares(base_m)} of a core each",
            )
        )
    if half is not None:
        real, base = half
        stats = harness.Stats.of(real.latencies)
        p99 = harness.percentile(sorted(real.latencies), 99) if real.latencies else float("inf")
        report.compare(
            harness.Comparison(
                name=f"resolution latency at half saturation ({0.5 * rs.outcome.rate:,.0f}/s)",
                unit="s",
                measured=stats,
                baseline_name="echo at the same rate",
                baseline=harness.Stats.of(base.latencies),
                higher_is_better=False,
                targets=(
                    harness.Target(
                        f"p99 <= {TARGET_P99 * 1000:g} ms, no call failed",
                        None if ctx.smoke else (p99 <= TARGET_P99 and not real.failed),
                    ),
                ),
                note="latency from when each call was due (open loop), with each replica"
                f" taking {size.background_rate:g} background heartbeats/s throughout;"
                f" {real.failed} of {real.completed + real.failed} calls failed",
            )
        )
    report.curves["resolution-latency"] = {
        "kind": "latency",
        "xlabel": "offered Resolve rate (calls/s)",
        "ylabel": "latency (ms)",
        "title": "Resolve latency vs offered rate",
        "series": {
            "orchestrator p50": [(r, s.p50 * 1000) for r, s in curve_real],
            "orchestrator p99": [(r, _p99(s) * 1000) for r, s in curve_real],
            "echo p50": [(r, s.p50 * 1000) for r, s in curve_echo],
            "echo p99": [(r, _p99(s) * 1000) for r, s in curve_echo],
        },
    }


def _shares(merged: load_worker.Merged) -> str:
    return " and ".join(f"{share:.0%}" for share in merged.client_shares)


def _p99(stats: harness.Stats) -> float:
    return stats.p99 if stats.p99 is not None else stats.max


def _ms(latencies: list[float], q: float) -> str:
    return f"{harness.percentile(sorted(latencies), q) * 1000:.2f} ms"


def _check(outcome: load.Outcome, what: str) -> None:
    if outcome.failed:
        raise AssertionError(f"{what}: {outcome.failed} calls failed, first: {outcome.first_error}")


def _header() -> common_pb2.RequestHeader:
    return common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="bench-pnode")


async def _register(
    address: str,
    count: int,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    first: int = 0,
) -> tuple[list[str], list[load.Call]]:
    """Register `count` PNodes (32 at a time), numbered from `first`: their names, a
    pre-serialized Heartbeat each. `credentials`: TLS to the orchestrator (the `auth`
    scenario)."""
    async with load.channel(address, credentials) as channel:
        stub = pnode_pb2_grpc.PNodeServiceStub(channel)
        gate = asyncio.Semaphore(32)
        # One key for every simulated PNode: the CSR's subject is ignored, and what is
        # measured is the orchestrator's work per registration, issuing included.
        csr = identity.csr_pem(identity.generate_key(), "bench")

        async def one(i: int) -> tuple[str, load.Call]:
            async with gate:
                reply = await stub.Register(
                    pnode_pb2.RegisterRequest(
                        header=_header(), name=f"sim-{i:05d}",
                        capacity=common_pb2.Capacity(cpu_millis=4000, memory_bytes=8 * 2**30),
                        data_plane_address=f"10.1.{i // 256}.{i % 256}:7100",
                        agent_version="bench/0", csr=csr,
                    ),
                    timeout=60,
                )  # fmt: skip
            body = pnode_pb2.HeartbeatRequest(
                header=_header(), pnode_id=reply.pnode_id, incarnation=reply.incarnation,
                known_assignment_set_version=2**62,
            ).SerializeToString()  # fmt: skip
            call = load.Call(body, (("authorization", f"Bearer {reply.credential}"),))
            return reply.pnode_id, call

        pairs = await asyncio.gather(*(one(i) for i in range(first, first + count)))
        return [name for name, _ in pairs], [call for _, call in pairs]


async def _network(
    address: str,
    vnodes: int,
    *,
    credentials: grpc.ChannelCredentials | None = None,
    token: str = "",
) -> tuple[list[load.Call], set[str]]:
    """Place a chain network: Resolve calls for its VNodes, and the PNodes hosting them.
    `credentials`, `token`: TLS and the admin token (the `auth` scenario)."""
    api = cluster.Api(address, token=token, credentials=credentials)
    try:
        await api.apply(cluster.chain_network("chain", vnodes))
        _, placed = await api.wait_resolvable(
            "chain", {f"v{i}": 1 for i in range(vnodes)}, within=60
        )
    finally:
        await api.close()
    hosts = {eps[0][0] for eps in placed.values()}
    calls = [
        load.Call(
            resolve_pb2.ResolveRequest(
                header=_header(), network="chain", vnode=f"v{i}"
            ).SerializeToString()
        )
        for i in range(vnodes)
    ]
    return calls, hosts


async def _keep_alive(
    address: str, calls: list[load.Call], *, credentials: grpc.ChannelCredentials | None = None
) -> None:
    """Heartbeat the hosting PNodes once a second, as their agents would, so their VNodes
    stay resolvable however long the measurements take (a few calls/s of background)."""
    async with load.channel(address, credentials) as channel:
        beat = channel.unary_unary(HEARTBEAT, None, None)
        while True:
            for call in calls:
                with contextlib.suppress(grpc.RpcError):
                    await beat(call.body, metadata=call.metadata, timeout=10)
            await asyncio.sleep(1.0)  # the agents' cadence, not a test waiting


@contextlib.contextmanager
def _echo(sizes: dict[str, int]) -> Iterator[str]:
    args = [f"--reply={method}={size}" for method, size in sizes.items()]
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.echo_server", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=harness.REPO,
    )  # fmt: skip
    try:
        line = procs.read_line(proc)
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        procs.stop(proc)
