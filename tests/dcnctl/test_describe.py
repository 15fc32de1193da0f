"""`describe` texts from fixed records (no cluster): the replicas that run, tiebreakers,
and a PNode's trust and validation events, compared with golden files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.resources import allocation, meta, network, pnode
from dcnctl import describe, kinds, render
from tests.dcnctl import goldens

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def net(*, validation: network.ValidationPolicy, tiebreakers: list[str]) -> network.Network:
    return network.Network.model_validate(
        {
            "metadata": {
                "name": "quorum",
                "generation": 2,
                "creationTimestamp": "2030-01-01T00:00:00Z",
            },
            "spec": {
                "validation": validation,
                "vnodes": [
                    {"name": "a", "kind": "dense"},
                    {"name": "b", "kind": "dense", "inputs": ["a"], "replicas": 3},
                ],
            },
            "status": {"phase": "Ready", "tiebreakers": tiebreakers},
        }
    )


def held(found: network.Network, placed: dict[str, str]) -> list[allocation.Allocation]:
    out = []
    for slot, where in placed.items():
        vnode, replica = slot.split(".")
        out.append(
            allocation.Allocation(
                metadata=meta.ObjectMeta(
                    name=allocation.slot_name(found.name, vnode, int(replica))
                ),
                spec=allocation.AllocationSpec(
                    network=found.name, vnode=vnode, replica=int(replica), pnode=where, epoch=1
                ),
                status=allocation.AllocationStatus(phase="Running"),
            )
        )
    return out


def test_network_shows_running_replicas_and_tiebreakers() -> None:
    found = net(validation="replicas", tiebreakers=["a"])
    placed = {"a.0": "p0", "a.1": "p1", "a.2": "p2", "b.0": "p0", "b.1": "p1"}
    text = describe.network_text(found, held(found, placed), NOW)
    goldens.check_text("describe-network-tiebreaker.txt", text)
    assert "3 (spec 1; validation replicas, +1 tiebreaker)" in text
    assert "  Tiebreakers:         a\n" in text


def test_network_without_validation_shows_the_spec_count() -> None:
    found = net(validation="none", tiebreakers=[])
    text = describe.network_text(found, held(found, {"a.0": "p0"}), NOW)
    goldens.check_text("describe-network-plain.txt", text)
    assert "  Tiebreakers:         <none>\n" in text
    assert "(spec" not in text


def test_pnode_shows_trust_and_validation_events() -> None:
    node = pnode.PNode.model_validate(
        {
            "metadata": {"name": "liar", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"address": "liar.test:7070", "capacity": {"cpu": "2", "memory": "2Gi"}},
            "status": {
                "phase": "Ready",
                "trust": {"consecutiveValid": 0, "strikes": 3, "bugged": True},
            },
        }
    )
    node.status.validation_events = [
        pnode.ValidationEvent(
            time=NOW - timedelta(minutes=3), job="train", vnode="b", check="quorum",
            verdict="rejected", message="replica 1 disagrees with replicas 0 and 2",
        ),
        pnode.ValidationEvent(
            time=NOW - timedelta(minutes=1), verdict="bugged",
            message="3 strikes in the last 9 results (limit 3)",
        ),
    ]  # fmt: skip
    text = describe.pnode_text(node, [], NOW)
    goldens.check_text("describe-pnode-events.txt", text)
    events = text.split("Events:\n")[1].splitlines()
    assert events[1].split()[1] == "bugged"  # newest first
    assert events[2].split()[1:5] == ["rejected", "train", "b", "quorum"]


def test_pnode_identity_expiry_in_describe_and_the_wide_table() -> None:
    node = pnode.PNode.model_validate(
        {
            "metadata": {"name": "p1", "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"address": "p1.test:7070", "capacity": {"cpu": "2", "memory": "2Gi"}},
            "status": {"identity": {"expiresAt": "2030-01-01T12:42:00Z"}},
        }
    )
    assert "  Identity:          expires 2030-01-01T12:42:00+00:00 (in 42m)\n" in (
        describe.pnode_text(node, [], NOW)
    )
    headers = render.headers(kinds.PNODE, wide=True)
    wide = dict(zip(headers, render.row(node, NOW, wide=True), strict=True))
    assert wide["IDENTITY"] == "42m"
    later = NOW + timedelta(hours=1)
    assert "(expired)" in describe.pnode_text(node, [], later)
    assert render.row(node, later, wide=True)[-2] == "expired"
