"""A small HTTP/1.1 server on asyncio streams: enough for the dashboard, nothing more.

The dashboard needs GET of a few files and JSON documents, one POST (the login form) and
server-sent events. A web framework would be a heavy dependency for that; the standard
library's http.server blocks a thread per connection. So this module parses requests
itself, with limits on everything a client controls: the request line and headers
(`MAX_HEAD` bytes), the body (`MAX_BODY`), the time to send a request (`READ_TIMEOUT`),
and the number of open connections (`max_connections`; one more gets 503 and is closed).

Connections are kept alive between requests (a page load is a handful of them); a
handler may instead take the connection over for a stream (`Stream`), which ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import ssl
import urllib.parse
from collections.abc import Awaitable, Callable
from typing import Any

log = logging.getLogger("dcnr.dashboard")

MAX_HEAD = 16 * 1024
MAX_BODY = 8 * 1024
READ_TIMEOUT = 30.0
REASONS = {
    200: "OK",
    303: "See Other",
    304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized",
    404: "Not Found",
    405: "Method Not Allowed",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
#: On every answer: the pages load only their own scripts and styles (uPlot and cytoscape
#: set inline styles), are never framed, and never send the URL (which may carry the token
#: once) to anyone else.
SECURITY_HEADERS = (
    ("Content-Security-Policy",
     "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
     "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
)  # fmt: skip


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclasses.dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes = b""

    def cookie(self, name: str) -> str | None:
        for part in self.headers.get("cookie", "").split(";"):
            key, _, value = part.strip().partition("=")
            if key == name:
                return value
        return None

    def form(self) -> dict[str, str]:
        pairs = urllib.parse.parse_qsl(self.body.decode("utf-8", "replace"), max_num_fields=20)
        return dict(pairs)


@dataclasses.dataclass(slots=True)
class Response:
    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @classmethod
    def json(cls, value: Any, status: int = 200) -> Response:
        body = json.dumps(value, separators=(",", ":"), allow_nan=False).encode()
        return cls(status, body, "application/json", [("Cache-Control", "no-store")])

    @classmethod
    def error(cls, status: int, message: str) -> Response:
        return cls.json({"error": message, "status": status}, status)


class Stream:
    """What a handler returns to take the connection over: `run(send)` writes the body
    (server-sent events) until it returns or the client goes away; the connection ends."""

    def __init__(
        self,
        run: Callable[[Callable[[bytes], Awaitable[None]]], Awaitable[None]],
        *,
        content_type: str = "text/event-stream",
    ) -> None:
        self.run = run
        self.content_type = content_type


Handler = Callable[[Request], Awaitable[Response | Stream]]


def _head(status: int, headers: list[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
    lines += [f"{k}: {v}" for k, v in [*headers, *SECURITY_HEADERS]]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    """The next request, None when the client closed between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise BadRequest(400, "the request ended before its headers did") from None
        return None
    except asyncio.LimitOverrunError:
        raise BadRequest(431, f"request line and headers exceed {MAX_HEAD} bytes") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, f"malformed request line {lines[0][:80]!r}") from None
    if not version.startswith("HTTP/1."):
        raise BadRequest(400, f"unsupported protocol {version[:20]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        key, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, f"malformed header line {line[:80]!r}")
        headers[key.strip().lower()] = value.strip()
    if headers.get("transfer-encoding"):
        raise BadRequest(400, "transfer-encoding is not accepted: send content-length")
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "content-length: not a number") from None
    if length < 0 or length > MAX_BODY:
        raise BadRequest(413, f"content-length: {length} is over the limit of {MAX_BODY} bytes")
    body = await reader.readexactly(length) if length else b""
    parsed = urllib.parse.urlsplit(target)
    query = dict(urllib.parse.parse_qsl(parsed.query, max_num_fields=20))
    path = urllib.parse.unquote(parsed.path)
    if any(ord(c) < 0x20 or c == "\x7f" for c in path):
        raise BadRequest(400, "the path holds a control character")
    return Request(method.upper(), path, query, headers, body)


class Server:
    """`handler` answers each request; `start` binds, `stop` closes every connection."""

    def __init__(
        self,
        handler: Handler,
        *,
        ssl_context: ssl.SSLContext | None = None,
        max_connections: int = 256,
    ) -> None:
        self._handler = handler
        self._ssl = ssl_context
        self._max = max_connections
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0

    async def start(self, host: str, port: int) -> int:
        self._server = await asyncio.start_server(
            self._serve, host or None, port, ssl=self._ssl, limit=MAX_HEAD
        )
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        for task in list(self._connections):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            if len(self._connections) > self._max:
                await self._write(writer, Response.error(503, "too many open connections"), False)
                return
            await self._requests(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, ssl.SSLError):
            pass
        except asyncio.CancelledError:
            # Only `stop` cancels a connection. End the task normally: Python 3.11's
            # start_server callback asks a finished handler task for its exception(),
            # which raises (and is logged as an error) when the task ended cancelled.
            pass
        except Exception:
            log.exception("dashboard connection failed")
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _requests(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            try:
                async with asyncio.timeout(READ_TIMEOUT):
                    request = await _read_request(reader)
            except BadRequest as exc:
                await self._write(writer, Response.error(exc.status, str(exc)), False)
                return
            if request is None:
                return
            answer = await self._handler(request)
            keep = request.headers.get("connection", "").lower() != "close"
            if isinstance(answer, Stream):
                writer.write(
                    _head(
                        200,
                        [("Content-Type", answer.content_type), ("Cache-Control", "no-store"),
                         ("Connection", "close"), ("X-Accel-Buffering", "no")],
                    )
                )  # fmt: skip
                await writer.drain()

                async def send(chunk: bytes) -> None:
                    writer.write(chunk)
                    await writer.drain()

                await answer.run(send)
                return
            await self._write(writer, answer, keep, head_only=request.method == "HEAD")
            if not keep:
                return

    async def _write(
        self, writer: asyncio.StreamWriter, answer: Response, keep: bool, *, head_only: bool = False
    ) -> None:
        headers = [
            ("Content-Type", answer.content_type),
            ("Content-Length", str(len(answer.body))),
            ("Connection", "keep-alive" if keep else "close"),
            *answer.headers,
        ]
        writer.write(_head(answer.status, headers) + (b"" if head_only else answer.body))
        await writer.drain()
