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

Data plane (forward, backward). The data plane is mutual TLS with the identity
certificates: the receiver learns the sender from the client certificate, and each request
still carries its sender's signature, verified only when the message becomes evidence
(docs/security.md, "Transport (TLS)" and "Identity"). Starting agents would measure the
whole step; instead, two small VNodeService servers (`python -m benchmarks.auth serve`, each
its own process, built on `api.signed.raw_handler` as agents are) do what an agent does with
a received request apart from the VNode's compute: parse it and decode its tensor.

- with: the server listens with mutual TLS (a PNode identity certificate, client
  certificates required from the identity CA) and, per request, does what an agent does
  before looking at it (`api.signed.sender`: the peer certificate's identity, cached by
  certificate, the signature and certificate present and the certificate the peer's), then
  checks the sender is the expected sending PNode (a dictionary lookup, as the agent's
  resolution cache answers it). The client dials with its PNode identity certificate and
  signs every request (`api.signed.Signer`, one ECDSA P-256 signature over the serialized
  bytes), as agents do. No message becomes evidence here, so no signature is verified:
  that happens only before a report.
- without: plaintext, no signature, nothing checked.

Where the difference goes, measured in the same rounds for the first batch's Forward (as
comparisons without a target): signing alone (the plaintext server, every request signed
and carrying its signature and certificate, nothing checked) and mutual TLS alone (a
third server, mutual TLS with the same certificates, checking nothing; the client presents
its certificate and signs nothing).

The client sends the same requests to every server, alternating rounds. The ratio is messages/s
with over messages/s without, so it holds TLS record crypto on both ends, signing, and the
peer check against gRPC's per-message cost and the tensor's decode. On a shared machine
wall-clock throughput moves with everyone else's work, so each round also records the CPU
time the client and the server process spent per message (the server's from
/proc/<pid>/stat of the subprocess this scenario started): without / with is the throughput
ratio the two would have on an otherwise idle, CPU-bound machine.

    python -m benchmarks.auth serve [--mtls CA_PEM --cert PEM --key PEM --sender NAME]
                                    [--no-check]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime as dt
import itertools
import os
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from google.protobuf import message as pb_message
from grpc import aio

from api import identity, signed, tensors
from api import streams as streams_mod
from api import tls as api_tls
from api.dcnr.v1 import common_pb2, pnode_pb2, resolve_pb2, vnode_pb2
from benchmarks import echo_server, harness, ingest, load
from controller import local_ca
from tests.support import procs

NAME = "auth"
ADMIN = "bench-admin-token"
CONCURRENCY = 64
DATA_CONCURRENCY = 8
TARGET_SHARE = 0.85
SENDER = "sender-pnode"
#: What the data plane's figures compare.
WHOLE = "mutual TLS + signed + peer checked"
BARE = "the same server and client: plaintext, unsigned, unchecked"
RECEIVER = "receiver-pnode"
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
            "with": "serve --tls-cert --tls-key --admin-token-file; data plane: mutual TLS "
            "with identity certificates, every request signed, sender checked against the "
            "peer certificate (signature verified only for evidence)",
            "without": "serve --insecure, no tokens; data plane: plaintext, unsigned, unchecked",
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
    goal: bool = True,
) -> None:
    """One figure; `measured[i]` and `baseline[i]` were measured back to back (round i), so
    the note also gives the median of the per-round ratios, which drift on a shared machine
    moves less than it moves either side. `goal`: the figure is judged against the <= 15 %
    goal (the whole of authentication; its parts are not)."""
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
            )
            if goal
            else (),
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


@dataclass(frozen=True, slots=True)
class _Server:
    """A benchmark VNodeService subprocess: where it listens, and its pid (for its CPU
    time, read from /proc/<pid>/stat of this process we started)."""

    address: str
    pid: int

    def cpu_seconds(self) -> float:
        stat = Path(f"/proc/{self.pid}/stat").read_text()
        fields = stat[stat.rindex(")") + 2 :].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True, slots=True)
