"""The embedded store: one SQLite file, durable, safe for several orchestrator processes.

Layout. `records(kind, name, resource_version, uid, data)` keyed by (kind, name) holds each
record as JSON. Secondary indexes live in a side table `record_index(kind, index_name,
value, name)` whose primary key is the lookup order itself: listing by index is one range
scan that already yields names in order, so a page is `name > last` on that key with no
sort. A side table rather than fixed ix0/ix1 columns because kinds declare different
numbers of indexes, an index added to a kind later needs rows and no ALTER TABLE, and a
sparse index (value None) simply has no row. A second index on (kind, name) lets a write
drop a record's old index rows without parsing its old JSON.

Concurrency. One worker thread owns this process's only connection, and every blocking
call runs there: the event loop never waits on the disk, and writes of one process are
serialized without locks of our own. Between processes, WAL lets readers go on while one
writer holds the lock. Writes open with BEGIN IMMEDIATE, so the write lock is held before
any condition is read: the check and the write see the same committed state, and two
writers never deadlock upgrading read locks. SQLite's busy_timeout waits for the lock
first; past it we retry with jittered backoff, then raise Unavailable.

Change feed. Every write also appends to `changes(seq, kind, name, resource_version, uid,
data)` in the same transaction (data NULL for a delete), so a change is committed exactly when its
record is. `seq` is AUTOINCREMENT: writers hold the write lock in turn, so sequence numbers
commit in order and a reader never sees seq N+1 without N, and a number is never reused
after compaction. A cursor is a seq. The feed keeps the newest `feed_retention` changes:
a write transaction that leaves more than a tenth beyond them deletes the oldest and moves
`feed_floor` (in `feed_state`) up; a cursor below the floor, or beyond the newest seq (a
different or restored file), is Gone. A cursor is read as: the newest seq, then the rows
after the cursor up to it, then the floor, so a compaction racing the read cannot hide a
row (the floor only grows).

Expiry. A record whose `forget_after` has passed (an Event's TTL) is gone for every call:
get is NotFound, list leaves it out and deletes it, and create takes its name.

Durability. WAL with synchronous=FULL fsyncs the log before COMMIT returns, so a write
that returned survives a crash of the process and of the machine (NORMAL would only
promise the former).
"""

from __future__ import annotations

import asyncio
import functools
import json
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import TypeVar

from api.resources import meta
from store import base, errors, feed, requests

R = TypeVar("R", bound=meta.Resource)
T = TypeVar("T")

#: Bump when the layout changes; a database written by a newer layout is refused.
SCHEMA_VERSION = 2
#: Changes the feed keeps by default; a consumer further behind than this re-lists.
DEFAULT_FEED_RETENTION = 50_000
#: The in-memory database (the simulator) keeps fewer: memory, not disk, holds them.
MEMORY_FEED_RETENTION = 10_000
#: Attempts after SQLite's own busy_timeout gave up, with full-jitter backoff between.
_LOCK_ATTEMPTS = 4
_BACKOFF_FIRST = 0.01
_BACKOFF_MAX = 0.5

#: The path SQLite takes for a private in-memory database (`SqliteStore.in_memory`).
MEMORY = ":memory:"

