"""The manager's retry policy, concurrency guarantees, resync and shutdown, on a fake clock."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable

import pytest

from controller.runtime import clock as clocks
from controller.runtime import manager as managers
from controller.runtime import workqueue
from reconcilers import base

Handler = Callable[[str, int], Awaitable[base.Result]]


async def succeed(key: str, attempt: int) -> base.Result:
    return base.Result()


class Probe:
    """A reconciler that records every call and notices two workers inside one key."""

    def __init__(self, handler: Handler = succeed, *, name: str = "probe") -> None:
        self.name = name
        self.handler = handler
        self.calls: list[str] = []
        self.active: set[str] = set()
        self.overlaps: list[str] = []
        self.entered: dict[str, asyncio.Event] = {}
        self.cancelled: list[str] = []

    def count(self, key: str) -> int:
        return self.calls.count(key)

    def entered_event(self, key: str) -> asyncio.Event:
        return self.entered.setdefault(key, asyncio.Event())

    async def reconcile(self, key: str) -> base.Result:
        if key in self.active:
            self.overlaps.append(key)
        self.active.add(key)
        attempt = self.count(key)
        self.calls.append(key)
        self.entered_event(key).set()
        try:
            return await self.handler(key, attempt)
        except asyncio.CancelledError:
            self.cancelled.append(key)
            raise
        finally:
            self.active.discard(key)


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


@pytest.fixture
async def manager(clock) -> AsyncIterator[managers.Manager]:
    mgr = managers.Manager(
        clock, rng=random.Random(1), backoff=workqueue.Backoff(base=1, cap=64, jitter=0)
    )
    yield mgr
    stopping = asyncio.create_task(mgr.stop(grace=1))
    await clock.advance(1)
    await asyncio.wait_for(stopping, timeout=5)


async def started(manager, clock, probe: Probe, **options) -> Probe:
    manager.register(probe, **options)
    await manager.start()
    await clock.settle()
    return probe


def outcomes(manager: managers.Manager, loop: str = "probe") -> dict[str, int]:
    return {o.value: n for o, n in manager.stats(loop).outcomes.items() if n}


# --- the happy path and metrics ------------------------------------------------------------


async def test_an_enqueued_key_is_reconciled_and_reported(manager, clock) -> None:
    seen: list[managers.Reconciled] = []
    manager.observe(seen.append)
    probe = await started(manager, clock, Probe())
    manager.enqueue("probe", "a")
    await clock.settle()
    assert probe.calls == ["a"]
    assert [(e.loop, e.key, e.outcome) for e in seen] == [("probe", "a", managers.Outcome.SUCCESS)]
    stats = manager.stats("probe")
    assert (stats.depth, stats.delayed, stats.in_flight) == (0, 0, 0)
    assert outcomes(manager) == {"success": 1}


async def test_a_failing_observer_does_not_stop_the_worker(manager, clock) -> None:
    def broken(event: managers.Reconciled) -> None:
        raise RuntimeError("metrics backend down")

    manager.observe(broken)
    probe = await started(manager, clock, Probe(), workers=1)
    for key in ["a", "b"]:
        manager.enqueue("probe", key)
    await clock.settle()
    assert probe.calls == ["a", "b"]


# --- one key, one worker -------------------------------------------------------------------


async def test_a_key_is_never_reconciled_by_two_workers_at_once(manager, clock) -> None:
    gate = asyncio.Event()

    async def hold_a(key: str, attempt: int) -> base.Result:
        if key == "a" and attempt == 0:
            await gate.wait()
        return base.Result()

    probe = await started(manager, clock, Probe(hold_a), workers=4)
    manager.enqueue("probe", "a")
    await asyncio.wait_for(probe.entered_event("a").wait(), timeout=5)
    for key in ["a", "b", "a", "c", "a"]:
        manager.enqueue("probe", key)
    await clock.settle()
    assert sorted(probe.calls) == ["a", "b", "c"], "idle workers took b and c, not a"
    assert manager.stats("probe").in_flight == 1
    gate.set()
    await clock.settle()
    assert probe.count("a") == 2, "adds during processing make exactly one requeue"
    assert probe.overlaps == []


async def test_many_workers_and_repeated_adds_never_overlap_on_a_key(manager, clock) -> None:
    rng = random.Random(5)

    async def yield_a_few_times(key: str, attempt: int) -> base.Result:
        for _ in range(rng.randrange(4)):
            await asyncio.sleep(0)
        return base.Result()

    probe = await started(manager, clock, Probe(yield_a_few_times), workers=8)
    keys = [f"k{i}" for i in range(5)]
    for _ in range(200):
        manager.enqueue("probe", rng.choice(keys))
        for _ in range(rng.randrange(3)):
            await asyncio.sleep(0)
    await clock.settle()
    assert probe.overlaps == []
    assert set(probe.calls) == set(keys)
    assert len(probe.calls) < 200, "adds of a queued key must be de-duplicated"
    assert manager.stats("probe").in_flight == 0


# --- what the manager does with each answer ------------------------------------------------


async def test_requeue_after_is_honoured(manager, clock) -> None:
    async def again_in_30s_once(key: str, attempt: int) -> base.Result:
        return base.Result(requeue_after=30) if attempt == 0 else base.Result()

    probe = await started(manager, clock, Probe(again_in_30s_once))
    manager.enqueue("probe", "a")
    await clock.settle()
    assert manager.stats("probe").delayed == 1
    await clock.advance(29.9)
    assert probe.count("a") == 1
    await clock.advance(0.1)
    assert probe.count("a") == 2
    await clock.advance(1000)
    assert probe.count("a") == 2
    assert outcomes(manager) == {"requeue_after": 1, "success": 1}


async def test_errors_back_off_exponentially_then_succeed_and_backoff_is_forgotten(
    manager, clock
) -> None:
    failures_left = {"a": 3}

    async def flaky(key: str, attempt: int) -> base.Result:
        if failures_left[key] > 0:
            failures_left[key] -= 1
            raise RuntimeError("store unavailable")
        return base.Result()

    probe = await started(manager, clock, Probe(flaky))
    manager.enqueue("probe", "a")
    await clock.settle()
    for expected_delay in [1, 2, 4]:
        calls = probe.count("a")
        await clock.advance(expected_delay - 0.01)
        assert probe.count("a") == calls, f"retried before its {expected_delay}s backoff"
        await clock.advance(0.01)
        assert probe.count("a") == calls + 1
    assert outcomes(manager) == {"error": 3, "success": 1}

    # After a success the next failure starts from the base delay again, not from 8 s.
    failures_left["a"] = 1
    manager.enqueue("probe", "a")
    await clock.settle()
    await clock.advance(1)
    assert probe.count("a") == 6
    assert outcomes(manager) == {"error": 4, "success": 2}


async def test_requeue_true_backs_off_without_counting_an_error(manager, clock) -> None:
    async def not_ready_twice(key: str, attempt: int) -> base.Result:
        return base.Result(requeue=attempt < 2)

    probe = await started(manager, clock, Probe(not_ready_twice))
    manager.enqueue("probe", "a")
    await clock.advance(1)
    assert probe.count("a") == 2
    await clock.advance(2)
    assert probe.count("a") == 3
    assert outcomes(manager) == {"requeue": 2, "success": 1}


async def test_one_failing_key_does_not_stop_the_others(manager, clock) -> None:
    async def bad_always_fails(key: str, attempt: int) -> base.Result:
        if key == "bad":
            raise ValueError("corrupt record")
        return base.Result()

    probe = await started(manager, clock, Probe(bad_always_fails), workers=1)
    for key in ["bad", "good1", "good2"]:
        manager.enqueue("probe", key)
    await clock.settle()
    assert probe.calls == ["bad", "good1", "good2"]
    await clock.advance(3)
    manager.enqueue("probe", "good3")
    await clock.settle()
    assert probe.count("good3") == 1, "the single worker survived the exceptions"
    assert probe.count("bad") == 3, "bad was retried at 1 s and 1 + 2 s"


async def test_terminal_error_is_counted_and_not_retried(manager, clock) -> None:
    async def impossible(key: str, attempt: int) -> base.Result:
        raise base.TerminalError("network 'x' asks for 0 replicas")

    probe = await started(manager, clock, Probe(impossible))
    manager.enqueue("probe", "a")
    await clock.settle()
    await clock.advance(3600)
    assert probe.calls == ["a"]
    assert outcomes(manager) == {"terminal_error": 1}
    assert manager.stats("probe").delayed == 0


async def test_a_cancelled_error_leaking_from_a_reconciler_is_an_error_not_a_stop(
    manager, clock
) -> None:
    async def leaks_cancellation(key: str, attempt: int) -> base.Result:
        if attempt == 0:
            raise asyncio.CancelledError
        return base.Result()

    probe = await started(manager, clock, Probe(leaks_cancellation), workers=1)
    manager.enqueue("probe", "a")
    await clock.advance(1)
    assert probe.count("a") == 2
    assert outcomes(manager) == {"error": 1, "success": 1}


# --- resync and ownership ------------------------------------------------------------------


async def test_resync_enqueues_listed_keys_this_replica_owns(manager, clock) -> None:
    listings = 0

    async def list_keys() -> Iterable[str]:
        nonlocal listings
        listings += 1
        if listings == 2:
            raise ConnectionError("store unreachable")
        return ["a", "b", "c", "d"]

    probe = await started(
        manager, clock, Probe(), resync_every=60, list_keys=list_keys, owns=lambda k: k in "ac"
    )
    assert sorted(probe.calls) == ["a", "c"], "the first listing happens at start"
    await clock.advance(60)
    assert manager.stats("probe").resync_errors == 1
    await clock.advance(60)
    assert sorted(probe.calls) == ["a", "a", "c", "c"], "a failed listing does not end resyncs"
    assert manager.stats("probe").disowned == 0, "keys owned elsewhere are never even queued"
    manager.enqueue("probe", "b")
    await clock.settle()
    assert "b" not in probe.calls, "events for keys another replica owns are dropped"


async def test_resync_all_picks_up_keys_that_became_ours(manager, clock) -> None:
    owned = {"a"}

    async def list_keys() -> Iterable[str]:
        return ["a", "b", "c"]

    probe = await started(
        manager, clock, Probe(), resync_every=3600, list_keys=list_keys, owns=owned.__contains__
    )
    assert probe.calls == ["a"]
    owned.update({"b", "c"})  # another replica died: its keys are ours now
    await manager.resync_all()
    await clock.settle()
    assert sorted(probe.calls) == ["a", "a", "b", "c"]


async def test_a_membership_change_resyncs_every_loop_at_once(manager, clock) -> None:
    owned = {"a"}

    async def list_keys() -> Iterable[str]:
        return ["a", "b"]

    manager.membership_changed(["r1"])  # before start: nothing to do, start resyncs anyway
    probe = await started(
        manager, clock, Probe(), resync_every=3600, list_keys=list_keys, owns=owned.__contains__
    )
    assert probe.calls == ["a"]
    owned.add("b")  # another replica died: its keys are ours now
    manager.membership_changed(["r1"])
    await clock.settle()
    assert sorted(probe.calls) == ["a", "a", "b"], "not the hourly resync: the change itself"


async def test_a_key_disowned_while_queued_is_skipped(manager, clock) -> None:
    owned = {"a", "b"}
    gate = asyncio.Event()

    async def hold_a(key: str, attempt: int) -> base.Result:
        if key == "a":
            await gate.wait()
        return base.Result()

    probe = await started(manager, clock, Probe(hold_a), workers=1, owns=owned.__contains__)
    manager.enqueue("probe", "a")
    manager.enqueue("probe", "b")
    await asyncio.wait_for(probe.entered_event("a").wait(), timeout=5)
    owned.discard("b")
    gate.set()
    await clock.settle()
    assert probe.calls == ["a"]
    assert manager.stats("probe").disowned == 1


# --- stopping ------------------------------------------------------------------------------


async def test_stop_lets_in_flight_reconciles_finish_then_cancels_stragglers(clock) -> None:
    manager = managers.Manager(clock, rng=random.Random(1))
    quick_gate = asyncio.Event()
    never = asyncio.Event()

    async def handler(key: str, attempt: int) -> base.Result:
        await (quick_gate if key == "quick" else never).wait()
        return base.Result()

    probe = await started(manager, clock, Probe(handler), workers=2)
    manager.enqueue("probe", "quick")
    manager.enqueue("probe", "straggler")
    await asyncio.wait_for(probe.entered_event("straggler").wait(), timeout=5)
    stopping = asyncio.create_task(manager.stop(grace=10))
    await clock.settle()
    manager.enqueue("probe", "late")
    quick_gate.set()
    await clock.advance(9.9)
    assert not stopping.done(), "stop returned while a reconcile was inside its grace period"
    assert outcomes(manager) == {"success": 1}
    await clock.advance(0.1)
    await asyncio.wait_for(stopping, timeout=5)
    assert probe.cancelled == ["straggler"]
    assert "late" not in probe.calls, "a stopping manager takes no new keys"
    assert outcomes(manager) == {"success": 1, "cancelled": 1}
    assert manager.stats("probe").in_flight == 0


async def test_stop_returns_as_soon_as_idle_workers_exit(clock) -> None:
    manager = managers.Manager(clock, rng=random.Random(1))
    await started(manager, clock, Probe(), workers=3, resync_every=5, list_keys=no_keys)
    stopping = asyncio.create_task(manager.stop(grace=3600))
    await clock.settle()
    assert stopping.done(), "no reconcile was running, so stop must not wait out its grace"
    await stopping
    assert clock.next_deadline() is None, "stop left a resync timer behind"


async def no_keys() -> Iterable[str]:
    return []


# --- registration --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers=0"),
        ({"resync_every": 0, "list_keys": no_keys}, "resync_every=0"),
        ({"resync_every": 30}, "needs list_keys"),
    ],
)
async def test_register_rejects_bad_options_by_name(manager, options, message) -> None:
    with pytest.raises(ValueError, match=message):
        manager.register(Probe(), **options)


async def test_loop_names_are_unique_and_enqueue_names_the_known_loops(manager) -> None:
    manager.register(Probe())
    with pytest.raises(ValueError, match="already registered"):
        manager.register(Probe())
    with pytest.raises(KeyError, match=r"'nope' is not registered; registered: \['probe'\]"):
        manager.enqueue("nope", "a")


async def test_result_rejects_a_negative_requeue_after() -> None:
    with pytest.raises(ValueError, match="requeue_after=-1"):
        base.Result(requeue_after=-1)
