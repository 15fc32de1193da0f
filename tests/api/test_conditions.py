"""The one condition helper: last_transition_time moves only when the status changes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from api.resources import meta

THEN = datetime(2030, 1, 1, tzinfo=UTC)
NOW = THEN + timedelta(minutes=5)


def ready(status: meta.ConditionStatus, at: datetime | None = THEN) -> meta.Condition:
    return meta.Condition(type="Ready", status=status, reason="r", last_transition_time=at)


def test_the_transition_time_moves_only_when_the_status_changes() -> None:
    same = meta.condition(
        [ready("True")], type="Ready", status="True", reason="x", message="m", now=NOW
    )
    assert (same.last_transition_time, same.reason, same.message) == (THEN, "x", "m")
    flipped = meta.condition(
        [ready("True")], type="Ready", status="False", reason="x", message="m", now=NOW
    )
    assert flipped.last_transition_time == NOW
    new = meta.condition([], type="Ready", status="True", reason="x", message="m", now=NOW)
    assert new.last_transition_time == NOW
    never_set = meta.condition(
        [ready("True", at=None)], type="Ready", status="True", reason="x", message="", now=NOW
    )
    assert never_set.last_transition_time == NOW


def test_set_replaces_the_condition_of_its_type_last_and_remove_drops_it() -> None:
    other = meta.Condition(type="Unschedulable", status="False")
    conditions = meta.set_condition(
        [ready("True"), other],
        type="Ready",
        status="True",
        reason="x",
        message="",
        now=NOW,
        observed_generation=3,
    )
    assert [c.type for c in conditions] == ["Unschedulable", "Ready"]
    assert (conditions[1].last_transition_time, conditions[1].observed_generation) == (THEN, 3)
    assert meta.remove_condition(conditions, "Ready") == [other]
