"""The per-hop figure (issue 17): one VNode-to-VNode delivery against one bare grpc.aio echo
round trip, measured alternately in the same run by the same client.

The receiver is the agent's own data plane (`agent.dataplane.DataPlane`) in a subprocess
(`python -m benchmarks.hop serve DIR`), hosting one VNode, act1 (relu, parent fc1, child
fc2, as in the digits network), behind its mutual-TLS listener (`agent.keys.Keeper`). The
client sends, one at a time, the Forward fc1 would send it: a 256 x 32 float32 activation
(digits at batch 256), signed with the sending PNode's identity over a mutual-TLS channel,
as `agent.peers` sends. The receiver does everything an agent does with it: sender
certificate, attribution against resolution (a dictionary here, as the agent's resolution
cache answers it), parse, tensor decode and CRC, the result check, the VNode's lock, the
relu, and the encode of its output for fc2 (whose send is dropped: the hop ends at act1).
Inference positions are used, so nothing waits for a backward pass.

The delivery is measured both ways an agent sends: on a Deliver stream (STREAMED DELIVERY in
vnode.proto; `api.streams.Stream`, as `agent.peers` sends by default: one message, then its
answer, on one open stream) and as a unary Forward call (`dcnr-agent --no-stream-delivery`,
and how agents sent before Deliver). Each message has a request id of its own, so none is a
duplicate the receiver could answer without computing.

The baselines are `benchmarks.echo_server` (plaintext, raw bytes, no parsing) answering the
same request bytes, with a reply of the ForwardResponse's size: as a unary call (the issue's
"echo round trip") and on one bidirectional stream. The serve subprocess makes
its own identity CA and writes the CA, and the sender's certificate and key, into DIR; it
prints `hop serving on HOST:PORT`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from grpc import aio

from agent import blobs, dataplane, keys, peers
from api import identity, signed, streams, tensors
from api import tls as api_tls
from api.dcnr.v1 import common_pb2, pnode_pb2, resolve_pb2, vnode_pb2
from benchmarks import echo_server, harness
from tests.support import procs

SENDER, RECEIVER = "sender", "receiver"
NETWORK = "digits"
ROWS, UNITS = 256, 32
FORWARD = signed.full_method("Forward")
TARGET_RATIO = 1.5


class _Resolution:
    """What the receiver's data plane needs of `agent.peers.Peers`: fc1 is hosted by
    SENDER at epoch 1; sends (act1's output to fc2) are dropped."""

    async def send_forward(
        self, request: vnode_pb2.ForwardRequest, array: np.ndarray | None = None
    ) -> bool:
        if not request.HasField("tensor"):  # what Peers does before a remote send
            request.tensor.CopyFrom(tensors.empty() if array is None else tensors.encode(array))
        return True

    async def send_backward(
        self, request: vnode_pb2.BackwardRequest, array: np.ndarray | None = None
    ) -> bool:
        return await self.send_forward(vnode_pb2.ForwardRequest(), array)

    async def resolve(
        self, network: str, vnode: str, replica: int, *, min_epoch: int = 0
    ) -> resolve_pb2.Endpoint | None:
        if vnode != "fc1":
            return None
        return resolve_pb2.Endpoint(pnode_id=SENDER, address="", replica=0, epoch=1)


async def _serve(directory: Path) -> None:
    now = dt.datetime.now(dt.UTC)
    authority = identity.Authority.create(now)
    keeper = keys.Keeper()
    keeper.accept(
        authority.issue_pnode(keeper.csr(RECEIVER), RECEIVER, now, dt.timedelta(hours=2)),
        authority.certificate_pem,
    )
    sender_key = identity.generate_key()
    (directory / "ca.pem").write_bytes(authority.certificate_pem)
    (directory / "sender.pem").write_bytes(
        authority.issue_pnode(
            identity.csr_pem(sender_key, SENDER), SENDER, now, dt.timedelta(hours=2)
        )
    )
    (directory / "sender-key.pem").write_bytes(identity.key_pem(sender_key))
    plane = dataplane.DataPlane(
        sender=_Resolution(),
        keeper=keeper,
        blob_store=blobs.BlobStore(workdir=directory),
        kind_factory=dataplane.runtime_kinds(workdir=directory, cache_dir=None, datasets={}),
    )
    plane.reconcile([
        pnode_pb2.Assignment(
            network=NETWORK, vnode="act1", replica=0, epoch=1, kind="relu", inputs=["fc1"],
            outputs=["fc2"], allocation=f"{NETWORK}.act1.0",
            neighbour_kinds={"fc1": "dense", "fc2": "dense"},
            neighbour_params_json={"fc1": b'{"units": 32}', "fc2": b'{"units": 10}'},
        )
    ])  # fmt: skip
    server = aio.server()
    plane.add_to_server(server)
    port = server.add_secure_port("127.0.0.1:0", keeper.server_credentials())
    await echo_server.serve_until_signalled(server, f"hop serving on 127.0.0.1:{port}")
    await plane.close()


@contextlib.contextmanager
def _process(argv: list[str], cwd: Path) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        cwd=cwd,
    )  # fmt: skip
    try:
        yield procs.read_line(proc).rsplit(" ", 1)[1].strip()
    finally:
        procs.stop(proc)