class _Client:
    """How the client reaches one server: with `ca` (and `signer`), mutual TLS presenting
    the signer's certificate, without it plaintext; with `signer` and `sign`, every request
    signed (its signature and certificate in the metadata), otherwise unsigned."""

    server: _Server
    signer: signed.Signer | None = None
    ca: bytes = b""
    sign: bool = True
    #: Over Deliver streams (one per channel, as agents send), not unary calls.
    stream: bool = False

    @property
    def address(self) -> str:
        return self.server.address

    def metadata(self, message: _Message) -> tuple[tuple[str, bytes], ...]:
        if self.signer is None or not self.sign:
            return ()
        return self.signer.metadata(message.method, message.body)

    def channel(self, index: int) -> aio.Channel:
        options: list[tuple[str, Any]] = [("bench.channel", index)]
        if not self.ca or self.signer is None:
            return aio.insecure_channel(self.address, options=options)
        options.append((api_tls.TARGET_NAME_OVERRIDE, identity.dns_name("pnode", RECEIVER)))
        return aio.secure_channel(
            self.address, self.signer.client_credentials(self.ca), options=options
        )


@dataclass(frozen=True, slots=True)
class _Run:
    #: Messages/s (wall clock: what other work on the machine takes shows here).
    rate: float
    #: CPU seconds per message, client process and server process together: what the
    #: messages cost whatever else runs, the steadier figure on a shared machine.
    cpu_per_message: float


