"""Two `serve` processes on one store with no other coordination, PNodes heartbeating to
both; one replica is SIGKILLed. Everything converges on the survivor, and after every
step the store shows no slot with two allocations and no PNode over-committed.

Run on one SQLite file and on one moto server (DynamoDB over HTTP)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration import cluster
from tests.support import pnode_client, procs

pytestmark = pytest.mark.slow

#: Short timings so the test takes seconds; the defaults are exercised elsewhere.
TIMINGS = [
    "--heartbeat-interval", "0.3",
    "--lease-duration", "1.5",
    "--lost-grace", "0.5",
    "--replica-lease", "1.5",
    "--resync-every", "5",
    "--unschedulable-retry", "1",
]  # fmt: skip
PNODES = 6
VNODES = 10


@pytest.fixture(params=["sqlite", "dynamodb"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    endpoint = request.getfixturevalue("moto_endpoint")
    store_url = f"dynamodb://two-{uuid.uuid4().hex[:8]}?endpoint={endpoint}"
    init = subprocess.run(
        [procs.script("dcnr-orchestrator"), "init-store", "--store", store_url],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    yield store_url


async def test_a_killed_replicas_work_converges_on_the_survivor(store_url: str) -> None:
    refresh = ["--view-refresh", "0.5" if store_url.startswith("dynamodb") else "0.2"]
    with contextlib.ExitStack() as stack:
        a = stack.enter_context(
            procs.orchestrator(store_url, extra=[*TIMINGS, *refresh, "--replica-id", "replica-a"])
        )
        b = stack.enter_context(
            procs.orchestrator(store_url, extra=[*TIMINGS, *refresh, "--replica-id", "replica-b"])
        )
        api = cluster.Api(b.address)
        nodes = [
            pnode_client.TestPNode(
                [a.address, b.address] if i % 2 == 0 else [b.address, a.address],
                f"pnode-{i}",
                cpu_millis=600,
                memory_bytes=2**30,
                data_plane_address=f"127.0.0.1:{7200 + i}",
                reregister_when_fenced=True,
            )
            for i in range(PNODES)
        ]
        try:
            for node in nodes:
                await node.register()
                node.start()
            api_a = cluster.Api(a.address)
            await api_a.apply(cluster.chain_network("net", VNODES, replicated=2))
            await api_a.close()
            want = {f"v{i}": 2 if i < 2 else 1 for i in range(VNODES)}
            await api.wait_resolvable("net", want, within=60)
            await cluster.check_invariants(store_url)

            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait(timeout=30)
            await cluster.check_invariants(store_url)
            # The survivor serves everything: every PNode heartbeats to it and every VNode
            # resolves through it.
            _, endpoints = await api.wait_resolvable("net", want, within=60)
            for node in nodes:
                await node.wait_until(
                    lambda n: n.address == b.address and n.lease_state == pnode_client.ACTIVE,
                    within=30,
                )
            allocations = await cluster.check_invariants(store_url)
            assert len(allocations) == sum(want.values())
            hosts = {p for eps in endpoints.values() for p, _ in eps}
            assert hosts <= {n.name for n in nodes}
        finally:
            for node in nodes:
                await node.close()
            await api.close()
