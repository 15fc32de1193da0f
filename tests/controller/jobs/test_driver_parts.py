"""The parts a run shares, each alone: where agents reply (known once the port is bound),
which PNodes no work goes to, and tiebreaker requests shown to this replica's view at once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from api.resources import allocation, pnode
from api.resources import network as net_model
from controller import metrics as metrics_mod
from controller.jobs import driver_context, suspects, tiebreakers
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from controller.trust import book as trust
from store import sqlite
from tests.controller.jobs import driver_harness as harness

# -- ReplyTo ---------------------------------------------------------------------------------


async def test_reply_to_given_by_configuration_is_known_at_once() -> None:
    assert await driver_context.ReplyTo("10.0.0.1:7070").wait() == "10.0.0.1:7070"


async def test_reply_to_waits_until_the_port_is_bound() -> None:
    reply_to = driver_context.ReplyTo()
    waiting = asyncio.ensure_future(reply_to.wait())
    await clocks.FakeClock().settle()
    assert not waiting.done(), "no run may send a reply_to before anyone listens there"
    reply_to.bound("127.0.0.1:40123")
    assert await waiting == "127.0.0.1:40123"
    assert await reply_to.wait() == "127.0.0.1:40123", "later runs learn it too"


# -- a view holding network "lin": x.0 on p1, loss.0 on p2 -----------------------------------


@pytest.fixture
async def placed(tmp_path: Path) -> AsyncIterator[tuple[sqlite.SqliteStore, view_mod.View]]:
    store = await sqlite.SqliteStore.open(tmp_path / "state.db")
    clock = clocks.FakeClock()
    for port, name in enumerate(("p1", "p2"), start=1):
        await harness.add_pnode(store, clock, name, port)
    await store.create(harness.network_record(f"file://{tmp_path}/data.npz"))
    await store.create(harness.slot("x", epoch=1, pnode="p1"))
    await store.create(harness.slot("loss", epoch=1, pnode="p2"))
    view = view_mod.View(store, clock, config=harness.CONFIG)
    await view.refresh()
    yield store, view
    await store.close()


async def set_trust(
    store: sqlite.SqliteStore, view: view_mod.View, name: str, **fields: object
) -> None:
    record = await store.get(pnode.PNode, name)
    record.status.trust = record.status.trust.model_copy(update=fields)
    view.apply_written([await store.update(record)])


X0, LOSS0 = (allocation.slot_name(harness.NET, v, 0) for v in ("x", "loss"))


# -- Suspects --------------------------------------------------------------------------------


async def test_without_a_book_only_what_the_view_holds_counts(placed) -> None:
    store, view = placed
    known = suspects.Suspects(view=view, book=None)
    assert known.holding([X0, LOSS0]) == []
    await set_trust(store, view, "p2", bugged=True, strikes=1)
    assert known.holding([X0, LOSS0, "lin.gone.0"]) == ["p2"]
    assert (known.struck("p1"), known.struck("p2"), known.struck("nowhere")) == (
        False,
        True,
        False,
    )
    assert not known.suspect("nowhere")


async def test_strikes_the_book_holds_unwritten_make_a_pnode_suspect_at_once(placed) -> None:
    store, view = placed
    book = trust.TrustBook(store=store, clock=clocks.FakeClock())
    known = suspects.Suspects(view=view, book=book)
    book.record("p1", trust.Outcome(valid=False, job="fit", check="finite"))
    assert known.struck("p1")
    assert not known.suspect("p1"), "one strike is below the limit"
    for _ in range(book.policy.strike_limit - 1):
        book.record("p1", trust.Outcome(valid=False, job="fit", check="finite"))
    assert known.holding([X0, LOSS0]) == ["p1"], "before the write reaches the view"
    assert not view.pnodes["p1"].status.trust.bugged


# -- Tiebreakers -----------------------------------------------------------------------------


async def test_a_tiebreaker_request_is_in_the_view_at_once_and_counted_once(placed) -> None:
    store, view = placed
    sink = metrics_mod.Metrics()
    parts = tiebreakers.Tiebreakers(store=store, view=view, metrics=sink)

    def tiebreaks() -> float | None:
        return sink.registry.get_sample_value("dcnr_validation_tiebreaks_total")

    await parts.request(harness.NET, "loss")
    assert view.networks[harness.NET].status.tiebreakers == ["loss"]
    assert tiebreaks() == 1
    await parts.request(harness.NET, "loss")
    assert tiebreaks() == 1, "already there: not requested again"
    assert await parts.clear(harness.NET) == ["loss"]
    assert view.networks[harness.NET].status.tiebreakers == []
    assert (await store.get(net_model.Network, harness.NET)).status.tiebreakers == []


async def test_a_request_that_writes_nothing_reads_the_network_into_the_view(placed) -> None:
    store, view = placed
    parts = tiebreakers.Tiebreakers(store=store, view=view, metrics=None)
    elsewhere = await store.get(net_model.Network, harness.NET)
    elsewhere.status.tiebreakers = ["loss"]
    await store.update(elsewhere)  # another replica's write, not yet in this view
    assert view.networks[harness.NET].status.tiebreakers == []
    await parts.request(harness.NET, "loss")
    assert view.networks[harness.NET].status.tiebreakers == ["loss"]
    await parts.request("no-such-network", "loss")  # nothing to read: no error
