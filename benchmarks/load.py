"""A light gRPC load generator: pre-serialized requests over raw byte-level stubs.

The same code drives the orchestrator and the echo baseline, so whatever the client costs
(and on a 2-core machine it costs: it shares the cores with the server) is in both figures
and cancels out of their ratio. Requests are serialized once up front and answers are left
as bytes (a sample is parsed by the caller to check they are real answers).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import grpc
from grpc import aio

Metadata = tuple[tuple[str, str], ...]


def channel(
    address: str,
    credentials: grpc.ChannelCredentials | None,
    *,
    options: Sequence[tuple[str, Any]] = (),
) -> aio.Channel:
    """A TLS channel when given `credentials`, a plaintext one otherwise."""
    if credentials is None:
        return aio.insecure_channel(address, options=options)
    return aio.secure_channel(address, credentials, options=options)


@dataclass(frozen=True, slots=True)
class Call:
    body: bytes
    metadata: Metadata = ()


@dataclass
class Outcome:
    completed: int
    failed: int
    seconds: float
    #: Completions per 1-second window (the spread of a closed-loop run).
    per_second: list[float]
    latencies: list[float]
    sample: bytes
    first_error: str = ""
    #: CPU seconds this (client) process used meanwhile, all its threads: near `seconds`
    #: means the client had a whole core busy and may be what limits the rate.
    client_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.completed / self.seconds if self.seconds else 0.0

    @property
    def client_share(self) -> float:
        """The client's CPU as a share of one core over the run."""
        return self.client_cpu / self.seconds if self.seconds else 0.0


class Client:
    def __init__(
        self,
        address: str,
        method: str,
        *,
        channels: int = 4,
        credentials: grpc.ChannelCredentials | None = None,
    ) -> None:
        """`credentials`: TLS (`grpc.ssl_channel_credentials`); plaintext without."""
        # Distinct channel arguments: otherwise grpc shares one subchannel between them.
        self._channels = [
            channel(address, credentials, options=[("bench.channel", i)]) for i in range(channels)
        ]
        self._calls = [ch.unary_unary(method, None, None) for ch in self._channels]

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close(None)

    async def closed_loop(
        self, calls: Sequence[Call], *, concurrency: int, seconds: float
    ) -> Outcome:
        """`concurrency` callers, each sending its next call as soon as the last answered."""
        stop_at = time.perf_counter() + seconds
        source = itertools.cycle(calls)
        windows: dict[int, int] = {}
        latencies: list[float] = []
        failed = 0
        errors: list[str] = []
        sample = b""
        started, cpu_started = time.perf_counter(), time.process_time()

        async def caller(index: int) -> None:
            nonlocal failed, sample
            stub = self._calls[index % len(self._calls)]
            while (now := time.perf_counter()) < stop_at:
                call = next(source)
                try:
                    reply = await stub(call.body, metadata=call.metadata, timeout=10)
                except grpc.RpcError as exc:
                    failed += 1
                    errors.append(str(exc))
                    continue
                done = time.perf_counter()
                latencies.append(done - now)
                second = int(done - started)
                windows[second] = windows.get(second, 0) + 1
                sample = reply

        await asyncio.gather(*(caller(i) for i in range(concurrency)))
        elapsed = time.perf_counter() - started
        full = [float(windows.get(s, 0)) for s in range(int(seconds))]
        return Outcome(
            completed=len(latencies), failed=failed, seconds=elapsed,
            per_second=full or [len(latencies) / elapsed], latencies=latencies,
            sample=sample, first_error=errors[0] if errors else "",
            client_cpu=time.process_time() - cpu_started,
        )  # fmt: skip

    async def open_loop(self, calls: Sequence[Call], *, rate: float, seconds: float) -> Outcome:
        """Calls sent at a fixed `rate` whatever the answers do; latency counted from when
        each was due (so a client falling behind shows up as latency, not as fewer calls)."""
        total = max(1, int(rate * seconds))
        latencies: list[float] = []
        failed = 0
        errors: list[str] = []
        sample = b""
        tasks: list[asyncio.Task[None]] = []
        started = time.perf_counter()

        async def one(
            stub: aio.UnaryUnaryMultiCallable[bytes, bytes], call: Call, due: float
        ) -> None:
            nonlocal failed, sample
            try:
                reply = await stub(call.body, metadata=call.metadata, timeout=10)
            except grpc.RpcError as exc:
                failed += 1
                errors.append(str(exc))
                return
            latencies.append(time.perf_counter() - due)
            sample = reply

        for i in range(total):
            due = started + i / rate
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            stub = self._calls[i % len(self._calls)]
            tasks.append(asyncio.create_task(one(stub, calls[i % len(calls)], due)))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - started
        return Outcome(
            completed=len(latencies), failed=failed, seconds=elapsed,
            per_second=[len(latencies) / elapsed], latencies=latencies, sample=sample,
            first_error=errors[0] if errors else "",
        )  # fmt: skip
