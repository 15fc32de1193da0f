"""Every store test runs on every backend: `store` is parametrized over sqlite and dynamodb.

`backend` opens more clients on the same durable state (a second connection to the same
SQLite file, a second client on the same DynamoDB tables), for races between clients as
well as between tasks of one client. Everything opened is closed at teardown.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from store import base

BACKENDS = ["sqlite", "dynamodb"]


class FakeClock:
    """The store's clock in tests: creation timestamps are exact and time moves on demand."""

    def __init__(self, start: datetime) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Backend:
    """Opens clients of one backend on one piece of state."""

    def __init__(self, name: str, clock: FakeClock, *, path: Path, endpoint: str | None) -> None:
        self.name = name
        self.clock = clock
        self.path = path
        self.endpoint = endpoint
        self.prefix = f"t{uuid.uuid4().hex[:12]}"
        self._opened: list[base.Store] = []
        self._tables_ready = False

    async def open(self) -> base.Store:
        if self.name == "sqlite":
            from store import sqlite

            db = await sqlite.SqliteStore.open(self.path, clock=self.clock)
            self._opened.append(db)
            return db
        from store import dynamodb

        dyn = await dynamodb.DynamoStore.open(
            prefix=self.prefix, region="us-east-1", endpoint=self.endpoint, clock=self.clock
        )
        self._opened.append(dyn)
        if not self._tables_ready:
            await dyn.init_tables()
            self._tables_ready = True
        return dyn

    async def close_all(self) -> None:
        for store in self._opened:
            await store.close()


@pytest.fixture
def fake_clock() -> FakeClock:
    return FakeClock(datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture(params=BACKENDS)
async def backend(
    request: pytest.FixtureRequest, tmp_path: Path, fake_clock: FakeClock
) -> AsyncIterator[Backend]:
    endpoint = request.getfixturevalue("moto_endpoint") if request.param == "dynamodb" else None
    opened = Backend(request.param, fake_clock, path=tmp_path / "state.db", endpoint=endpoint)
    try:
        yield opened
    finally:
        await opened.close_all()


@pytest.fixture
async def store(backend: Backend) -> base.Store:
    return await backend.open()
