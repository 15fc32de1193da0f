"""Fixtures the view's tests share: a real SQLite store behind a `HookedStore` (which can
hide chosen records from the change feed and counts gets), a fake clock, and a view with the
default configuration over both. A test module with other needs defines its own."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from controller import config as config_mod
from controller.runtime import clock as clocks
from controller.state import view as view_mod
from store import sqlite
from tests.support import hooked_store


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[hooked_store.HookedStore]:
    hooked = hooked_store.HookedStore(await sqlite.SqliteStore.open(tmp_path / "state.db"))
    yield hooked
    await hooked.close()


@pytest.fixture
def clock() -> clocks.FakeClock:
    return clocks.FakeClock()


@pytest.fixture
def view(store: hooked_store.HookedStore, clock: clocks.FakeClock) -> view_mod.View:
    return view_mod.View(store, clock, config=config_mod.ControlPlaneConfig())
