"""retry_on_conflict: again on Conflict up to the cap, then a clear Conflict; anything else
propagates at once."""

from __future__ import annotations

import pytest

from store import errors, retry


class Attempts:
    """An attempt that fails with `failures` (in order), then returns "written"."""

    def __init__(self, *failures: errors.StoreError | Exception) -> None:
        self.failures = list(failures)
        self.calls = 0

    async def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "written"


def conflict() -> errors.Conflict:
    return errors.Conflict("stale", kind="Network", name="mnist")


async def test_returns_the_first_success_without_retrying() -> None:
    attempt = Attempts()
    assert await retry.retry_on_conflict(attempt, what="apply network 'mnist'") == "written"
    assert attempt.calls == 1


@pytest.mark.parametrize("conflicts", [1, retry.ATTEMPTS - 1])
async def test_succeeds_after_conflicts_within_the_cap(conflicts: int) -> None:
    attempt = Attempts(*(conflict() for _ in range(conflicts)))
    assert await retry.retry_on_conflict(attempt, what="apply network 'mnist'") == "written"
    assert attempt.calls == conflicts + 1


async def test_gives_up_after_the_cap_with_a_clear_conflict() -> None:
    attempt = Attempts(*(conflict() for _ in range(retry.ATTEMPTS)))
    with pytest.raises(retry.Exhausted) as raised:
        await retry.retry_on_conflict(attempt, what="apply network 'mnist'")
    assert attempt.calls == retry.ATTEMPTS
    error = raised.value
    assert isinstance(error, errors.Conflict)  # the gRPC boundary answers ABORTED
    assert str(error) == (
        f"apply network 'mnist': the record kept changing under {retry.ATTEMPTS} attempts "
        "(each a write by another writer); retry"
    )
    assert (error.kind, error.name, error.attempts) == ("Network", "mnist", retry.ATTEMPTS)
    assert isinstance(error.__cause__, errors.Conflict)


async def test_the_cap_can_be_set_per_call() -> None:
    attempt = Attempts(conflict(), conflict(), conflict())
    with pytest.raises(retry.Exhausted, match="under 2 attempts"):
        await retry.retry_on_conflict(attempt, what="w", attempts=2)
    assert attempt.calls == 2
    with pytest.raises(ValueError, match="attempts must be at least 1, got 0"):
        await retry.retry_on_conflict(Attempts(), what="w", attempts=0)


@pytest.mark.parametrize(
    "failure",
    [
        errors.NotFound("gone"),
        errors.AlreadyExists("there"),
        errors.Unavailable("throttled"),
        RuntimeError("bug"),
    ],
    ids=["not-found", "already-exists", "unavailable", "other"],
)
async def test_other_errors_propagate_at_once(failure: Exception) -> None:
    attempt = Attempts(failure)
    with pytest.raises(type(failure)) as raised:
        await retry.retry_on_conflict(attempt, what="w")
    assert raised.value is failure
    assert attempt.calls == 1


async def test_also_retries_the_errors_named_for_the_call() -> None:
    attempt = Attempts(errors.AlreadyExists("raced"), conflict(), errors.NotFound("raced"))
    written = await retry.retry_on_conflict(
        attempt, what="w", also=(errors.AlreadyExists, errors.NotFound)
    )
    assert written == "written"
    assert attempt.calls == 4
    attempt = Attempts(*(errors.AlreadyExists("raced") for _ in range(retry.ATTEMPTS)))
    with pytest.raises(retry.Exhausted) as raised:
        await retry.retry_on_conflict(attempt, what="w", also=(errors.AlreadyExists,))
    assert isinstance(raised.value.__cause__, errors.AlreadyExists)
