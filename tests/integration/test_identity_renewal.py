"""Certificates renewed in flight (docs/security.md, "Identity" and "Transport"): a real
orchestrator serving TLS and issuing 6-second identities, and two real agents training the
digits example. Every agent renews its identity (which is also its data-plane TLS
certificate) through heartbeats, and the orchestrator renews its own, several times during
the run; the orchestrator's own TLS certificate is rotated on disk mid-run too. Every
message stays signed and verified and every connection TLS: the run keeps going at its
first attempt (a refused message would cost a rollback) and no agent refuses anything for
identity."""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path

import grpc
import pytest
import yaml
from grpc import aio

from api import identity
from api.resources import network as network_model
from tests.integration import cluster
from tests.integration.test_training import MANIFEST, Jobs
from tests.support import agents, metrics, procs, tls, wait

pytestmark = pytest.mark.slow

TTL = 6.0
#: Refusal reasons that mean a message's identity was not accepted.
IDENTITY_REASONS = {*identity.VERIFY_REASONS, "NotSender", "NotDriver", "NoIdentity"}


async def test_messages_keep_flowing_across_certificate_renewals(tmp_path: Path) -> None:
    manifest = yaml.safe_load(MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    pki = tls.Pki.create(tmp_path / "pki")
    serve_tls = ["--tls-cert", str(pki.paths.cert), "--tls-key", str(pki.paths.key)]
    with (
        procs.orchestrator(store_url, extra=["--identity-ttl", str(TTL), *serve_tls]) as served,
        agents.agents(
            served.address, tmp_path, 2, cpu="2", memory="2Gi",
            extra=["--metrics-listen", "127.0.0.1:0", "--tls-ca", str(pki.paths.ca)],
        ) as fleet,
    ):  # fmt: skip
        credentials = grpc.ssl_channel_credentials(pki.paths.ca.read_bytes())
        api = cluster.Api(served.address, credentials=credentials)
        jobs = Jobs(served.address, channel=aio.secure_channel(served.address, credentials))
        try:
            await api.apply(manifest)
            await api.wait_resolvable(
                network.name, {v.name: 1 for v in network.spec.vnodes}, within=60
            )
            first = await expiries(store_url)
            await jobs.train("long", network.name, epochs=1000)
            started = await jobs.wait("long", phase="Running", within=60, step=1)
            # The orchestrator's TLS certificate, replaced on disk: new connections see the
            # new one without a restart, and the run's connections carry on.
            rotated = pki.rotate_server()
            assert await asyncio.to_thread(tls.peer_serial, served.address, pki.paths.ca) == rotated

            # Two renewals of every agent (each at 2/3 of 6 s) while the run goes on.
            await _renewed_and_nothing_lost(store_url, first, 2, jobs, started.status.step, fleet)
        finally:
            await jobs.channel.close(None)
            await api.close()


async def _renewed_and_nothing_lost(
    store_url: str,
    first: dict[str, datetime],
    renewals: int,
    jobs: Jobs,
    step: int,
    fleet: list[agents.Agent],
) -> None:
    """Every agent's identity renewed `renewals` times (each at 2/3 of TTL) while job "long"
    runs 20 more steps at its first attempt, and no agent refused a message for identity."""
    await wait.until(
        lambda: expiries(store_url),
        within=60,
        what=f"every agent's identity renewed {renewals}x",
        accept=lambda now: all(
            (now[n] - first[n]).total_seconds() >= renewals * TTL * 2 / 3 for n in first
        ),
        every=0.2,
    )
    later = await jobs.wait("long", phase="Running", within=60, step=step + 20)
    assert later.status.attempt == 1, f"a rollback: {later.status.message}"
    for agent in fleet:
        assert agent.metrics_port is not None
        refused = metrics.by_label(
            metrics.scrape(agent.metrics_port), "dcnr_agent_messages_refused_total", "reason"
        )
        assert {r: n for r, n in refused.items() if r in IDENTITY_REASONS and n} == {}


async def expiries(store_url: str) -> dict[str, datetime]:
    pnodes, _, _ = await cluster.read_state(store_url)
    found = {p.name: p.status.identity.expires_at for p in pnodes}
    assert all(at is not None for at in found.values()), found
    return {name: at for name, at in found.items() if at is not None}


async def test_results_reach_a_mutual_tls_driver_inbox_across_its_renewals(
    tmp_path: Path,
) -> None:
    """`serve --driver-listen`: the driver's inbox on its own mutual-TLS listener, whose
    certificate is the orchestrator identity renewed every 4 s here. Agents, told at
    Register, dial it with their identity certificates; every step's results arrive (a
    refused or undeliverable one would cost a rollback) across renewals of both ends."""
    manifest = yaml.safe_load(MANIFEST.read_text())
    network = network_model.Network.model_validate(manifest)
    store_url = f"sqlite:///{tmp_path / 'state.db'}"
    extra = ["--identity-ttl", str(TTL), "--driver-listen", "127.0.0.1:0"]
    with (
        procs.orchestrator(store_url, extra=extra) as served,
        agents.agents(
            served.address, tmp_path, 2, cpu="2", memory="2Gi",
            extra=["--metrics-listen", "127.0.0.1:0"],
        ) as fleet,
    ):  # fmt: skip
        api = cluster.Api(served.address)
        jobs = Jobs(served.address)
        try:
            await api.apply(manifest)
            await api.wait_resolvable(
                network.name, {v.name: 1 for v in network.spec.vnodes}, within=60
            )
            first = await expiries(store_url)
            await jobs.train("long", network.name, epochs=1000)
            started = await jobs.wait("long", phase="Running", within=60, step=1)
            # Every agent renewed once (at 2/3 of 6 s), and so did the orchestrator.
            await _renewed_and_nothing_lost(store_url, first, 1, jobs, started.status.step, fleet)
        finally:
            await jobs.channel.close(None)
            await api.close()
