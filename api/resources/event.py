"""The Event: something that happened to a record, for people to read (`describe`, `get events`).

As Kubernetes' core/v1 Event: the object it is about, Normal or Warning, a CamelCase reason
and a one-line message. Repeats aggregate: one record per (object, reason, message), named
by their hash (`name_for`), whose `count` and `last_timestamp` move while it lives, so a
PNode fenced every ten seconds is one line with a count, not a page of lines.

Events expire: `expire_time` is `last_timestamp` plus the recorder's TTL, and the store
neither returns nor keeps a record past its `forget_after` (SQLite deletes them as it meets
them; DynamoDB's TTL attribute deletes them in the background). They are a debugging aid,
not state: nothing reads them to make a decision, and losing one costs nothing but a line.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime
from typing import ClassVar, Literal

from pydantic import Field

from api.resources.meta import DNSSubdomain, Model, Resource

EventType = Literal["Normal", "Warning"]

#: Every reason the control plane records, with its type: one list, so the metrics export
#: each (type, reason) at 0 from the start (an alert on a Warning sees a series before the
#: first one), and a test holds every recording site to it.
REASONS: dict[str, EventType] = {
    # On a Network (the network loop).
    "Placed": "Normal",
    "Migrated": "Warning",
    "Reissued": "Normal",
    "Stopped": "Normal",
    "FailedScheduling": "Warning",
    # On a PNode (the PNode service, the trust book).
    "Registered": "Normal",
    "Fenced": "Warning",
    "Strike": "Warning",
    "Bugged": "Warning",
    "ProbationCleared": "Normal",
    # A Bugged PNode computed answers alone that were already returned (issue 18's
    # retroactive report: `controller.trust.exposure` names their request ids).
    "UncheckedAnswers": "Warning",
    # An allocation stayed Pending on a Ready PNode past the bound: its set was sent again
    # (`controller.state.assignment_repair`).
    "AssignmentsRepublished": "Warning",
    # On both PNodes of an accusation ValidationService refused (`accusation_refused`).
    "AccusationRefused": "Warning",
    # On a Job (the job service, the driver).
    "Created": "Normal",
    "Started": "Normal",
    "RolledBack": "Warning",
    "Failed": "Warning",
    "Succeeded": "Normal",
    "Cancelled": "Normal",
}
#: Longest message stored; a longer one is clipped by the recorder.
MAX_MESSAGE_CHARS = 1024

_ACCUSATION = re.compile(r"^accusation by (\S+) against (\S+) refused: (.*)$", re.DOTALL)


def accusation_refused(accuser: str, accused: str, detail: str) -> str:
    """The message of an AccusationRefused event, recorded on both PNodes: one format, so
    `describe pnode` can tell accusations by the PNode from those against it. Keep `detail`
    free of steps and times, so repeats aggregate into one event with a count."""
    return f"accusation by {accuser} against {accused or '-'} refused: {detail}"


def parse_accusation(message: str) -> tuple[str, str, str] | None:
    """(accuser, accused, detail) of an `accusation_refused` message; None for another."""
    found = _ACCUSATION.match(message)
    return (found.group(1), found.group(2), found.group(3)) if found else None


class ObjectReference(Model):
    """The record an event is about: `kind` as in `Resource.KIND`, and its name."""

    kind: str = Field(pattern=r"^[A-Z][A-Za-z]{0,62}$")
    name: DNSSubdomain

    def key(self) -> str:
        """The value of the events' `object` index: "Network/digits"."""
        return f"{self.kind}/{self.name}"


class Event(Resource):
    KIND: ClassVar[str] = "Event"
    PLURAL: ClassVar[str] = "events"
    INDEXES: ClassVar[tuple[str, ...]] = ("object",)
    EXPIRES: ClassVar[bool] = True

    kind: Literal["Event"] = "Event"
    involved_object: ObjectReference
    type: EventType = "Normal"
    reason: str = Field(pattern=r"^[A-Z][A-Za-z0-9]{0,127}$")
    message: str = Field(default="", max_length=MAX_MESSAGE_CHARS)
    count: int = Field(default=1, ge=1)
    first_timestamp: datetime
    last_timestamp: datetime
    #: The orchestrator replica that wrote the last occurrence.
    reporting_replica: str = ""
    expire_time: datetime

    def index_values(self) -> dict[str, str | None]:
        return {"object": self.involved_object.key()}

    def forget_after(self) -> datetime | None:
        return self.expire_time


def name_for(involved: ObjectReference, reason: str, message: str) -> str:
    """One name per (object, reason, message), so repeats find the record to bump: the
    object's name (readable in listings) and a hash of all three."""
    digest = hashlib.sha256(
        "\0".join((involved.kind, involved.name, reason, message)).encode()
    ).hexdigest()[:16]
    return f"{involved.name[:200].rstrip('.-')}.{digest}"