#: Per op, the written record (None for Delete and Check); named here because inside the
#: class `list` is the method.
Written = list[meta.Resource | None]

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS records (
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        uid TEXT NOT NULL,
        data TEXT NOT NULL,
        PRIMARY KEY (kind, name)
    ) WITHOUT ROWID""",
    """CREATE TABLE IF NOT EXISTS record_index (
        kind TEXT NOT NULL,
        index_name TEXT NOT NULL,
        value TEXT NOT NULL,
        name TEXT NOT NULL,
        PRIMARY KEY (kind, index_name, value, name)
    ) WITHOUT ROWID""",
    "CREATE INDEX IF NOT EXISTS record_index_by_record ON record_index (kind, name)",
    """CREATE TABLE IF NOT EXISTS changes (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        name TEXT NOT NULL,
        resource_version INTEGER NOT NULL,
        uid TEXT NOT NULL,
        data TEXT
    )""",
    """CREATE TABLE IF NOT EXISTS feed_state (
        key TEXT PRIMARY KEY,
        value INTEGER NOT NULL
    ) WITHOUT ROWID""",
)
_BACKEND = "sqlite"
#: seq, kind, name, resource_version, uid, data (None: deleted)
_ChangeRow = tuple[int, str, str, int, str, str | None]


class SqliteStore:
    """The Store protocol on one SQLite file; open with `await SqliteStore.open(path)`."""

    def __init__(
        self,
        *,
        path: Path,
        clock: base.Clock,
        executor: Executor,
        conn: sqlite3.Connection,
        uids: Callable[[], str] = requests.new_uid,
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> None:
        """`uids` makes each created record's uid (random by default); the change feed keeps
        at least the newest `feed_retention` changes."""
        if (
            isinstance(feed_retention, bool)
            or not isinstance(feed_retention, int)
            or (feed_retention < 1)
        ):
            raise errors.InvalidRequest(
                f"sqlite store {path}: feed_retention {feed_retention!r} must be an integer >= 1"
            )
        self._feed_retention = feed_retention
        self._path = path
        self._uids = uids
        self._clock = clock
        self._executor = executor
        self._conn = conn
        self._closed = False
        self._jitter = random.Random()

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        clock: base.Clock = base.utc_now,
        busy_timeout: float = 5.0,
        feed_retention: int = DEFAULT_FEED_RETENTION,
    ) -> SqliteStore:
        """Open (creating file and schema if needed); `busy_timeout` is seconds per lock wait."""
        db_path = Path(path)
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        loop = asyncio.get_running_loop()
        try:
            conn = await loop.run_in_executor(executor, _connect, db_path, busy_timeout)
        except BaseException:
            executor.shutdown(wait=False)
            raise
        return cls(
            path=db_path,
            clock=clock,
            executor=executor,
            conn=conn,
            feed_retention=feed_retention,
        )

    @classmethod
    def in_memory(
        cls, *, clock: base.Clock, executor: Executor, uids: Callable[[], str]
    ) -> SqliteStore:
        """A private database in this process's memory, gone when closed: not durable, not
        shared with other processes. The simulator (`sim`) runs its calls on an executor
        that runs them inline and draws uids from its seed, so a run is single-threaded
        and reproducible (placement seeds derive from a network's uid)."""
        path = Path(MEMORY)
        # Made on the executor's thread, the one that will use it (sqlite3 checks).
        conn = executor.submit(_connect, path, 0.0).result()
        return cls(
            path=path,
            clock=clock,
            executor=executor,
            conn=conn,
            uids=uids,
            feed_retention=MEMORY_FEED_RETENTION,
        )

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        loop = asyncio.get_running_loop()
        try:
            # Queued behind any operation still running, so those finish first.
            await loop.run_in_executor(self._executor, self._conn.close)
        finally:
            self._executor.shutdown(wait=False)

    # -- reads -------------------------------------------------------------------------------

    async def get(self, kind: type[R], name: str) -> R:
        now = self._clock()

        def run(conn: sqlite3.Connection) -> R:
            row = _row(conn, kind.KIND, name)
            found = None if row is None else kind.model_validate_json(row[2])
            if found is None or requests.expired(found, now):
                raise requests.not_found(kind.KIND, name)
            return found

        return await self._run(run, write=False)

    async def list(
        self,
        kind: type[R],
        *,
        index: tuple[str, str] | None = None,
        limit: int = base.DEFAULT_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[R]:
        requests.check_list_args(kind, index, limit)
        after = "" if continue_token is None else requests.decode_token(continue_token, kind, index)

        now = self._clock()

        def run(conn: sqlite3.Connection) -> tuple[base.Page[R], list[tuple[str, int]]]:
            if index is None:
                cursor = conn.execute(
                    "SELECT name, data FROM records WHERE kind = ? AND name > ?"
                    " ORDER BY name LIMIT ?",
                    (kind.KIND, after, limit + 1),
                )
            else:
                cursor = conn.execute(
                    "SELECT r.name, r.data FROM record_index AS i"
                    " JOIN records AS r ON r.kind = i.kind AND r.name = i.name"
                    " WHERE i.kind = ? AND i.index_name = ? AND i.value = ? AND i.name > ?"
                    " ORDER BY i.name LIMIT ?",
                    (kind.KIND, index[0], index[1], after, limit + 1),
                )
            rows = cursor.fetchall()
            found = [kind.model_validate_json(data) for _, data in rows[:limit]]
            items = [r for r in found if not requests.expired(r, now)]
            gone = [
                (r.name, r.metadata.resource_version) for r in found if requests.expired(r, now)
            ]
            token = (
                requests.encode_token(kind, index, rows[limit - 1][0])
                if len(rows) > limit
                else None
            )
            return base.Page(items=items, continue_token=token), gone

        page, gone = await self._run(run, write=False)
        if gone:
            # Expired records met on the way are deleted here, so they do not pile up; each
            # only at the version read, so a record renewed meanwhile stays.
            await self._run(lambda conn: _purge(conn, kind.KIND, gone), write=True)
        return page

    async def versions(
        self,
        kind: type[meta.Resource],
        *,
        limit: int = base.DEFAULT_VERSIONS_PAGE_SIZE,
        continue_token: str | None = None,
    ) -> base.Page[base.Version]:
        requests.check_versions_args(kind, limit)
        after = "" if continue_token is None else requests.decode_token(continue_token, kind, None)
        now = self._clock()
        # The columns only, off the primary key's order: no record is parsed, except for a
        # kind that expires, whose expiry is inside the JSON.
        data = ", data" if kind.EXPIRES else ""

        def run(conn: sqlite3.Connection) -> list[tuple[str, str, int, str]]:
            cursor = conn.execute(
                f"SELECT name, uid, resource_version{data} FROM records"
                " WHERE kind = ? AND name > ? ORDER BY name LIMIT ?",
                (kind.KIND, after, limit + 1),
            )
            return cursor.fetchall()

        rows = await self._run(run, write=False)
        found = [
            base.Version(name=row[0], uid=row[1], resource_version=int(row[2]))
            for row in rows[:limit]
            if not (kind.EXPIRES and requests.expired(kind.model_validate_json(row[3]), now))
        ]
        token = requests.encode_token(kind, None, rows[limit - 1][0]) if len(rows) > limit else None
        return base.Page(items=found, continue_token=token)

    # -- the change feed ---------------------------------------------------------------------

    async def feed_head(self, kinds: Sequence[type[meta.Resource]]) -> str:
        names = feed.check_kinds(kinds)
        head = await self._run(_newest_seq, write=False)
        return feed.encode(_BACKEND, names, head)

    async def changes(
        self, cursor: str, *, limit: int = base.DEFAULT_PAGE_SIZE, held: base.Held | None = None
    ) -> base.ChangePage:
        feed.check_limit(limit)
        kinds, after = feed.decode(cursor, _BACKEND)
        if isinstance(after, bool) or not isinstance(after, int) or after < 0:
            raise errors.InvalidRequest(f"changes: cursor {cursor[:40]!r} is malformed")

        def run(conn: sqlite3.Connection) -> tuple[list[base.Change], int, int, int]:
            newest = _newest_seq(conn)
            marks = ",".join("?" * len(kinds))
            rows: list[_ChangeRow] = conn.execute(
                "SELECT seq, kind, name, resource_version, uid, data FROM changes"
                f" WHERE seq > ? AND seq <= ? AND kind IN ({marks}) ORDER BY seq LIMIT ?",
                (after, newest, *kinds, limit),
            ).fetchall()
            changes = [
                _change(kind, name, version, uid, data, held)
                for _, kind, name, version, uid, data in rows
            ]
            return changes, (rows[-1][0] if rows else newest), newest, _feed_floor(conn)

        changes, last, newest, floor = await self._run(run, write=False)
        if after < floor:
            raise feed.gone(cursor, f"seq {after} is older than the oldest kept, {floor + 1}")
        if after > newest:
            raise feed.gone(cursor, f"seq {after} is beyond this file's newest, {newest}")
        more = len(changes) == limit
        position = last if more else newest
        return base.ChangePage(changes, feed.encode(_BACKEND, kinds, position), more)

    # -- writes ------------------------------------------------------------------------------

    async def create(self, obj: R) -> R:
        now = self._clock()
        return await self._run(lambda conn: _create(conn, obj, now, self._uids), write=True)

    async def update(self, obj: R) -> R:
        return await self._run(lambda conn: _update(conn, obj), write=True)

    async def delete(
        self,
        kind: type[R],
        name: str,
        *,
        resource_version: int | None = None,
        uid: str | None = None,
    ) -> None:
        op = base.Delete(kind, name, resource_version, uid)
        await self._run(lambda conn: _delete(conn, op), write=True)

    async def transact(self, ops: Sequence[base.Op]) -> Written:
        requests.check_transaction(ops)
        if not ops:
            return []
        now = self._clock()

        def run(conn: sqlite3.Connection) -> Written:
            results: Written = []
            for position, op in enumerate(ops):
                try:
                    results.append(_apply(conn, op, now, self._uids))
                except errors.StoreError as exc:
                    exc.op_index = position
                    raise
            return results

        return await self._run(run, write=True)

    # -- the worker thread -------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        if self._closed:
            raise errors.InvalidRequest(f"sqlite store {self._path} is closed")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._executor, functools.partial(self._attempt, fn, write=write)
        )

    def _attempt(self, fn: Callable[[sqlite3.Connection], T], *, write: bool) -> T:
        """Run `fn`, in a write transaction if `write`; on the worker thread."""
        conn = self._conn
        if write:
            retention = self._feed_retention

            def then_compact(c: sqlite3.Connection) -> T:
                result = fn(c)
                _compact(c, retention)
                return result

            return _retry_while_locked(
                self._path, self._jitter, lambda: _in_transaction(conn, then_compact)
            )
        return _retry_while_locked(self._path, self._jitter, lambda: fn(conn))


def _change(
    kind: str, name: str, version: int, uid: str, data: str | None, held: base.Held | None
) -> base.Change:
    """A feed row as a Change, on the worker thread. A record the reader holds already
    (`held`) is left unparsed; the others are parsed here: a page of another replica's
    writes is hundreds of records, tens of milliseconds of pydantic that would otherwise
    hold the event loop in one piece (issue 13, the `ingest` scenario's tail)."""
    if data is None:
        return feed.tombstone(kind, name, version, uid)
    model = feed.kind_of(kind)
    if held is not None and held(kind, name, uid, version):
        return feed.unparsed(
            kind, name, version, uid, functools.partial(model.model_validate_json, data)
        )
    return feed.written(model.model_validate_json(data))


def _retry_while_locked(path: Path, jitter: random.Random, fn: Callable[[], T]) -> T:
    """Retry `fn` while another connection holds the lock past busy_timeout; translate errors.

    Sleeps between attempts: it runs on a store's worker thread, never on the event loop.
    """
    backoff = _BACKOFF_FIRST
    for attempt in range(_LOCK_ATTEMPTS):
        try:
            return fn()
        except sqlite3.Error as exc:
            if not _is_busy(exc):
                raise _translate(path, exc) from exc
            if attempt == _LOCK_ATTEMPTS - 1:
                raise errors.Unavailable(
                    f"sqlite store {path}: database is locked by another writer;"
                    f" gave up after {_LOCK_ATTEMPTS} attempts, retry later"
                ) from exc
            time.sleep(jitter.uniform(0, backoff))
            backoff = min(backoff * 2, _BACKOFF_MAX)
    raise AssertionError("unreachable")  # pragma: no cover


def _connect(path: Path, busy_timeout: float) -> sqlite3.Connection:
    try:
        if str(path) != MEMORY:
            path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=busy_timeout, isolation_level=None)
    except (OSError, sqlite3.Error) as exc:
        raise errors.Unavailable(f"sqlite store {path}: cannot open: {exc}") from exc
    try:
        # Several processes may create the file and schema at once: retried like any write.
        _retry_while_locked(path, random.Random(), lambda: _init_schema(conn, path))
    except BaseException:
        conn.close()
        raise
    return conn