async def _closed_loop(client: _Client, messages: list[_Message], *, seconds: float) -> _Run:
    """Messages/s and CPU per message over the run: callers send the next message as soon as
    the last was answered; each signed first if the client signs. Channels connect (the TLS
    handshake) and streams open before the measured window."""
    channels = [client.channel(i) for i in range(2)]
    for channel in channels:
        await channel.channel_ready()
    stubs = {
        (i, method): ch.unary_unary(method, None, None)
        for i, ch in enumerate(channels)
        for method in (FORWARD, BACKWARD)
    }
    # As an agent sends (`agent.peers`): one Deliver stream per channel, every message signed
    # as its unary call is (a signer without a certificate signs nothing: the unsigned case).
    streams = [
        streams_mod.Stream(ch, header=common_pb2.RequestHeader(client_name="bench"))
        for ch in channels
    ] if client.stream else []  # fmt: skip
    signer = client.signer if client.signer is not None and client.sign else signed.Signer()
    source = itertools.cycle(messages)
    done = 0

    async def unary(index: int, message: _Message) -> None:
        metadata = client.metadata(message)
        await stubs[(index % 2, message.method)](message.body, metadata=metadata, timeout=10)

    async def streamed(index: int, message: _Message) -> None:
        name = "Forward" if message.method == FORWARD else "Backward"
        answer = await streams[index % 2].send(signer, name, message.body, seconds=10)
        if answer.code:
            raise AssertionError(f"Deliver refused a message: {answer}")

    send = streamed if client.stream else unary
    if client.stream:  # the streams' first messages (their set-up) before the window
        await asyncio.gather(*(send(i, messages[0]) for i in range(2)))
    cpu_before = time.process_time() + client.server.cpu_seconds()
    started = time.perf_counter()
    stop_at = started + seconds

    async def caller(index: int) -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await send(index, next(source))
            done += 1

    try:
        await asyncio.gather(*(caller(i) for i in range(DATA_CONCURRENCY)))
        elapsed = time.perf_counter() - started
        cpu = time.process_time() + client.server.cpu_seconds() - cpu_before
    finally:
        for stream in streams:
            await stream.close()
        for channel in channels:
            await channel.close(None)
    return _Run(done / elapsed, cpu / max(done, 1))


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
    server_key = identity.generate_key()
    cert, key_file = ctx.workdir / "receiver.pem", ctx.workdir / "receiver-key.pem"
    cert.write_bytes(
        authority.issue_pnode(
            identity.csr_pem(server_key, RECEIVER), RECEIVER, now, dt.timedelta(hours=2)
        )
    )
    key_file.write_bytes(identity.key_pem(server_key))
    mtls = ("--mtls", str(ca), "--cert", str(cert), "--key", str(key_file), "--sender", SENDER)
    cpu: dict[str, dict[str, float]] = {}
    with (
        _vnode_server(()) as plain,
        _vnode_server(mtls) as secure,
        _vnode_server((*mtls, "--no-check")) as unchecked,
    ):
        bare_unary = _Client(plain)
        authenticated_unary = _Client(secure, signer, authority.certificate_pem)
        #: Where the difference goes (the first batch's Forward only): each part alone.
        part_clients = {
            "signing only (plaintext, every request signed, nothing checked)": _Client(
                plain, signer
            ),
            "mutual TLS only (unsigned, nothing checked)": _Client(
                unchecked, signer, authority.certificate_pem, sign=False
            ),
        }
        # Agents send over Deliver streams (`agent.peers`); unary calls are their fallback
        # (a peer that does not serve Deliver) and how the driver's inbox is reached.
        for transport in ("Deliver stream", "unary"):
            stream = transport != "unary"
            bare, authenticated = (
                dataclasses.replace(c, stream=stream) for c in (bare_unary, authenticated_unary)
            )
            parts = {
                label: dataclasses.replace(c, stream=stream) for label, c in part_clients.items()
            }
            where = f", {transport}" if stream else ""
            for rows in size.batches:
                messages = _messages(rows, 16)
                for method, what in ((FORWARD, "forward"), (BACKWARD, "backward")):
                    if rows != size.batches[0] and method == BACKWARD:
                        continue  # one backward size: a gradient costs what an activation does
                    batch = messages[method]
                    decompose = rows == size.batches[0] and method == FORWARD
                    clients = {"without": bare, "with": authenticated}
                    if decompose:
                        clients.update(parts)
                    for client in clients.values():  # warm-up
                        await _closed_loop(client, batch, seconds=0.3)
                    runs: dict[str, list[_Run]] = {label: [] for label in clients}
                    for round_ in range(size.rounds):
                        order = list(clients) if round_ % 2 == 0 else list(reversed(clients))
                        for label in order:
                            runs[label].append(
                                await _closed_loop(clients[label], batch, seconds=size.seconds)
                            )
                    cpus = {
                        label: statistics.median(r.cpu_per_message for r in got) * 1e6
                        for label, got in runs.items()
                    }
                    cpu_with, cpu_without = cpus["with"], cpus["without"]
                    cpu[f"{what}, {rows}x32 float64{where}"] = {
                        "with (us)": round(cpu_with, 1),
                        "without (us)": round(cpu_without, 1),
                        "throughput ratio it implies (without / with)": round(
                            cpu_without / cpu_with, 2
                        ),
                        **{
                            f"{label} (us)": round(cpus[label], 1)
                            for label in parts
                            if label in cpus
                        },
                    }
                    ctx.log(
                        f"{NAME}: {what} {rows} rows{where}: "
                        f"{np.median([r.rate for r in runs['with']]):,.0f} vs "
                        f"{np.median([r.rate for r in runs['without']]):,.0f} messages/s; CPU per "
                        f"message {cpu_with:,.0f} vs {cpu_without:,.0f} us"
                    )
                    _compare(
                        report,
                        ctx,
                        name=f"{what}, {rows}x32 float64{where}, {WHOLE}",
                        unit="messages/s",
                        measured=[r.rate for r in runs["with"]],
                        baseline=[r.rate for r in runs["without"]],
                        baseline_name=BARE,
                        detail=f"{len(batch[0].body):,} bytes per request; CPU per message "
                        f"{cpu_with:,.0f} vs {cpu_without:,.0f} us",
                    )
                    for label in parts:
                        if label not in runs:
                            continue
                        _compare(
                            report,
                            ctx,
                            name=f"{what}, {rows}x32 float64{where}, part: {label}",
                            unit="messages/s",
                            measured=[r.rate for r in runs[label]],
                            baseline=[r.rate for r in runs["without"]],
                            baseline_name=BARE,
                            detail=f"CPU per message {cpus[label]:,.0f} vs {cpu_without:,.0f} us",
                            goal=False,
                        )
    report.extra["CPU per message, client + server processes, median of the rounds"] = cpu
    report.extra["per-message cost, one core (µs)"] = _micro(signer, authority, _messages(64, 1))
    report.notes.append(
        "Control plane: two serve processes side by side, measured alternately; data plane: "
        "two VNodeService processes (parse + tensor decode; one mutual TLS, checking the "
        "peer certificate and that each request carries the peer's signature), one client "
        "that signs for the TLS one. No signature is verified on the data plane's hot path "
        "(only before a report, which needs evidence), so verification is listed in "
        "results/auth.json as a per-message cost, not in the ratio. CPU per message "
        "(client + server processes) is in results/auth.json (extra; quoted in the "
        "analysis): on a machine shared with other work it moves less than wall-clock "
        "throughput does."
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
    peer = identity.certificate_pem(signer.certificate)
    evidence = common_pb2.SignedMessage(
        method=message.method, body=message.body, certificate=certificate, signature=signature
    )

    def per_call(work: Any, n: int = 300) -> float:
        t0 = time.perf_counter()
        for _ in range(n):
            work()
        return round((time.perf_counter() - t0) / n * 1e6, 1)

    return {
        "sign (ECDSA P-256)": per_call(lambda: signer.metadata(message.method, message.body)),
        "verify (cached chain + ECDSA; only before a report)": per_call(
            lambda: verifier.verify(message.method, message.body, certificate, signature, now)
        ),
        "sender from the TLS peer certificate (cached)": per_call(
            lambda: signed.sender(verifier, evidence, peer, now)
        ),
        "serialize the request": per_call(request.SerializeToString),
        "parse + decode the tensor": per_call(
            lambda: tensors.decode(vnode_pb2.ForwardRequest.FromString(message.body).tensor)
        ),
    }


@contextlib.contextmanager
def _vnode_server(flags: tuple[str, ...]) -> Iterator[_Server]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.auth", "serve", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=harness.REPO,
    )  # fmt: skip
    try:
        line = procs.read_line(proc)
        yield _Server(line.rsplit(" ", 1)[1].strip(), proc.pid)
    finally:
        procs.stop(proc)


