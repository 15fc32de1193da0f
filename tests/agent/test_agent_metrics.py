"""`dcnr-agent --metrics-listen`: a real agent's /metrics, scraped as Prometheus does,
counts its registration, heartbeats and refused data-plane messages, exports its known
label values at 0 from the start, and is exactly what README documents."""

from __future__ import annotations

import re
from pathlib import Path

import grpc
import pytest

from api import identity
from api import tls as api_tls
from api.dcnr.v1 import vnode_pb2, vnode_pb2_grpc
from tests.support import agents as agents_mod
from tests.support import identities, metrics, procs, wait

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[2] / "README.md"


async def test_a_real_agent_exports_documented_metrics(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'state.db'}"
    with (
        procs.orchestrator(store, extra=identities.ca_flags(tmp_path)) as served,
        agents_mod.agents(
            served.address, tmp_path, 1, extra=["--metrics-listen", "127.0.0.1:0"]
        ) as (agent,),
    ):
        assert agent.metrics_port is not None
        port = agent.metrics_port
        before = metrics.scrape(port)
        refused = metrics.by_label(before, "dcnr_agent_messages_refused_total", "reason")
        assert refused.get("Invalid") == 0, refused

        with grpc.secure_channel(
            agent.address,
            identities.driver().client_credentials(identities.authority().certificate_pem),
            [(api_tls.TARGET_NAME_OVERRIDE, identity.dns_name("pnode", agent.name))],
        ) as channel:
            stub = vnode_pb2_grpc.VNodeServiceStub(channel)
            with pytest.raises(grpc.RpcError) as caught:
                stub.Forward(
                    vnode_pb2.ForwardRequest(network="n", target_vnode="nobody", step=1),
                    timeout=10,
                )
        # Unsigned (docs/security.md): refused before the missing tensor is even looked at.
        assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED

        def counted() -> metrics.Samples:
            return metrics.scrape(port)

        after = await wait.until(
            counted,
            within=20,
            what="a heartbeat answered ok in the agent's metrics",
            accept=lambda s: metrics.by_label(s, "dcnr_agent_heartbeats_total", "result").get(
                "ok", 0
            )
            >= 1,
        )
    registrations = metrics.by_label(after, "dcnr_agent_registrations_total", "result")
    assert registrations == {"registered": 1, "failed": 0, "refused": 0}
    assert after[("dcnr_agent_assignments", ())] == 0
    forward_refusals = {
        dict(labels)["reason"]: value
        for (name, labels), value in after.items()
        if name == "dcnr_agent_messages_refused_total" and dict(labels)["direction"] == "forward"
    }
    assert forward_refusals["Unsigned"] == 1
    assert forward_refusals["Invalid"] == forward_refusals["NotHosted"] == 0

    exported = {
        name.removesuffix("_created")
        for name, _labels in after
        if name.startswith("dcnr_agent_") and not name.endswith("_created")
    }
    documented = set(re.findall(r"`(dcnr_agent_[a-z0-9_]+)", README.read_text()))
    assert exported == documented