def _init_schema(conn: sqlite3.Connection, path: Path) -> None:
    in_memory = str(path) == MEMORY
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    # An in-memory database has no file to log to; SQLite keeps its journal in memory.
    if str(mode).lower() != ("memory" if in_memory else "wal"):
        raise errors.Unavailable(
            f"sqlite store {path}: journal_mode is {mode!r}, need 'wal'"
            " (is the file on a network filesystem?)"
        )
    conn.execute("PRAGMA synchronous = FULL")

    def create(c: sqlite3.Connection) -> None:
        version = int(c.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise errors.StoreError(
                f"sqlite store {path}: schema version {version} is newer than this"
                f" orchestrator's {SCHEMA_VERSION}; upgrade the orchestrator"
            )
        for statement in _SCHEMA:
            c.execute(statement)
        if version < SCHEMA_VERSION:
            c.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    _in_transaction(conn, create)


def _in_transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    return result


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc) or "busy" in str(exc)


def _translate(path: Path, exc: sqlite3.Error) -> errors.StoreError:
    if isinstance(exc, sqlite3.OperationalError):
        # Disk full, I/O errors, a vanished directory: the caller may retry later.
        return errors.Unavailable(f"sqlite store {path}: {exc}")
    return errors.StoreError(f"sqlite store {path}: {exc}")


