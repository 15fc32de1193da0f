"""One Deliver stream (STREAMED DELIVERY in vnode.proto), the sending side: messages written
in order, each answered in order, so the n-th answer is the n-th message's. Agents send on
them to their peers and to the job's driver (`agent.peers`), the driver to the sources
(`controller.services.vnode_transport`).

The receiver answers a stream's messages in order (it handles them concurrently), so a
message that gets no answer holds back every later answer: a message's deadline that passes
(a peer SIGSTOPped, a
connection silently gone) therefore fails the whole stream, and every message still
unanswered on it fails with it, as unary calls that got no answer would. The stream is then
done; its owner opens a new one for the retries. Nothing is retried here.

At most `limit` messages are unanswered at once; a sender past it waits for an answer (within
its own deadline), so a slow receiver slows its senders instead of growing a queue.

Failures are `StreamFailed` with the status code the call ended with. CANCELLED (the peer's
server stopped under the stream, or this side gave up on it) becomes UNAVAILABLE: to the
message it means "no answer", which is retried; UNIMPLEMENTED means the peer does not serve
Deliver at all (an agent or orchestrator older than Deliver), and its owner falls back to
unary calls.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

import grpc
from grpc import aio

from api import signed
from api.dcnr.v1 import common_pb2, vnode_pb2

#: What `read` returns once the peer has answered everything (not in grpc's type stubs).
_EOF: Any = aio.EOF  # type: ignore[attr-defined]
#: Unanswered messages per stream.
DEFAULT_LIMIT = 64


class StreamFailed(Exception):
    """The stream as a whole ended; no answer to the message (it may or may not have been
    handled, as for a unary call that failed)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class Stream:
    """One open Deliver stream on `channel`; `header` goes with its first message."""

    def __init__(
        self,
        channel: aio.Channel,
        *,
        header: common_pb2.RequestHeader,
        limit: int = DEFAULT_LIMIT,
    ) -> None:
        if limit < 1:
            raise ValueError(f"limit: {limit} must be at least 1")
        self.channel = channel
        opened: Any = channel.stream_stream(
            signed.full_method(signed.DELIVER),
            request_serializer=vnode_pb2.DeliverRequest.SerializeToString,
            response_deserializer=vnode_pb2.DeliverResponse.FromString,
        )
        self._call: Any = opened()  # without requests: written one by one
        self._header = header
        self._slots = asyncio.Semaphore(limit)
        self._writing = asyncio.Lock()
        self._pending: collections.deque[tuple[int, asyncio.Future[vnode_pb2.DeliverResponse]]] = (
            collections.deque()
        )
        self._sequence = 0
        #: When the last message was sent (`time.monotonic`), for idle streams' closing.
        self.last_used = time.monotonic()
        self.failed: StreamFailed | None = None
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def unanswered(self) -> int:
        """Messages written and not answered yet."""
        return len(self._pending)

    async def send(
        self, signer: signed.Signer, name: str, body: bytes, *, seconds: float
    ) -> vnode_pb2.DeliverResponse:
        """Send `body` (a serialized request of method `name`, "Forward" or "Backward"),
        signed as its unary call would be, and return its answer; `StreamFailed` if the
        stream ends first or no answer comes within `seconds` (then the stream is
        failed for every message on it)."""
        if self.failed is not None:
            raise self.failed
        self.last_used = time.monotonic()
        try:
            async with asyncio.timeout(seconds):
                async with self._slots:
                    answer = await self._write(signer, name, body)
                    return await answer
        except TimeoutError:
            self.fail(StreamFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "no answer in time"))
            raise self.failed or StreamFailed(grpc.StatusCode.DEADLINE_EXCEEDED, "") from None

    async def _write(
        self, signer: signed.Signer, name: str, body: bytes
    ) -> asyncio.Future[vnode_pb2.DeliverResponse]:
        async with self._writing:  # the order written is the order of _pending
            if self.failed is not None:
                raise self.failed
            self._sequence += 1
            request = signed.deliver_request(signer, name, body, self._sequence)
            if self._sequence == 1:
                request.header.CopyFrom(self._header)
            answer: asyncio.Future[vnode_pb2.DeliverResponse] = (
                asyncio.get_running_loop().create_future()
            )
            self._pending.append((self._sequence, answer))
            try:
                await self._call.write(request)
            except (aio.AioRpcError, aio.UsageError, asyncio.InvalidStateError) as exc:
                self.fail(await self._ended(exc))
                raise self.failed or StreamFailed(grpc.StatusCode.UNAVAILABLE, "") from None
            return answer

    async def _read(self) -> None:
        try:
            while True:
                answer = await self._call.read()
                if answer is _EOF:
                    self.fail(await self._ended(None))
                    return
                if not self._pending:
                    self.fail(StreamFailed(grpc.StatusCode.INTERNAL, "an answer to no message"))
                    return
                sequence, waiting = self._pending.popleft()
                if answer.sequence != sequence:
                    self.fail(
                        StreamFailed(
                            grpc.StatusCode.INTERNAL,
                            f"sequence: answer {answer.sequence} to message {sequence}",
                        )
                    )
                    return
                if not waiting.done():
                    waiting.set_result(answer)
        except aio.AioRpcError as exc:
            self.fail(await self._ended(exc))
        except asyncio.CancelledError:
            self.fail(StreamFailed(grpc.StatusCode.UNAVAILABLE, "the stream was closed"))
            raise

    async def _ended(self, exc: BaseException | None) -> StreamFailed:
        """What the call ended with, as a StreamFailed (CANCELLED: UNAVAILABLE)."""
        if isinstance(exc, aio.AioRpcError):
            code, details = exc.code(), exc.details() or ""
        else:
            try:
                code, details = await self._call.code(), await self._call.details()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # the call is gone: no status to read
                code, details = grpc.StatusCode.UNAVAILABLE, str(error)
        if code in (grpc.StatusCode.OK, grpc.StatusCode.CANCELLED):
            code = grpc.StatusCode.UNAVAILABLE
            details = f"the stream ended under the message ({details or 'no status'})"
        return StreamFailed(code, f"Deliver stream: {details}")

    def fail(self, failure: StreamFailed) -> None:
        """End the stream: every unanswered message fails with `failure`."""
        if self.failed is None:
            self.failed = failure
            self._call.cancel()
        while self._pending:
            _sequence, waiting = self._pending.popleft()
            if not waiting.done():
                waiting.set_exception(self.failed)
                waiting.exception()  # retrieved: a sender that timed out never awaits it

    async def close(self) -> None:
        self.fail(StreamFailed(grpc.StatusCode.UNAVAILABLE, "the stream was closed"))
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)
