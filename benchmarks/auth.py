"""Scenario: what authentication costs on the hot paths (issue 11), as throughput with it
over throughput without it, measured in the same run by the same client.

Control plane (heartbeat, resolve). Two `dcnr-orchestrator serve` processes run side by
side with the same flags as the `ingest` scenario (admission limits off, 30 s lease), the
same number of registered PNodes and the same placed chain network:

- without: `--insecure` and no tokens: plaintext, resolution open to anyone;
- with: TLS (`--tls-cert/--tls-key`, a throwaway CA, P-256) and `--admin-token-file`, which
  turns on authorization: each `Resolve` must carry the credential of a PNode hosting a
  VNode of the network (`ResolveGate`), as agents send it.

Both get the same pre-serialized requests with the same `authorization` metadata (each
heartbeat its PNode's credential, which every heartbeat needs in both modes; each resolve
the credential of a PNode of the network, which only the second server checks), sent
closed-loop by 64 callers over 4 channels (`benchmarks.load`). The two servers are measured
alternately, several rounds, so drift on a shared machine hits both. What the ratio holds:
TLS record encryption and decryption on both ends, the handshake (once per channel, before
the measured window), and the authorization check of resolution.

Data plane (forward, backward). Agents sign every VNodeService request and verify every one
they receive (docs/security.md, "Identity"). Starting agents would measure the whole step;
instead, two small VNodeService servers (`python -m benchmarks.auth serve`, each its own
process, built on `api.signed.raw_handler` as agents are) do what an agent does with a
received request apart from the VNode's compute: parse it and decode its tensor. One
first verifies the signature and certificate (`api.identity.Verifier`, chain cached by
fingerprint) and checks the signer is the expected sending PNode (a dictionary lookup, as the
agent's resolution cache answers it); the other does not. The client sends the same
requests to both; for the verifying one it signs each request before sending it
(`api.signed.Signer`, one ECDSA P-256 signature over the serialized bytes). The ratio is
messages/s with signing and verification over messages/s without, so it holds the sign and
verify cost against gRPC's per-message cost and the tensor's decode. The data plane is
plaintext in both (it has no TLS yet).

    python -m benchmarks.auth serve [--verify CA_PEM --sender NAME]    one VNodeService
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import itertools
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import message as pb_message
from grpc import aio

from api import identity, signed, tensors
from api.dcnr.v1 import pnode_pb2, resolve_pb2, vnode_pb2
from benchmarks import harness, ingest, load
from controller import local_ca
from tests.support import procs

NAME = "auth"
ADMIN = "bench-admin-token"
CONCURRENCY = 64
DATA_CONCURRENCY = 8
TARGET_SHARE = 0.85
SENDER = "sender-pnode"
FORWARD = signed.full_method("Forward")
BACKWARD = signed.full_method("Backward")


@dataclass(frozen=True, slots=True)
class Size:
    pnodes: int
    vnodes: int
    seconds: float
    rounds: int
    #: Rows of the tensors sent on the data plane (the batch), each of 32 float64 columns
    #: (the digits example's hidden layer).
    batches: tuple[int, ...]


FULL = Size(pnodes=500, vnodes=20, seconds=2.0, rounds=10, batches=(64, 256))
SMOKE = Size(pnodes=10, vnodes=3, seconds=0.5, rounds=1, batches=(64,))


async def run(ctx: harness.Context) -> harness.Report:
    size = SMOKE if ctx.smoke else FULL
    report = harness.Report(
        NAME,
        "Authentication: throughput of the hot paths with it vs without it",
        {
            "pnodes": size.pnodes,
            "network_vnodes": size.vnodes,
            "control_plane_concurrency": CONCURRENCY,
            "data_plane_concurrency": DATA_CONCURRENCY,
            "seconds_per_measurement": size.seconds,
            "rounds": size.rounds,
            "data_plane_batches": list(size.batches),
            "orchestrator_flags": list(ingest.FLAGS),
            "with": "serve --tls-cert --tls-key --admin-token-file; signed data-plane requests",
            "without": "serve --insecure, no tokens; unsigned data-plane requests",
        },
    )
    await _control_plane(ctx, size, report)
    await _data_plane(ctx, size, report)
    return report


# -- control plane ---------------------------------------------------------------------------


@dataclass
class _Served:
    label: str
    address: str
    credentials: grpc.ChannelCredentials | None
    beats: list[load.Call]
    resolves: list[load.Call]


async def _prepare(
    address: str, size: Size, *, credentials: grpc.ChannelCredentials | None, token: str
) -> tuple[list[load.Call], list[load.Call], list[load.Call]]:
    """Register the PNodes and place the network: (heartbeats, resolves, the hosts' beats)."""
    names, beats = await ingest._register(address, size.pnodes, credentials=credentials)
    bare, hosts = await ingest._network(address, size.vnodes, credentials=credentials, token=token)
    by_name = dict(zip(names, beats, strict=True))
    host_beats = [by_name[h] for h in sorted(hosts)]
    # Every resolve carries the credential of a PNode hosting part of the network.
    resolves = [
        load.Call(call.body, host_beats[i % len(host_beats)].metadata)
        for i, call in enumerate(bare)
    ]
    return beats, resolves, host_beats


async def _control_plane(ctx: harness.Context, size: Size, report: harness.Report) -> None:
    paths = local_ca.ensure(ctx.workdir / "tls")
    tokens = ctx.workdir / "admin-tokens"
    tokens.write_text(f"{ADMIN}\n")
    secure_flags = (
        *ingest.FLAGS,
        "--tls-cert", str(paths.cert), "--tls-key", str(paths.key),
        "--admin-token-file", str(tokens),
    )  # fmt: skip
    tls = grpc.ssl_channel_credentials(paths.ca.read_bytes())
    with (
        procs.orchestrator(
            f"sqlite:///{ctx.workdir / 'plain.db'}", extra=ingest.FLAGS,
            log=ctx.workdir / "plain.log", log_level="warning",
        ) as plain,
        procs.orchestrator(
            f"sqlite:///{ctx.workdir / 'secure.db'}", extra=secure_flags,
            log=ctx.workdir / "secure.log", log_level="warning",
        ) as secure,
    ):  # fmt: skip
        sides: list[_Served] = []
        keepers: list[asyncio.Task[None]] = []
        for label, served, credentials, token in (
            ("without", plain, None, ""),
            ("with", secure, tls, ADMIN),
        ):
            ctx.log(f"{NAME}: {label} authentication: registering {size.pnodes} PNodes")
            beats, resolves, hosts = await _prepare(
                served.address, size, credentials=credentials, token=token
            )
            sides.append(_Served(label, served.address, credentials, beats, resolves))
            keepers.append(
                asyncio.create_task(
                    ingest._keep_alive(served.address, hosts, credentials=credentials)
                )
            )
        try:
            outcomes = await _measure_control(ctx, size, sides)
        finally:
            for keeper in keepers:
                keeper.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await keeper
    for method, what in ((ingest.HEARTBEAT, "heartbeat"), (ingest.RESOLVE, "resolve")):
        without, with_auth = outcomes[("without", method)], outcomes[("with", method)]
        _compare(
            report,
            ctx,
            name=f"{what}, closed loop, TLS + credential check",
            unit="calls/s",
            measured=with_auth,
            baseline=without,
            baseline_name="--insecure, no tokens, same client, same run",
        )


async def _measure_control(
    ctx: harness.Context, size: Size, sides: list[_Served]
) -> dict[tuple[str, str], list[float]]:
    clients = {
        (side.label, method): load.Client(side.address, method, credentials=side.credentials)
        for side in sides
        for method in (ingest.HEARTBEAT, ingest.RESOLVE)
    }
    calls = {
        (side.label, method): side.beats if method == ingest.HEARTBEAT else side.resolves
        for side in sides
        for method in (ingest.HEARTBEAT, ingest.RESOLVE)
    }
    samples: dict[tuple[str, str], list[float]] = {key: [] for key in clients}
    try:
        for key, client in clients.items():  # unmeasured warm-up, and a check of the answers
            probe = await client.closed_loop(calls[key][:1], concurrency=1, seconds=0.2)
            ingest._check(probe, f"{key[0]} {key[1]}")
            _check_answer(key[1], probe.sample)
            await client.closed_loop(calls[key], concurrency=CONCURRENCY, seconds=0.5)
        for round_ in range(size.rounds):
            order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
            for key in order:
                outcome = await clients[key].closed_loop(
                    calls[key], concurrency=CONCURRENCY, seconds=size.seconds
                )
                ingest._check(outcome, f"{key[0]} {key[1]}")
                samples[key].append(outcome.rate)
                ctx.log(f"{NAME}: round {round_ + 1}: {key[0]} {key[1]}: {outcome.rate:,.0f}/s")
    finally:
        for client in clients.values():
            await client.close()
    return samples


def _check_answer(method: str, sample: bytes) -> None:
    if method == ingest.HEARTBEAT:
        reply = pnode_pb2.HeartbeatResponse.FromString(sample)
        assert reply.lease_state == pnode_pb2.LEASE_STATE_ACTIVE, reply
    else:
        answer = resolve_pb2.ResolveResponse.FromString(sample)
        assert answer.endpoints.endpoints, f"resolution answered no endpoint: {answer}"


def _compare(
    report: harness.Report,
    ctx: harness.Context,
    *,
    name: str,
    unit: str,
    measured: list[float],
    baseline: list[float],
    baseline_name: str,
    detail: str = "",
) -> None:
    """One figure; `measured[i]` and `baseline[i]` were measured back to back (round i), so
    the note also gives the median of the per-round ratios, which drift on a shared machine
    moves less than it moves either side."""
    with_stats, without_stats = harness.Stats.of(measured), harness.Stats.of(baseline)
    share = with_stats.p50 / without_stats.p50 if without_stats.p50 else 0.0
    paired = statistics.median(m / b for m, b in zip(measured, baseline, strict=True) if b)
    report.compare(
        harness.Comparison(
            name=name,
            unit=unit,
            measured=with_stats,
            baseline_name=baseline_name,
            baseline=without_stats,
            targets=(
                harness.Target(
                    f"<= {1 - TARGET_SHARE:.0%} throughput loss",
                    None if ctx.smoke else share >= TARGET_SHARE,
                ),
            ),
            note=f"{1 - share:.1%} loss at the medians; median of the {len(measured)} per-round "
            f"ratios {paired:.2f}{'; ' + detail if detail else ''}",
        )
    )


# -- data plane ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Message:
    method: str
    body: bytes


def _messages(rows: int, count: int) -> dict[str, list[_Message]]:
    """`count` distinct Forward and Backward requests (distinct steps) of `rows` x 32 float64,
    from the sending slot (fc1 -> act1 forward, act1 -> fc1 backward)."""
    rng = np.random.default_rng(0)
    out: dict[str, list[_Message]] = {FORWARD: [], BACKWARD: []}
    for step in range(count):
        tensor = tensors.encode(rng.standard_normal((rows, 32)))
        forward = vnode_pb2.ForwardRequest(
            job="bench", step=step, network="digits", sender_vnode="fc1", sender_replica=0,
            sender_epoch=1, target_vnode="act1", target_replica=0, target_epoch=1,
            tensor=tensor, attempt=1,
        )  # fmt: skip
        backward = vnode_pb2.BackwardRequest(
            job="bench", step=step, network="digits", sender_vnode="act1", sender_replica=0,
            sender_epoch=1, target_vnode="fc1", target_replica=0, target_epoch=1,
            tensor=tensor, attempt=1,
        )  # fmt: skip
        out[FORWARD].append(_Message(FORWARD, forward.SerializeToString()))
        out[BACKWARD].append(_Message(BACKWARD, backward.SerializeToString()))
    return out


async def _closed_loop(
    address: str, messages: list[_Message], *, signer: signed.Signer | None, seconds: float
) -> float:
    """Messages/s over the run: callers send the next message as soon as the last was
    answered; with `signer`, each is signed first."""
    channels = [aio.insecure_channel(address, options=[("bench.channel", i)]) for i in range(2)]
    stubs = {
        (i, method): ch.unary_unary(method, None, None)
        for i, ch in enumerate(channels)
        for method in (FORWARD, BACKWARD)
    }
    source = itertools.cycle(messages)
    done = 0
    started = time.perf_counter()
    stop_at = started + seconds

    async def caller(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            message = next(source)
            metadata = signer.metadata(message.method, message.body) if signer else ()
            await stubs[(index % 2, message.method)](message.body, metadata=metadata, timeout=10)
            done += 1

    try:
        await asyncio.gather(*(caller(i) for i in range(DATA_CONCURRENCY)))
    finally:
        for channel in channels:
            await channel.close(None)
    return done / (time.perf_counter() - started)


async def _data_plane(ctx: harness.Context, size: Size, report: harness.Report) -> None:
    now = dt.datetime.now(dt.UTC)
    authority = identity.Authority.create(now)
    key = identity.generate_key()
    signer = signed.Signer()
    signer.update(
        key,
        authority.issue_pnode(identity.csr_pem(key, SENDER), SENDER, now, dt.timedelta(hours=2)),
    )
    ca = ctx.workdir / "identity-ca.pem"
    ca.write_bytes(authority.certificate_pem)
    with (
        _vnode_server(()) as plain,
        _vnode_server(("--verify", str(ca), "--sender", SENDER)) as verifying,
    ):
        for rows in size.batches:
            messages = _messages(rows, 16)
            for method, what in ((FORWARD, "forward"), (BACKWARD, "backward")):
                if rows != size.batches[0] and method == BACKWARD:
                    continue  # one backward size: a gradient costs what an activation does
                batch = messages[method]
                for address, by in ((plain, None), (verifying, signer)):  # warm-up
                    await _closed_loop(address, batch, signer=by, seconds=0.3)
                without: list[float] = []
                with_auth: list[float] = []
                for round_ in range(size.rounds):
                    runs = [(plain, None, without), (verifying, signer, with_auth)]
                    for address, by, into in runs if round_ % 2 == 0 else runs[::-1]:
                        into.append(
                            await _closed_loop(address, batch, signer=by, seconds=size.seconds)
                        )
                ctx.log(
                    f"{NAME}: {what} {rows} rows: {np.median(with_auth):,.0f} vs "
                    f"{np.median(without):,.0f} messages/s"
                )
                _compare(
                    report,
                    ctx,
                    name=f"{what}, {rows}x32 float64, signed + verified",
                    unit="messages/s",
                    measured=with_auth,
                    baseline=without,
                    baseline_name="the same server and client, unsigned, unverified",
                    detail=f"{len(batch[0].body):,} bytes per request",
                )
    report.extra["per-message cost, one core (µs)"] = _micro(signer, authority, _messages(64, 1))
    report.notes.append(
        "Control plane: two serve processes side by side, measured alternately; data plane: "
        "two VNodeService processes (parse + tensor decode, one also verifying), one client. "
        "The data plane is plaintext in both: the ratio holds signing and verifying only."
    )


def _micro(
    signer: signed.Signer, authority: identity.Authority, messages: dict[str, list[_Message]]
) -> dict[str, float]:
    """What one 64-row Forward costs each step in this process, for scale."""
    message = messages[FORWARD][0]
    verifier = identity.Verifier(authority.certificate_pem)
    metadata = dict(signer.metadata(message.method, message.body))
    signature = metadata[identity.SIGNATURE_METADATA]
    certificate = metadata[identity.CERTIFICATE_METADATA]
    now = dt.datetime.now(dt.UTC)
    request = vnode_pb2.ForwardRequest.FromString(message.body)

    def per_call(work: Any, n: int = 300) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            work()
        return round((time.perf_counter() - t0) / n * 1e6, 1)

    return {
        "sign (ECDSA P-256)": per_call(lambda: signer.metadata(message.method, message.body)),
        "verify (cached chain + ECDSA)": per_call(
            lambda: verifier.verify(message.method, message.body, certificate, signature, now)
        ),
        "serialize the request": per_call(request.SerializeToString),
        "parse + decode the tensor": per_call(
            lambda: tensors.decode(vnode_pb2.ForwardRequest.FromString(message.body).tensor)
        ),
    }


@contextlib.contextmanager
def _vnode_server(flags: tuple[str, ...]) -> Iterator[str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.auth", "serve", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=harness.REPO,
    )  # fmt: skip
    try:
        line = procs.read_line(proc)
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        procs.stop(proc)


# -- the benchmark's VNodeService (a subprocess) ---------------------------------------------


def _behaviour(
    request_type: type[pb_message.Message],
    response: pb_message.Message,
    method: str,
    verifier: identity.Verifier | None,
    sender: str,
) -> signed.RawBehaviour:
    async def handle(body: bytes, context: aio.ServicerContext[Any, Any]) -> pb_message.Message:
        if verifier is not None:
            try:
                who = signed.verify(
                    verifier, signed.received(method, body, context), dt.datetime.now(dt.UTC)
                )
            except identity.IdentityError as exc:
                await context.abort(grpc.StatusCode.UNAUTHENTICATED, str(exc))
            if who.name != sender:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, f"not {sender}")
        parsed: Any = request_type.FromString(body)
        if parsed.HasField("tensor"):
            tensors.decode(parsed.tensor)
        return response

    return handle


async def _serve(ca_pem: bytes | None, sender: str) -> None:
    verifier = identity.Verifier(ca_pem) if ca_pem else None
    behaviours = {
        name: _behaviour(request, response(), signed.full_method(name), verifier, sender)
        for name, (request, response) in signed.METHODS.items()
    }
    server = aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20)])
    server.add_generic_rpc_handlers([signed.raw_handler(behaviours)])
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"vnode service serving on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.auth")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument(
        "--verify",
        type=Path,
        metavar="CA_PEM",
        default=None,
        help="verify every request's signature against this identity CA",
    )
    parser.add_argument("--sender", default=SENDER, help="the only PNode allowed to send")
    args = parser.parse_args()  # fmt: skip
    asyncio.run(_serve(args.verify.read_bytes() if args.verify else None, args.sender))


if __name__ == "__main__":
    main()