# -- operations, run on the worker thread inside a transaction ----------------------------


def _row(conn: sqlite3.Connection, kind: str, name: str) -> tuple[int, str, str] | None:
    row = conn.execute(
        "SELECT resource_version, uid, data FROM records WHERE kind = ? AND name = ?",
        (kind, name),
    ).fetchone()
    return None if row is None else (int(row[0]), str(row[1]), str(row[2]))


def _apply(
    conn: sqlite3.Connection, op: base.Op, now: datetime, uids: Callable[[], str]
) -> meta.Resource | None:
    if isinstance(op, base.Create):
        return _create(conn, op.obj, now, uids)
    if isinstance(op, base.Update):
        return _update(conn, op.obj)
    if isinstance(op, base.Delete):
        _delete(conn, op)
        return None
    _checked_row(conn, op.kind.KIND, op.name, op.resource_version, op.uid)  # a Check
    return None


def _create(conn: sqlite3.Connection, obj: R, now: datetime, uids: Callable[[], str]) -> R:
    kind = obj.KIND
    row = _row(conn, kind, obj.name)
    if row is not None:
        if not requests.expired(type(obj).model_validate_json(row[2]), now):
            raise requests.already_exists(kind, obj.name)
        _purge(conn, kind, [(obj.name, row[0])])  # an expired record's name is free
    stored = requests.created(obj, now, uid=uids())
    data = stored.to_json()
    conn.execute(
        "INSERT INTO records (kind, name, resource_version, uid, data) VALUES (?, ?, ?, ?, ?)",
        (kind, obj.name, 1, stored.metadata.uid, data),
    )
    _write_index(conn, stored)
    _log(conn, kind, obj.name, 1, stored.metadata.uid, data)
    return type(obj).model_validate_json(data)


