"""Trust: the sliding window, the Bugged threshold, probation, Uncordon, and coalesced
writes to a real store."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from api.resources import event, meta, pnode
from controller.runtime import clock as clock_mod
from controller.runtime import recorder
from controller.trust import book as trust
from store import base, sqlite
from tests.support import wait

NOW = datetime(2030, 1, 1, tzinfo=UTC)
OK = trust.Outcome(valid=True)
BAD = trust.Outcome(valid=False, job="j", vnode="fc1", check="finite", message="nan")


def outcomes(pattern: str) -> list[trust.Outcome]:
    return [OK if c == "V" else BAD for c in pattern]


@pytest.mark.parametrize(
    ("pattern", "window", "limit", "strikes", "cv", "bugged"),
    [
        ("VVVV", 10, 3, 0, 4, False),
        ("VVSVV", 10, 3, 1, 2, False),
        ("SVSVS", 10, 3, 3, 0, True),
        ("SSS", 10, 3, 3, 0, True),
        ("SVVVVS", 4, 2, 1, 0, False),  # the first strike slid out of the window
        ("SVVVS", 4, 2, 1, 0, False),
        ("SVVS", 4, 2, 2, 0, True),
        ("S", 1, 1, 1, 0, True),
    ],
)
def test_window_and_threshold(
    pattern: str, window: int, limit: int, strikes: int, cv: int, bugged: bool
) -> None:
    policy = trust.TrustPolicy(window=window, strike_limit=limit)
    applied = trust.apply(pnode.Trust(), outcomes(pattern), policy, NOW)
    assert applied.trust.strikes == strikes
    assert applied.trust.consecutive_valid == cv
    assert applied.trust.bugged is bugged
    assert applied.became_bugged is bugged
    assert len(applied.trust.window) == min(len(pattern), window)
    assert applied.trust.strikes_total == pattern.count("S")
    rejected = [e for e in applied.events if e.verdict == "rejected"]
    assert len(rejected) == pattern.count("S")
    assert [e.verdict for e in applied.events].count("bugged") == int(bugged)


def test_liar_is_bugged_after_at_most_five_bad_results_with_defaults() -> None:
    t, policy = pnode.Trust(), trust.TrustPolicy()
    bad_results = 0
    while not t.bugged and bad_results < 5:
        t = trust.apply(t, outcomes("VVVVVVVVS"), policy, NOW).trust
        bad_results += 1
    assert t.bugged


def test_stays_bugged_without_probation_and_more_results_do_not_re_announce() -> None:
    policy = trust.TrustPolicy(window=10, strike_limit=2)
    first = trust.apply(pnode.Trust(), outcomes("SS"), policy, NOW)
    later = trust.apply(first.trust, outcomes("VVVVVVVVVVVV"), policy, NOW + timedelta(days=9))
    assert later.trust.bugged
    assert not later.became_bugged
    assert not later.cleared


def test_probation_clears_and_one_more_strike_re_bugs() -> None:
    policy = trust.TrustPolicy(window=10, strike_limit=3, probation_after=60)
    bugged = trust.apply(pnode.Trust(), outcomes("SSS"), policy, NOW).trust
    early = trust.apply(bugged, [], policy, NOW + timedelta(seconds=59))
    assert early.trust.bugged
    assert not early.cleared
    cleared = trust.apply(bugged, [], policy, NOW + timedelta(seconds=60))
    assert cleared.cleared
    assert not cleared.trust.bugged
    assert cleared.trust.strikes == 2
    assert cleared.events[0].verdict == "probation-cleared"
    again = trust.apply(cleared.trust, outcomes("S"), policy, NOW + timedelta(seconds=61))
    assert again.became_bugged


def test_uncordon_reset_forgets_the_window_strikes() -> None:
    policy = trust.TrustPolicy(window=10, strike_limit=3)
    bugged = trust.apply(pnode.Trust(), outcomes("SSS"), policy, NOW).trust
    # What Registry.uncordon writes:
    cleared = bugged.model_copy(update={"bugged": False, "strikes": 0})
    after = trust.apply(cleared, outcomes("V"), policy, NOW)
    assert not after.trust.bugged
    assert after.trust.strikes == 0
    assert after.trust.window == "V"


def test_policy_is_validated() -> None:
    with pytest.raises(ValueError, match="strike_limit"):
        trust.TrustPolicy(window=2, strike_limit=3)


def test_events_are_bounded() -> None:
    event = pnode.ValidationEvent(time=NOW, verdict="rejected")
    kept = trust.with_events([event] * 15, [event] * 10)
    assert len(kept) == trust.MAX_EVENTS


def _node(name: str) -> pnode.PNode:
    return pnode.PNode(
        metadata=meta.ObjectMeta(name=name), spec=pnode.PNodeSpec(address="127.0.0.1:1")
    )


async def _eventually(
    clock: clock_mod.FakeClock, check: Callable[[], Awaitable[bool]], *, fake_budget: float
) -> None:
    """Until `check` holds, moving the fake clock in small steps up to `fake_budget` seconds
    (store writes run on a thread, which the fake clock cannot drive, so between looks the
    wait also lets a little real time pass)."""
    moved = 0.0

    async def look() -> bool:
        nonlocal moved
        if await check():
            return True
        if moved < fake_budget:
            await clock.advance(0.05)
            moved += 0.05
        return False

    await wait.until(look, within=10, what=f"the condition, within {fake_budget}s of fake time")


async def test_book_coalesces_writes_and_bugs_promptly(tmp_path: Path) -> None:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clock_mod.FakeClock()
    written: list[str] = []
    bugged: list[str] = []
    events = recorder.Recorder(store=store, clock=clock, replica="r1")
    book = trust.TrustBook(
        store=store,
        clock=clock,
        policy=trust.TrustPolicy(window=20, strike_limit=3, flush_every=1.0),
        on_written=lambda nodes: written.extend(n.name for n in nodes),
        on_bugged=bugged.append,
        events=events,
    )
    try:
        for name in ("honest", "liar"):
            await store.create(_node(name))
        before = (await store.get(pnode.PNode, "honest")).metadata.resource_version
        book.start()
        for _ in range(500):
            book.record("honest", OK)

        async def honest_written() -> bool:
            node = await store.get(pnode.PNode, "honest")
            return node.status.trust.consecutive_valid == 500

        await _eventually(clock, honest_written, fake_budget=1.2)
        honest = await store.get(pnode.PNode, "honest")
        assert honest.metadata.resource_version == before + 1  # one write for 500 results
        for _ in range(3):
            book.record("liar", BAD)

        async def liar_bugged() -> bool:
            return (await store.get(pnode.PNode, "liar")).status.trust.bugged

        # Strikes do not wait for the flush interval (1 s).
        await _eventually(clock, liar_bugged, fake_budget=0.5)
        liar = await store.get(pnode.PNode, "liar")
        assert liar.status.trust.bugged
        assert liar.status.trust.strikes == 3
        assert bugged == ["liar"]
        assert [e.verdict for e in liar.status.validation_events] == [
            "rejected",
            "rejected",
            "rejected",
            "bugged",
        ]
        assert written.count("liar") == 1
        await events.flush()  # strikes and Bugged are events on the PNode, for people
        told = await base.list_all(store, event.Event, index=("object", "PNode/liar"))
        assert sorted((e.type, e.reason, e.count) for e in told) == [
            ("Warning", "Bugged", 1),
            ("Warning", "Strike", 3),
        ]
        book.record("gone", BAD)  # a deleted PNode: dropped, not retried forever

        async def drained() -> bool:
            return book.pending() == 0

        await _eventually(clock, drained, fake_budget=0.5)
        assert (await store.get(pnode.PNode, "honest")).status.trust.strikes == 0
    finally:
        await book.stop()
        await store.close()


async def test_suspect_counts_strikes_not_yet_written(tmp_path: Path) -> None:
    """The driver stops feeding a PNode as soon as its unwritten strikes would make it
    Bugged, before the write lands; an Uncordon-reset window does not count old strikes."""
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    book = trust.TrustBook(
        store=store, clock=clock_mod.FakeClock(), policy=trust.TrustPolicy(strike_limit=3)
    )
    try:
        written = pnode.Trust(window="VVSV", strikes=1)
        assert not book.suspect("p", written)
        book.record("p", BAD)
        assert not book.suspect("p", written)  # 2 strikes
        book.record("p", OK)
        book.record("p", BAD)
        assert book.suspect("p", written)  # 3 strikes, none of the last two written
        assert not book.suspect("other", written)
        reset = pnode.Trust(window="SSVV", strikes=0)  # Uncordon cleared the strikes
        assert not book.suspect("p", reset)
        assert book.suspect("q", pnode.Trust(bugged=True))
    finally:
        await store.close()
