"""moto's server, with its requests applied one at a time.

moto's DynamoDB backend is not safe under concurrent requests: TransactWriteItems
deep-copies every table it touches as a backup and, when a condition fails, restores that
copy, wiping out whatever other threads wrote in between (seen here as a PNode whose
capacity charge vanished while its allocation stayed, and as a PNode briefly missing).
Real DynamoDB applies each request atomically, so serializing requests in the server makes
moto behave like the service our races and multi-replica tests are about, while clients
still talk HTTP over real sockets with keep-alive and concurrency on their side.

A failed TransactWriteItems has a second flaw there: moto puts back its copy of each table,
whose stream shard is a copy too, so the live shard keeps the records of the writes it
undid and every shard iterator already handed out keeps reading that discarded shard,
missing all later writes. `streams_follow_rollbacks` keeps the live shard with the restored
table and cuts the undone records off it, so, as in DynamoDB, a stream carries only
committed writes and iterators keep working.

That backup is also what made a long soak degrade: `copy.deepcopy` of a table copies its
stream shard, every record the table ever streamed, once per item of every transaction (a
4-item transaction took 7 ms with an empty stream and 2.1 s after 8,000 streamed writes,
measured). moto never trims a shard, so a 15-minute chaos soak slowed to store stalls, late
lease writes and leases held open through them. The shard is therefore not copied at all:
the backup shares the live one, and a rollback cuts the undone records off it as above.

Run as a script: `python serial_moto.py -H 127.0.0.1 -p PORT`.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from typing import Any

from moto.dynamodb.models import DynamoDBBackend
from moto.dynamodb.models.table import StreamShard
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import run_simple


def serialized(app: Callable[..., Iterable[bytes]]) -> Callable[..., list[bytes]]:
    lock = threading.Lock()

    def handle(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        with lock:
            # Drain the body inside the lock: a lazy iterable could run backend code later.
            return list(app(environ, start_response))

    return handle


def _shared(shard: StreamShard, memo: dict[int, Any]) -> StreamShard:
    """A table's deep copy shares its stream shard (see the module's docstring)."""
    return shard


def streams_follow_rollbacks() -> None:
    original = DynamoDBBackend.transact_write_items
    StreamShard.__deepcopy__ = _shared  # type: ignore[attr-defined]

    def transact_write_items(self: DynamoDBBackend, transact_items: list[dict[str, Any]]) -> None:
        touched = {op.get("TableName") for item in transact_items for op in item.values()}
        shards = {
            name: (table.stream_shard, len(table.stream_shard.items))
            for name in touched
            if (table := self.tables.get(name)) is not None and table.stream_shard is not None
        }
        try:
            original(self, transact_items)
        except Exception:
            for name, (shard, length) in shards.items():
                restored = self.tables.get(name)
                if restored is not None:
                    del shard.items[length:]
                    restored.stream_shard = shard
                    shard.table = restored
            raise

    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-H", "--host", default="127.0.0.1")
    parser.add_argument("-p", "--port", type=int, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    streams_follow_rollbacks()
    app = DomainDispatcherApplication(create_backend_app)
    run_simple(
        args.host,
        args.port,
        serialized(app),
        threaded=True,
        request_handler=MotoRequestHandler,
    )


if __name__ == "__main__":
    main()