# -- the benchmark's VNodeService (a subprocess) ---------------------------------------------


def _refusal(
    verifier: identity.Verifier | None,
    sender: str,
    message: common_pb2.SignedMessage,
    peer: bytes,
) -> tuple[grpc.StatusCode, str] | None:
    """What an agent checks of a request before looking at it, over mutual TLS
    (`agent.dataplane`): the sender from the peer certificate, the signature and certificate
    present and the certificate the peer's, the sender the expected one; None when nothing
    is checked (plaintext here) or all holds. `peer`: the connection's client certificate
    (read per call on a unary call, once per stream on Deliver, as the agent does)."""
    if verifier is None:
        return None
    try:
        who, _proven = signed.sender(verifier, message, peer, dt.datetime.now(dt.UTC))
    except identity.IdentityError as exc:
        return grpc.StatusCode.UNAUTHENTICATED, str(exc)
    if who.name != sender:
        return grpc.StatusCode.PERMISSION_DENIED, f"not {sender}"
    return None


def _take(request_type: type[pb_message.Message], body: bytes) -> None:
    """What the server does with a request it accepts: parse it and decode its tensor."""
    parsed: Any = request_type.FromString(body)
    if parsed.HasField("tensor"):
        tensors.decode(parsed.tensor)


def _behaviour(
    request_type: type[pb_message.Message],
    response: pb_message.Message,
    method: str,
    verifier: identity.Verifier | None,
    sender: str,
) -> signed.RawBehaviour:
    async def handle(body: bytes, context: aio.ServicerContext[Any, Any]) -> pb_message.Message:
        peer = signed.peer_certificate(context) if verifier is not None else b""
        refused = _refusal(verifier, sender, signed.received(method, body, context), peer)
        if refused is not None:
            await context.abort(*refused)
        _take(request_type, body)
        return response

    return handle


