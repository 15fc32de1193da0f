"""Store URLs: `sqlite:///path/state.db[?feed_retention=N]` and
`dynamodb://PREFIX?region=R&endpoint=URL`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from store import base, errors

DEFAULT_REGION = "us-east-1"


@dataclass(frozen=True, slots=True)
class SqliteURL:
    path: Path
    #: Changes the change feed keeps (None: `sqlite.DEFAULT_FEED_RETENTION`).
    feed_retention: int | None = None


@dataclass(frozen=True, slots=True)
class DynamoURL:
    prefix: str
    region: str
    endpoint: str | None


def default_state_dir() -> Path:
    """Where the embedded store lives by default: $XDG_STATE_HOME/dcnr or ~/.local/state/dcnr."""
    root = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(root) / "dcnr"


def default_url() -> str:
    return f"sqlite:///{default_state_dir() / 'state.db'}"


def parse(url: str) -> SqliteURL | DynamoURL:
    """Parse a store URL, or raise InvalidRequest naming what is wrong and what is valid."""
    parts = urlsplit(url)
    if parts.scheme == "sqlite":
        # As SQLAlchemy: sqlite:///state.db is relative to the working directory,
        # sqlite:////var/lib/dcnr/state.db (four slashes) is absolute.
        if parts.netloc:
            raise errors.InvalidRequest(
                f"store url {url!r}: sqlite urls have no host; write sqlite:///path/state.db"
            )
        path = parts.path[1:]
        if not path or path.endswith("/"):
            raise errors.InvalidRequest(
                f"store url {url!r}: missing database path (sqlite:///path/state.db)"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"feed_retention"})
        if unknown:
            raise errors.InvalidRequest(
                f"store url {url!r}: unknown parameter {unknown[0]!r} (known: feed_retention)"
            )
        retention = None
        if "feed_retention" in query:
            value = query["feed_retention"][-1]
            if not value.isdigit() or int(value) < 1:
                raise errors.InvalidRequest(
                    f"store url {url!r}: feed_retention {value!r} must be a whole number >= 1"
                    " (changes the change feed keeps)"
                )
            retention = int(value)
        return SqliteURL(path=Path(path), feed_retention=retention)
    if parts.scheme == "dynamodb":
        prefix = parts.netloc
        if not prefix or not all(c.isalnum() or c in "-_." for c in prefix) or len(prefix) > 200:
            raise errors.InvalidRequest(
                f"store url {url!r}: table prefix {prefix!r} must be 1-200 characters of "
                "letters, digits, '-', '_' or '.'"
            )
        query = parse_qs(parts.query, keep_blank_values=True)
        unknown = sorted(set(query) - {"region", "endpoint"})
        if unknown:
            raise errors.InvalidRequest(
                f"store url {url!r}: unknown parameter {unknown[0]!r} (known: region, endpoint)"
            )
        region = query.get("region", [os.environ.get("AWS_REGION") or DEFAULT_REGION])[-1]
        endpoint = query.get("endpoint", [None])[-1] or None
        return DynamoURL(prefix=prefix, region=region, endpoint=endpoint)
    raise errors.InvalidRequest(
        f"store url {url!r}: unknown scheme {parts.scheme!r} (known: sqlite, dynamodb)"
    )


def _check_directory(url: str, path: Path) -> None:
    """Serving never creates a directory the user named: a typo in it would silently start a
    fresh, empty store somewhere. The default state directory is ours; `init-store` (whose
    job is creating things) creates any directory."""
    if path.parent == default_state_dir() or path.parent.is_dir():
        return
    raise errors.InvalidRequest(
        f"store url {url!r}: directory {str(path.parent)!r} does not exist; create it first"
        " or run `dcnr-orchestrator init-store` with this --store"
    )


async def open_store(url: str, *, clock: base.Clock = base.utc_now) -> base.Store:
    """Open the store a URL names. Tables/schema must exist (see `init_store`) for DynamoDB;
    SQLite creates its schema on open, being a private file."""
    parsed = parse(url)
    if isinstance(parsed, SqliteURL):
        from store import sqlite

        _check_directory(url, parsed.path)
        if parsed.feed_retention is None:
            return await sqlite.SqliteStore.open(parsed.path, clock=clock)
        return await sqlite.SqliteStore.open(
            parsed.path, clock=clock, feed_retention=parsed.feed_retention
        )
    from store import dynamodb

    return await dynamodb.DynamoStore.open(
        prefix=parsed.prefix, region=parsed.region, endpoint=parsed.endpoint, clock=clock
    )


async def init_store(url: str) -> list[str]:
    """Create the store's tables idempotently; returns a line per table saying what happened."""
    parsed = parse(url)
    if isinstance(parsed, SqliteURL):
        from store import sqlite

        db = await sqlite.SqliteStore.open(parsed.path)  # creating it is init-store's job
        await db.close()
        return [f"sqlite database {parsed.path} ready"]
    from store import dynamodb

    dyn = await dynamodb.DynamoStore.open(
        prefix=parsed.prefix, region=parsed.region, endpoint=parsed.endpoint
    )
    try:
        return await dyn.init_tables()
    finally:
        await dyn.close()