def _update(conn: sqlite3.Connection, obj: R) -> R:
    kind = obj.KIND
    version, uid, old_data = _checked_row(
        conn, kind, obj.name, obj.metadata.resource_version, obj.metadata.uid
    )
    old_meta = meta.ObjectMeta.model_validate(json.loads(old_data)["metadata"])
    stored = requests.updated(obj, uid=uid, creation_timestamp=old_meta.creation_timestamp)
    data = stored.to_json()
    conn.execute(
        "UPDATE records SET resource_version = ?, data = ? WHERE kind = ? AND name = ?",
        (version + 1, data, kind, obj.name),
    )
    conn.execute("DELETE FROM record_index WHERE kind = ? AND name = ?", (kind, obj.name))
    _write_index(conn, stored)
    _log(conn, kind, obj.name, version + 1, uid, data)
    return type(obj).model_validate_json(data)


def _delete(conn: sqlite3.Connection, op: base.Delete) -> None:
    version, uid, _ = _checked_row(conn, op.kind.KIND, op.name, op.resource_version, op.uid)
    _log(conn, op.kind.KIND, op.name, version, uid, None)
    conn.execute("DELETE FROM records WHERE kind = ? AND name = ?", (op.kind.KIND, op.name))
    conn.execute("DELETE FROM record_index WHERE kind = ? AND name = ?", (op.kind.KIND, op.name))


