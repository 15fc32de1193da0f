"""Scenario 2: failover with real processes: one `dcnr-orchestrator serve`, eight
`dcnr-agent`s hosting 200 VNodes; SIGKILL the agent hosting most, and time from the kill
until every one of its VNodes is re-placed elsewhere and resolvable (polled through
BatchResolve every 50 ms, as `tests.integration.cluster.Api` does).

Baseline: the floor the configuration sets, lease_duration + lost_grace: the orchestrator
must not declare a PNode dead sooner (a PNode that merely paused must keep its work that
long), so measured / floor says how much the control plane adds on top of the wait the
settings impose. The lease runs from the victim's last heartbeat, which precedes the kill by
up to one heartbeat interval, so a trial can finish up to that much under the floor.
Between trials the killed agent is restarted under the same name (it
registers again, with a new incarnation, and is left empty: the next trial kills whichever
agent then hosts most).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass

from grpc import aio

from api.dcnr.v1 import pnode_pb2, pnode_pb2_grpc
from benchmarks import harness
from controller import config as config_mod
from tests.integration import cluster
from tests.support import agents, procs

NAME = "failover"
POLL_WITHIN = 60.0


@dataclass(frozen=True, slots=True)
class Setting:
    name: str
    flags: tuple[str, ...]
    lease: float
    grace: float
    heartbeat: float
    target_p99: float

    @property
    def floor(self) -> float:
        return self.lease + self.grace


_DEFAULTS = config_mod.ControlPlaneConfig()
DEFAULT = Setting(
    "default", (), _DEFAULTS.lease_duration, _DEFAULTS.lost_grace,
    _DEFAULTS.heartbeat_interval, 10.0,
)  # fmt: skip
TUNED = Setting(
    "tuned",
    ("--heartbeat-interval", "1", "--lease-duration", "2", "--lost-grace", "0.5"),
    2.0, 0.5, 1.0, 3.0,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Size:
    agents: int
    networks: int
    per_network: int
    trials: int
    settings: tuple[Setting, ...]


FULL = Size(agents=8, networks=4, per_network=50, trials=20, settings=(DEFAULT, TUNED))
SMOKE = Size(agents=3, networks=1, per_network=9, trials=1, settings=(TUNED,))


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    report = harness.Report(
        NAME,
        "Failover: SIGKILL the busiest agent, until its VNodes are re-placed and resolvable",
        {
            "agents": size.agents,
            "vnodes": size.networks * size.per_network,
            "networks": size.networks,
            "trials_per_setting": size.trials,
            "settings": {
                s.name: {
                    "heartbeat_interval": s.heartbeat,
                    "lease_duration": s.lease,
                    "lost_grace": s.grace,
                    "orchestrator_flags": list(s.flags),
                }
                for s in size.settings
            },
            "store": "sqlite",
            "poll": "BatchResolve every 50 ms",
        },
    )
    for setting in size.settings:
        times, moved = await _trials(ctx, size, setting)
        p99 = harness.Stats.of(times)
        met = None if ctx.smoke or p99.p99 is None else p99.p99 <= setting.target_p99
        report.compare(
            harness.Comparison(
                name=f"failover, {setting.name} settings",
                unit="s",
                measured=p99,
                baseline_name="floor: lease_duration + lost_grace",
                baseline=harness.Stats.of([setting.floor]),
                higher_is_better=False,
                targets=(harness.Target(f"p99 <= {setting.target_p99:g} s", met),),
                note=f"VNodes moved per trial: {min(moved)}-{max(moved)}",
            )
        )
        report.curves[f"failover-{setting.name}"] = {
            "kind": "cdf",
            "values": sorted(times),
            "floor": setting.floor,
            "xlabel": "seconds from SIGKILL to all VNodes re-placed and resolvable",
            "ylabel": "fraction of trials",
            "title": f"failover, {setting.name} settings",
        }
    return report


async def _trials(
    ctx: harness.Context, size: Size, setting: Setting
) -> tuple[list[float], list[int]]:
    root = ctx.workdir / f"failover-{setting.name}"
    store_url = f"sqlite:///{root / 'state.db'}"
    times: list[float] = []
    moved: list[int] = []
    with (
        procs.orchestrator(
            store_url, extra=setting.flags, log=root / "orchestrator.log", log_level="warning"
        ) as served,
        agents.agents(served.address, root, size.agents, cpu="8", memory="8Gi") as fleet,
    ):
        address = served.address
        api = cluster.Api(address)
        channel = aio.insecure_channel(address)
        pnodes = pnode_pb2_grpc.PNodeServiceStub(channel)
        try:
            networks = [f"chain-{i}" for i in range(size.networks)]
            for name in networks:
                await api.apply(cluster.chain_network(name, size.per_network))
            every = {f"v{i}": 1 for i in range(size.per_network)}
            for name in networks:
                await api.wait_resolvable(name, every, within=POLL_WITHIN)
            for trial in range(size.trials):
                placed = {n: (await api.endpoints(n, sorted(every))) for n in networks}
                hosting = Counter(
                    eps[0][0] for eps_of in placed.values() for eps in eps_of.values() if eps
                )
                victim_name, count = hosting.most_common(1)[0]
                index = next(i for i, a in enumerate(fleet) if a.name == victim_name)
                killed_at = time.monotonic()
                fleet[index].kill()
                for name in networks:
                    want = {v: 1 for v, eps in placed[name].items() if eps[0][0] == victim_name}
                    if want:
                        await api.wait_resolvable(name, want, within=POLL_WITHIN, avoid=victim_name)
                took = time.monotonic() - killed_at
                times.append(took)
                moved.append(count)
                ctx.log(f"failover {setting.name}: trial {trial + 1}: {count} VNodes, {took:.2f}s")
                fleet[index].stop()
                fleet[index] = agents.Agent(
                    address, victim_name, root / victim_name, cpu="8", memory="8Gi"
                )
                await _wait_ready(pnodes, victim_name)
        finally:
            await api.close()
            await channel.close(None)
            # Teardown is not measured: a graceful stop would drain each agent's VNodes
            # onto the others, one drain deadline after another.
            for agent in fleet:
                agent.kill()
    return times, moved


async def _wait_ready(stub: pnode_pb2_grpc.PNodeServiceAsyncStub, name: str) -> None:
    """Until the restarted agent's PNode is Ready again (it registered and heartbeats)."""
    deadline = time.monotonic() + POLL_WITHIN
    while time.monotonic() < deadline:
        reply = await stub.GetPNode(
            pnode_pb2.GetPNodeRequest(header=cluster.HEADER, name=name), timeout=10
        )
        if b'"phase":"Ready"' in reply.pnode.json:
            return
        await asyncio.sleep(0.05)  # polling a condition with a deadline
    raise AssertionError(f"restarted agent {name} not Ready within {POLL_WITHIN}s")