def _deliver(verifier: identity.Verifier | None, sender: str) -> signed.StreamBehaviour:
    """Deliver as an agent serves it (`agent.dataplane`): each message checked as its unary
    call, handled as its own task (at most 64 in hand), answered in order."""

    async def answer(raw: bytes, peer: bytes) -> vnode_pb2.DeliverResponse:
        request = vnode_pb2.DeliverRequest.FromString(raw)
        found = signed.streamed(request)
        if found is None:
            return vnode_pb2.DeliverResponse(sequence=request.sequence, code=3, message="body")
        name, message = found
        refused = _refusal(verifier, sender, message, peer)
        if refused is not None:
            code, text = refused
            return vnode_pb2.DeliverResponse(
                sequence=request.sequence, code=code.value[0], message=text
            )
        _take(signed.METHODS[name][0], message.body)
        return vnode_pb2.DeliverResponse(sequence=request.sequence)

    async def deliver(
        requests: AsyncIterator[bytes], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[vnode_pb2.DeliverResponse]:
        answers: asyncio.Queue[asyncio.Task[vnode_pb2.DeliverResponse] | None] = asyncio.Queue()
        window = asyncio.Semaphore(64)
        peer = signed.peer_certificate(context) if verifier is not None else b""

        async def read() -> None:
            try:
                async for raw in requests:
                    await window.acquire()
                    await answers.put(asyncio.ensure_future(answer(raw, peer)))
            finally:
                await answers.put(None)

        reader = asyncio.ensure_future(read())
        try:
            while (task := await answers.get()) is not None:
                reply = await task
                window.release()
                yield reply
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)

    return deliver


@dataclass(frozen=True, slots=True)
class _Tls:
    ca: bytes
    certificate: bytes
    key: bytes


async def _serve(tls: _Tls | None, sender: str, *, check: bool) -> None:
    verifier = identity.Verifier(tls.ca) if tls and check else None
    behaviours = {
        name: _behaviour(request, response(), signed.full_method(name), verifier, sender)
        for name, (request, response) in signed.METHODS.items()
    }
    server = aio.server(options=[("grpc.max_receive_message_length", 64 * 2**20)])
    server.add_generic_rpc_handlers(
        [signed.raw_handler(behaviours, deliver=_deliver(verifier, sender))]
    )
    if tls is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        credentials = grpc.ssl_server_credentials(
            [(tls.key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
        )
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await echo_server.serve_until_signalled(server, f"vnode service serving on 127.0.0.1:{port}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.auth")
    parser.add_argument("command", choices=["serve"])
    parser.add_argument(
        "--mtls",
        type=Path,
        metavar="CA_PEM",
        default=None,
        help="serve mutual TLS, client certificates from this identity CA, and check each "
        "request's sender by its peer certificate (needs --cert and --key)",
    )
    parser.add_argument("--cert", type=Path, default=None, help="the server's certificate")
    parser.add_argument("--key", type=Path, default=None, help="the server's key")
    parser.add_argument("--sender", default=SENDER, help="the only PNode allowed to send")
    parser.add_argument(
        "--no-check",
        action="store_true",
        help="with --mtls: serve mutual TLS but check nothing per request (what TLS alone costs)",
    )
    args = parser.parse_args()  # fmt: skip
    tls = None
    if args.mtls is not None:
        if args.cert is None or args.key is None:
            parser.error("--mtls needs --cert and --key")
        tls = _Tls(args.mtls.read_bytes(), args.cert.read_bytes(), args.key.read_bytes())
    elif args.no_check:
        parser.error("--no-check needs --mtls")
    asyncio.run(_serve(tls, args.sender, check=not args.no_check))


if __name__ == "__main__":
    main()
