"""The driver's inbox with a step cut into micro-batches (`controller.jobs.driver_inbox`):
each part is a mailbox of its own, found by the message's (step, micro); a report naming
the step (ValidationService knows no parts) reaches every part; a finished part's late
duplicate is recognised, and a part nobody waits for is refused."""

from __future__ import annotations

import numpy as np
import pytest

from api import tensors
from api.dcnr.v1 import vnode_pb2
from controller import errors as faults
from controller.jobs import driver_inbox
from controller.runtime import clock as clocks
from controller.runtime import signal as signal_mod

JOB, NET, ATTEMPT, STEP = "fit", "lin", 3, 5


def boxes(inbox: driver_inbox.Inbox, parts: int = 2) -> list[driver_inbox.Mailbox]:
    changed = signal_mod.Signal(clocks.FakeClock())
    return [
        inbox.open(
            job=JOB,
            network=NET,
            attempt=ATTEMPT,
            position=(STEP, part),
            sinks={"loss": 1},
            sources={"x": 1},
            changed=changed,
        )
        for part in range(parts)
    ]


def message(
    sender: str, micro: int, *, forward: bool, step: int = STEP, parts: int = 2
) -> vnode_pb2.ForwardRequest | vnode_pb2.BackwardRequest:
    kind = vnode_pb2.ForwardRequest if forward else vnode_pb2.BackwardRequest
    value = np.array([0.5, np.nan]) if forward else np.zeros((0,), np.float32)
    return kind(
        job=JOB, step=step, network=NET, sender_vnode=sender, target_vnode="__driver__",
        tensor=tensors.encode(value) if forward else tensors.empty(), attempt=ATTEMPT,
        micro=micro, micro_batches=parts,
    )  # fmt: skip


def deliver(inbox: driver_inbox.Inbox, micro: int) -> None:
    for sender, forward in (("loss", True), ("x", False)):
        request = message(sender, micro, forward=forward)
        array = tensors.decode(request.tensor)
        assert not inbox.deliver(request, forward=forward, producer="p1", array=array)


def test_each_part_is_filed_in_its_own_mailbox() -> None:
    inbox = driver_inbox.Inbox(clock=clocks.FakeClock())
    first, second = boxes(inbox)
    deliver(inbox, 1)
    assert (first.complete, second.complete) == (False, True)
    assert second.changed is first.changed
    assert second.changed.value == 2  # one signal for the step's parts
    deliver(inbox, 0)
    assert first.complete


def test_a_report_naming_the_step_reaches_every_part() -> None:
    inbox = driver_inbox.Inbox(clock=clocks.FakeClock())
    parts = boxes(inbox)
    assert inbox.strike(JOB, STEP, "p9")
    assert all(box.struck == {"p9"} for box in parts)
    assert inbox.fail(JOB, STEP, "fc1 disputed", disputed="fc1")
    assert all((box.failed, box.disputed) == ("fc1 disputed", "fc1") for box in parts)
    assert not inbox.fail(JOB, STEP + 1, "another step")


def test_a_finished_parts_late_duplicate_is_recognised_and_an_unknown_part_refused() -> None:
    inbox = driver_inbox.Inbox(clock=clocks.FakeClock())
    parts = boxes(inbox)
    deliver(inbox, 0)
    deliver(inbox, 1)
    for box in parts:
        inbox.close(box)
    assert not inbox.expecting(message("loss", 1, forward=True))  # a duplicate: answered
    with pytest.raises(faults.FailedPrecondition):
        inbox.expecting(message("loss", 0, forward=True, step=STEP + 1))
