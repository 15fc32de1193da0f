"""Scenario: an anonymous registration flood from one address against a real `serve` (issue 11).

One `dcnr-orchestrator serve` with the default admission limits (`--register-rate 5/20`,
`--max-pending-pnodes 1000`). A prober sends `grpc.health.v1.Health/Check` one after the
other on its own channel and records each call's latency: first with nothing else going on
(the baseline), then while a separate process (so the flood's client work does not slow
the prober's event loop) sends 10,000 anonymous `Register` calls, 200 in flight at a time.
Reported: health-check latency during the flood against the baseline of the same run, how
many registrations were accepted and refused, and the PNode records left after the pending
GC interval (lease + grace + `--pending-retention`, shortened to 10 s here so the run does
not wait two minutes; the rule is the same at 120 s).

    python -m benchmarks.admission flood ADDRESS COUNT     the flood alone (the subprocess)
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass

import grpc
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from api import identity
from api.dcnr.v1 import common_pb2, pnode_pb2, pnode_pb2_grpc
from benchmarks import harness
from controller import config as config_mod
from tests.support import procs

NAME = "admission"
TARGET_P99 = 0.050
IN_FLIGHT = 200
PENDING_RETENTION = 10.0
HEADER = common_pb2.RequestHeader(api_version="dcnr.io/v1", client_name="bench-flood")
#: One key for every registration: the CSR's subject is ignored (Register needs a CSR).
CSR = identity.csr_pem(identity.generate_key(), "flood")


@dataclass(frozen=True, slots=True)
class Size:
    registrations: int
    baseline_checks: int
    #: lease_duration, lost_grace, pending_retention (seconds) given to `serve`.
    timings: tuple[float, float, float]


_DEFAULTS = config_mod.ControlPlaneConfig()
FULL = Size(10_000, 1000, (_DEFAULTS.lease_duration, _DEFAULTS.lost_grace, PENDING_RETENTION))
SMOKE = Size(400, 50, (1.0, 0.5, 0.5))


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    lease, grace, retention = size.timings
    flags = (
        "--heartbeat-interval", f"{min(_DEFAULTS.heartbeat_interval, lease / 4):g}",
        "--lease-duration", f"{lease:g}",
        "--lost-grace", f"{grace:g}",
        "--pending-retention", f"{retention:g}",
    )  # fmt: skip
    gc_after = lease + grace + retention
    report = harness.Report(
        NAME,
        "Admission: health-check latency under an anonymous registration flood from one address",
        {
            "registrations": size.registrations,
            "in_flight": IN_FLIGHT,
            "baseline_checks": size.baseline_checks,
            "orchestrator_flags": list(flags),
            "limits": "defaults: --register-rate 5/20, --max-pending-pnodes 1000",
            "store": "sqlite",
        },
    )
    store_url = f"sqlite:///{ctx.workdir / 'state.db'}"
    log = ctx.workdir / "orchestrator.log"
    with procs.orchestrator(store_url, extra=flags, log=log, log_level="warning") as served:
        async with aio.insecure_channel(served.address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pnode_pb2_grpc.PNodeServiceStub(channel)
            baseline = [await _check(health) for _ in range(size.baseline_checks)]
            ctx.log(f"{NAME}: baseline p50 {harness.Stats.of(baseline).p50 * 1e3:.2f} ms")
            flood = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "benchmarks.admission", "flood", served.address,
                str(size.registrations),
                stdout=subprocess.PIPE,
            )  # fmt: skip
            during: list[float] = []
            started = time.perf_counter()
            finished = asyncio.ensure_future(flood.wait())
            while not finished.done():
                during.append(await _check(health))
            flood_seconds = time.perf_counter() - started
            out, _ = await flood.communicate()
            assert flood.returncode == 0, f"flood process failed: {flood.returncode}"
            counts: dict[str, int] = json.loads(out)
            left_after_flood = await _pnodes(stub)
            ctx.log(f"{NAME}: flood done in {flood_seconds:.1f}s: {counts}; waiting for GC")
            await asyncio.sleep(gc_after + 2.0)  # a benchmark measuring what is left then
            left_after_gc = await _pnodes(stub)
    measured = harness.Stats.of(during)
    base = harness.Stats.of(baseline)
    met = None if ctx.smoke or measured.p99 is None else measured.p99 <= TARGET_P99
    report.compare(
        harness.Comparison(
            name=f"health check during a flood of {size.registrations:,} registrations",
            unit="s",
            measured=measured,
            baseline_name="health check, no flood, same process",
            baseline=base,
            higher_is_better=False,
            targets=(harness.Target(f"p99 <= {TARGET_P99 * 1e3:g} ms", met),),
            note=(
                f"p99 {measured.p99 if measured.p99 is not None else float('nan'):.4f}s during, "
                f"{base.p99 if base.p99 is not None else float('nan'):.4f}s without"
            ),
        )
    )
    accepted = counts.get("OK", 0)
    report.extra = {
        "registrations sent": size.registrations,
        "accepted": accepted,
        "refused (RESOURCE_EXHAUSTED)": counts.get("RESOURCE_EXHAUSTED", 0),
        "other outcomes": {
            k: v for k, v in counts.items() if k not in ("OK", "RESOURCE_EXHAUSTED")
        },
        "flood seconds": round(flood_seconds, 2),
        "records right after the flood": left_after_flood,
        f"records {gc_after:g}s later (after the pending GC)": left_after_gc,
    }
    report.notes.append(
        f"Of {size.registrations:,} registrations {accepted:,} were accepted "
        f"(burst 20 + 5/s over {flood_seconds:.1f}s); {left_after_gc} PNode records were left "
        f"after lease + grace + pending retention ({gc_after:g}s)."
    )
    return report


async def _check(health: health_pb2_grpc.HealthStub) -> float:
    t0 = time.perf_counter()
    reply = await health.Check(health_pb2.HealthCheckRequest(), timeout=30)
    elapsed = time.perf_counter() - t0
    assert reply.status == health_pb2.HealthCheckResponse.SERVING
    return elapsed


async def _pnodes(stub: pnode_pb2_grpc.PNodeServiceAsyncStub) -> int:
    total, token = 0, ""
    while True:
        page = await stub.ListPNodes(
            pnode_pb2.ListPNodesRequest(header=HEADER, limit=1000, continue_token=token),
            timeout=30,
        )
        total += len(page.items)
        token = page.continue_token
        if not token:
            return total


async def _flood(address: str, count: int) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    request = pnode_pb2.RegisterRequest(
        header=HEADER,
        capacity=common_pb2.Capacity(cpu_millis=64_000, memory_bytes=2**36),
        data_plane_address="127.0.0.1:7100",
        csr=CSR,
    )
    async with aio.insecure_channel(address) as channel:
        stub = pnode_pb2_grpc.PNodeServiceStub(channel)
        for start in range(0, count, IN_FLIGHT):
            batch = min(IN_FLIGHT, count - start)
            results = await asyncio.gather(
                *(stub.Register(request, timeout=60) for _ in range(batch)),
                return_exceptions=True,
            )
            for result in results:
                if isinstance(result, grpc.RpcError):
                    outcomes[result.code().name] += 1
                elif isinstance(result, BaseException):
                    outcomes[type(result).__name__] += 1
                else:
                    outcomes["OK"] += 1
    return outcomes


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "flood":
        sys.exit("usage: python -m benchmarks.admission flood ADDRESS COUNT")
    print(json.dumps(asyncio.run(_flood(sys.argv[2], int(sys.argv[3])))))
