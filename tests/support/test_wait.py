"""The one wait helper: what it returns, what it reports, and that both forms share the rule.

No case lets real time pass: a met condition returns before any sleep, and `within=0` makes
the first miss the last (the deadline has passed by the time it is checked).
"""

from __future__ import annotations

import pytest

from tests.support import wait


async def test_returns_the_first_accepted_value_of_a_sync_condition() -> None:
    looks: list[int] = []

    def condition() -> int:
        looks.append(len(looks))
        return len(looks)

    got = await wait.until(condition, within=10, what="three looks", accept=lambda n: n >= 3,
                           every=0)  # fmt: skip
    assert got == 3
    assert looks == [0, 1, 2]


async def test_awaits_an_async_condition_and_returns_its_truthy_value() -> None:
    values = iter([[], [], ["report"]])

    async def condition() -> list[str]:
        return next(values)

    assert await wait.until(condition, within=10, what="a report", every=0) == ["report"]


async def test_a_missed_deadline_names_what_and_the_last_value_seen() -> None:
    def condition() -> dict[str, str]:
        return {"agent-0": "NotReady"}

    def both_ready(phases: dict[str, str]) -> bool:
        return phases == {"agent-0": "Ready", "agent-1": "Ready"}

    message = "two Ready agents: not within 0s; last seen: {'agent-0': 'NotReady'}"
    with pytest.raises(AssertionError) as waited:
        await wait.until(condition, within=0, what="two Ready agents", accept=both_ready)
    assert str(waited.value) == message
    with pytest.raises(AssertionError) as waited_sync:
        wait.until_sync(condition, within=0, what="two Ready agents", accept=both_ready)
    assert str(waited_sync.value) == message, "both forms share one rule and one message"


def test_the_sync_form_returns_the_first_accepted_value() -> None:
    bodies = iter([{"phase": "Pending"}, {"phase": "Ready"}])
    got = wait.until_sync(
        lambda: next(bodies), within=10, what="Ready", accept=lambda b: b["phase"] == "Ready",
        every=0,
    )  # fmt: skip
    assert got == {"phase": "Ready"}


async def test_an_error_in_the_condition_is_not_swallowed() -> None:
    def condition() -> bool:
        raise RuntimeError("job ended Failed")

    with pytest.raises(RuntimeError, match="job ended Failed"):
        await wait.until(condition, within=10, what="the job")