def _request(index: int, tensor: common_pb2.Tensor, prefix: str = "r") -> bytes:
    return vnode_pb2.ForwardRequest(
        job="hop", request_id=f"{prefix}-{index}", network=NETWORK, sender_vnode="fc1",
        sender_replica=0, sender_epoch=1, target_vnode="act1", target_replica=0,
        target_epoch=1, tensor=tensor, attempt=1,
    ).SerializeToString()  # fmt: skip


async def _round_trips(call: Any, bodies: list[bytes], signer: signed.Signer | None) -> float:
    """Median seconds of one sequential call, each body once."""
    times = []
    for body in bodies:
        metadata = signer.metadata(FORWARD, body) if signer is not None else ()
        started = time.perf_counter()
        await call(body, metadata=metadata, timeout=10)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def _stream_trips(channel: aio.Channel, bodies: list[bytes]) -> float:
    """Median seconds of one message and its answer on one bidirectional stream."""
    open_stream: Any = channel.stream_stream("/bench.Echo/ForwardStream", None, None)
    call = open_stream()  # without requests: written one by one
    times = []
    try:
        for body in bodies:
            started = time.perf_counter()
            await call.write(body)
            await call.read()
            times.append(time.perf_counter() - started)
        await call.done_writing()
    finally:
        call.cancel()
    return statistics.median(times)


async def _delivery_stream_trips(
    stream: streams.Stream, signer: signed.Signer, bodies: list[bytes]
) -> float:
    """Median seconds of one delivery and its answer on an open Deliver stream."""
    times = []
    for body in bodies:
        started = time.perf_counter()
        answer = await stream.send(signer, "Forward", body, seconds=10)
        times.append(time.perf_counter() - started)
        if answer.code:  # a refused hop measures nothing
            raise AssertionError(f"the hop was refused: {answer}")
    return statistics.median(times)


