"""`describe pnode` lists the accusations the orchestrator refused, by and against the PNode,
from its AccusationRefused events (fixed records, no cluster)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.resources import event, meta, pnode
from dcnctl import describe

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


def node(name: str) -> pnode.PNode:
    return pnode.PNode.model_validate(
        {
            "metadata": {"name": name, "creationTimestamp": "2030-01-01T00:00:00Z"},
            "spec": {"address": f"{name}.test:7070"},
            "status": {"phase": "Ready"},
        }
    )


def seen(on: str, reason: str, message: str, count: int = 1) -> event.Event:
    return event.Event(
        metadata=meta.ObjectMeta(name=f"{on}.{abs(hash(message)) % 10**8}"),
        involved_object=event.ObjectReference(kind="PNode", name=on),
        type="Warning",
        reason=reason,
        message=message,
        count=count,
        first_timestamp=NOW - timedelta(minutes=9),
        last_timestamp=NOW - timedelta(minutes=2),
        expire_time=NOW + timedelta(hours=1),
    )


def test_refused_accusations_by_and_against_the_pnode_are_listed() -> None:
    by = event.accusation_refused("p2", "p0", "unconvincing (a replica 0, check finite)")
    against = event.accusation_refused("p5", "p2", "wrong-signer (b replica 0, check quorum)")
    events = [
        seen("p2", "AccusationRefused", by, count=3),
        seen("p2", "AccusationRefused", against),
        seen("p2", "Strike", "accusation against a refused: no proof"),
    ]
    text = describe.pnode_text(node("p2"), [], NOW, events)
    section = text.split("Refused Accusations:\n")[1].split("Events:\n")[0].splitlines()
    assert section[0].split() == ["LAST", "SEEN", "ROLE", "PNODE", "COUNT", "DETAIL"]
    rows = [line.split()[1:4] for line in section[1:] if line.strip()]
    assert rows == [["by", "p0", "3"], ["against", "p5", "1"]]
    assert "Strike" in text.split("Events:\n")[1]  # the events themselves are still shown


def test_a_pnode_without_refused_accusations_has_no_such_section() -> None:
    events = [seen("p0", "Strike", "job train vnode a check finite: x")]
    assert "Refused Accusations" not in describe.pnode_text(node("p0"), [], NOW, events)


def test_the_message_format_round_trips() -> None:
    message = event.accusation_refused("p2", "p0", "bad-evidence (a replica 0, check finite)")
    assert event.parse_accusation(message) == (
        "p2",
        "p0",
        "bad-evidence (a replica 0, check finite)",
    )
    assert event.parse_accusation("job train vnode a check finite: x") is None