def _purge(conn: sqlite3.Connection, kind: str, records: list[tuple[str, int]]) -> None:
    """Delete expired records, each only if still at the resource_version seen expired."""
    for name, version in records:
        row = _row(conn, kind, name)
        deleted = conn.execute(
            "DELETE FROM records WHERE kind = ? AND name = ? AND resource_version = ?",
            (kind, name, version),
        ).rowcount
        if deleted:
            conn.execute("DELETE FROM record_index WHERE kind = ? AND name = ?", (kind, name))
            _log(conn, kind, name, version, "" if row is None else row[1], None)


def _checked_row(
    conn: sqlite3.Connection, kind: str, name: str, resource_version: int | None, uid: str | None
) -> tuple[int, str, str]:
    """The stored row, if it meets the write's preconditions; NotFound or Conflict if not."""
    row = _row(conn, kind, name)
    if row is None:
        raise requests.not_found(kind, name)
    failure = requests.precondition_failure(
        kind,
        name,
        stored_version=row[0],
        stored_uid=row[1],
        resource_version=resource_version,
        uid=uid,
    )
    if failure is not None:
        raise failure
    return row


def _write_index(conn: sqlite3.Connection, obj: meta.Resource) -> None:
    values = obj.index_values()
    rows = [
        (obj.KIND, index_name, value, obj.name)
        for index_name in obj.INDEXES
        if (value := values.get(index_name)) is not None
    ]
    conn.executemany(
        "INSERT INTO record_index (kind, index_name, value, name) VALUES (?, ?, ?, ?)", rows
    )


# -- the change feed, on the worker thread ----------------------------------------------------


def _log(
    conn: sqlite3.Connection, kind: str, name: str, version: int, uid: str, data: str | None
) -> None:
    conn.execute(
        "INSERT INTO changes (kind, name, resource_version, uid, data) VALUES (?, ?, ?, ?, ?)",
        (kind, name, version, uid, data),
    )


def _newest_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changes'").fetchone()
    return 0 if row is None else int(row[0])


def _feed_floor(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT value FROM feed_state WHERE key = 'floor'").fetchone()
    return 0 if row is None else int(row[0])


def _compact(conn: sqlite3.Connection, retention: int) -> None:
    """Drop the oldest changes once more than a tenth beyond `retention` piled up (so the
    delete runs once per retention/10 writes, not on each)."""
    newest, floor = _newest_seq(conn), _feed_floor(conn)
    if newest - floor <= retention + max(1, retention // 10):
        return
    floor = newest - retention
    conn.execute("DELETE FROM changes WHERE seq <= ?", (floor,))
    conn.execute(
        "INSERT INTO feed_state (key, value) VALUES ('floor', ?)"
        " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (floor,),
    )