async def measure(
    ctx: harness.Context, *, rounds: int, calls: int
) -> list[harness.Comparison]:
    """The per-hop comparisons: `rounds` alternating rounds of `calls` sequential calls of
    each of the four: delivery on a Deliver stream, delivery as a unary call, echo as a
    unary call, echo on a stream."""
    directory = ctx.workdir / "hop"
    directory.mkdir(parents=True, exist_ok=True)
    tensor = tensors.encode(
        np.random.default_rng(0).standard_normal((ROWS, UNITS)).astype(np.float32)
    )
    reply = len(vnode_pb2.ForwardResponse(duplicate=False).SerializeToString())
    argv_echo = ["-m", "benchmarks.echo_server", "--reply", f"Forward={reply}"]
    with (
        _process(["-m", "benchmarks.hop", "serve", str(directory)], harness.REPO) as hop_at,
        _process(argv_echo, harness.REPO) as echo_at,
    ):
        signer = signed.Signer()
        signer.update(
            identity.load_key((directory / "sender-key.pem").read_bytes()),
            (directory / "sender.pem").read_bytes(),
        )
        hop_channel = aio.secure_channel(
            hop_at,
            signer.client_credentials((directory / "ca.pem").read_bytes()),
            [(api_tls.TARGET_NAME_OVERRIDE, identity.dns_name("pnode", RECEIVER))],
        )
        echo_channel = aio.insecure_channel(echo_at)
        try:
            hop = hop_channel.unary_unary(FORWARD, None, vnode_pb2.ForwardResponse.FromString)
            echo = echo_channel.unary_unary("/bench.Echo/Forward", None, None)
            deliver = streams.Stream(hop_channel, header=peers.header())
            warm = [_request(-i - 1, tensor) for i in range(50)]
            await _round_trips(hop, warm, signer)
            await _delivery_stream_trips(deliver, signer, [
                _request(-i - 1, tensor, "s") for i in range(50)
            ])  # fmt: skip
            await _round_trips(echo, warm, None)
            await _stream_trips(echo_channel, warm)
            on_stream: list[float] = []
            unary: list[float] = []
            baseline: list[float] = []
            echo_streamed: list[float] = []
            for r in range(rounds):
                bodies = [_request(r * calls + i, tensor) for i in range(calls)]
                stream_bodies = [_request(r * calls + i, tensor, "s") for i in range(calls)]
                on_stream.append(
                    await _delivery_stream_trips(deliver, signer, stream_bodies) * 1e6
                )
                unary.append(await _round_trips(hop, bodies, signer) * 1e6)
                baseline.append(await _round_trips(echo, bodies, None) * 1e6)
                echo_streamed.append(await _stream_trips(echo_channel, bodies) * 1e6)
            await deliver.close()
        finally:
            await hop_channel.close(None)
            await echo_channel.close(None)
    measured, base = harness.Stats.of(on_stream), harness.Stats.of(baseline)
    echo_stream = harness.Stats.of(echo_streamed)
    ratio = measured.p50 / base.p50

    def paired(a: list[float], b: list[float]) -> float:
        return statistics.median(x / y for x, y in zip(a, b, strict=True))

    what = f"{ROWS}x{UNITS} float32, {len(_request(0, tensor)):,} bytes per request"
    how = (
        f"{rounds} alternating rounds of {calls} sequential messages of each of four (delivery "
        "on a Deliver stream, delivery as a unary call, unary echo, echo on a stream); the "
        "delivery is mutual TLS + signed + attributed + checked + computed (relu) by a real "
        "agent.dataplane.DataPlane in its own process"
    )
    echo_name = (
        "one bare grpc.aio echo round trip (benchmarks.echo_server, plaintext), same request "
        "bytes"
    )
    return [
        harness.Comparison(
            name=f"one VNode-to-VNode delivery on a Deliver stream (fc1 -> act1, {what})",
            unit="µs per message (median of each round)",
            measured=measured,
            baseline_name=echo_name,
            baseline=base,
            higher_is_better=False,
            targets=(
                harness.Target(
                    f"<= {TARGET_RATIO}x an echo round trip",
                    None if ctx.smoke else ratio <= TARGET_RATIO,
                ),
            ),
            note=f"{how}; median of the per-round ratios {paired(on_stream, baseline):.2f}",
        ),
        harness.Comparison(
            name="one VNode-to-VNode delivery on a Deliver stream vs echo on a stream",
            unit="µs per message (median of each round)",
            measured=measured,
            baseline_name="the same echo on one bidirectional stream (benchmarks.echo_server "
            "METHODStream): what a stream itself costs, without TLS, signature or handler",
            baseline=echo_stream,
            higher_is_better=False,
            note=f"median of the per-round ratios {paired(on_stream, echo_streamed):.2f}",
        ),
        harness.Comparison(
            name="one VNode-to-VNode delivery as a unary Forward call (--no-stream-delivery)",
            unit="µs per call (median of each round)",
            measured=harness.Stats.of(unary),
            baseline_name=echo_name,
            baseline=base,
            higher_is_better=False,
            note=f"the figure before Deliver; median of the per-round ratios "
            f"{paired(unary, baseline):.2f}; the stream path is "
            f"{paired(on_stream, unary):.2f}x of it (median of the per-round ratios)",
        ),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.hop")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument("directory", type=Path, help="where to write the CA and sender identity")
    args = parser.parse_args()
    asyncio.run(_serve(args.directory))


if __name__ == "__main__":
    main()
