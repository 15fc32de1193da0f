"""A child process for the change-feed tests: follows a store's feed, one page per command,
committing each page to a log file as one line, and resumes from that log when started again.

python feed_consumer.py STORE_URL LOG LIMIT

The first run, finding no log, takes the head of the Job feed, commits it as the log's
first line `{"cursor": ...}` and prints `head` (on DynamoDB a head position lives in the
process that took it until a record moves it on, so the consumer takes its own). Each applied
page appends `{"cursor": <after the page>, "changes": [[kind, name, rv, deleted], ...]}` and
a newline, then fsyncs: the newline is the commit. On start a last line without its newline
(a page half-written when the process died) is cut off, and reading resumes from the last
committed cursor. Commands on stdin, one per line:

    page    read the next page, commit it, print `ok N` (N changes in it)
    half    read the next page, write half of its line and fsync, print `half`, then wait
            for stdin to close: the parent SIGKILLs it there, mid-apply
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from api.resources import job
from store import url as store_url


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def committed_cursor(log: Path) -> str:
    """The cursor after the last committed line, cutting off a half-written one."""
    raw = log.read_bytes()
    cut = raw.rfind(b"\n") + 1
    if cut != len(raw):
        with log.open("r+b") as f:
            f.truncate(cut)
            os.fsync(f.fileno())
    last = raw[:cut].splitlines()[-1]
    return str(json.loads(last)["cursor"])


def _append(log: Path, data: bytes) -> None:
    with log.open("ab") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


async def main(url: str, log: Path, limit: int, *, first_run: bool) -> None:
    store = await store_url.open_store(url)
    if first_run:
        head = await store.feed_head([job.Job])
        _append(log, (json.dumps({"cursor": head}) + "\n").encode())
        _say("head")
    cursor = committed_cursor(log)
    loop = asyncio.get_running_loop()
    while True:
        command = (await loop.run_in_executor(None, sys.stdin.readline)).strip()
        if not command:
            break
        page = await store.changes(cursor, limit=limit)
        doc: dict[str, Any] = {
            "cursor": page.cursor,
            "changes": [
                [c.kind, c.name, c.resource_version, c.record is None] for c in page.changes
            ],
        }
        line = (json.dumps(doc) + "\n").encode()
        if command == "half":
            _append(log, line[: len(line) // 2])
            _say("half")
            await loop.run_in_executor(None, sys.stdin.read)  # killed while waiting here
            break
        _append(log, line)
        cursor = page.cursor
        _say(f"ok {len(page.changes)}")
    await store.close()


if __name__ == "__main__":
    log_path = Path(sys.argv[2])
    asyncio.run(main(sys.argv[1], log_path, int(sys.argv[3]), first_run=not log_path.exists()))
