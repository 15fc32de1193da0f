"""The ingest scenario's baseline: a bare grpc.aio server that answers every call with a
fixed payload of the size the orchestrator's real answer has, doing nothing else.

`python -m benchmarks.echo_server --reply METHOD=BYTES ...` prints
`echo serving on HOST:PORT` and serves until SIGTERM; each METHOD is also served as
METHODStream, one bidirectional stream answering every message (what a stream per edge
would cost). Handlers take and return raw bytes
(no message classes), so the server's own cost is the floor of what grpc.aio can do.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

import grpc
from grpc import aio

SERVICE = "bench.Echo"


def _handler(reply: bytes) -> grpc.RpcMethodHandler[bytes, bytes]:
    async def answer(request: bytes, context: aio.ServicerContext[Any, Any]) -> bytes:
        return reply

    return grpc.unary_unary_rpc_method_handler(answer)


def _stream_handler(reply: bytes) -> grpc.RpcMethodHandler[bytes, bytes]:
    """METHOD + "Stream": one bidirectional stream answering each message as it comes."""

    async def answer(
        requests: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for _request in requests:
            yield reply

    return grpc.stream_stream_rpc_method_handler(answer)


async def serve(replies: dict[str, int]) -> None:
    server = aio.server()
    handlers = {method: _handler(b"\x00" * size) for method, size in replies.items()}
    handlers.update(
        {f"{method}Stream": _stream_handler(b"\x00" * size) for method, size in replies.items()}
    )
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    await serve_until_signalled(server, f"echo serving on 127.0.0.1:{port}")


def _reply(text: str) -> tuple[str, int]:
    method, _, size = text.partition("=")
    if not method or not size.isdigit():
        raise argparse.ArgumentTypeError(f"--reply {text!r}: expected METHOD=BYTES, e.g. Ping=64")
    return method, int(size)


async def serve_until_signalled(server: aio.Server, banner: str) -> None:
    """Start `server`, print `banner` (the parent reads the port from it), and serve until
    SIGTERM or SIGINT: the benchmark servers' shared main loop."""
    await server.start()
    print(banner, flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.echo_server")
    parser.add_argument("--reply", type=_reply, action="append", required=True)
    args = parser.parse_args()
    asyncio.run(serve(dict(args.reply)))


if __name__ == "__main__":
    main()
