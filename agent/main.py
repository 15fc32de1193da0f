"""`dcnr-agent`: run a PNode — offer this machine to a DCNR cluster.

    dcnr-agent --orchestrator HOST:PORT[,HOST:PORT...] --listen HOST:PORT
               (--tls-ca FILE [--tls-cert FILE --tls-key FILE] [--tls-server-name NAME]
                | --insecure)
               [--advertise HOST:PORT] [--name NAME] [--cpu N] [--memory SIZE]
               [--accelerator TYPE:COUNT ...] [--label K=V ...] [--dataset NAME=URL ...]
               [--state-dir DIR] [--workdir DIR] [--max-message-bytes N]
               [--metrics-listen HOST:PORT] [--no-in-process-delivery]
               [--no-stream-delivery]

Exit codes: 0 after a clean leave (SIGTERM/Ctrl-C: deregister, drain, exit), 1 runtime
failure (port taken, name refused), 2 bad usage. Errors are one line on stderr naming the
flag and value; no tracebacks for user mistakes. The data-plane listener opens once the
first Register answered: it serves TLS with the PNode's identity certificate, or plaintext
when the orchestrator says the cluster's data plane is (`serve --data-plane-insecure`);
the port is held from the start, so it is known to Register. Once serving it prints one line,
`dcnr-agent: NAME serving the data plane on HOST:PORT (TLS; orchestrator ...)`, ending with
`metrics on port N` when --metrics-listen is given (Prometheus /metrics, `agent.metrics`).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

from grpc import aio

from agent import agent as agent_mod
from agent import blobs, capacity, dataplane, keys, peers
from agent import metrics as metrics_mod
from api import logs as api_logs
from api import tls as api_tls
from api import version
from api.resources import meta


class _Usage(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _Usage(message)


def _address(value: str) -> str:
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{value!r} must be HOST:PORT, e.g. 127.0.0.1:7100")
    return value


def _addresses(value: str) -> list[str]:
    return [_address(v.strip()) for v in value.split(",") if v.strip()]


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) <= 0:
        raise argparse.ArgumentTypeError(f"{value!r} must be a positive integer")
    return int(value)


def _name(value: str) -> str:
    try:
        return meta.check_dns1123_subdomain(value)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{value!r} must be a DNS-1123 subdomain (lowercase letters, digits, '-', '.')"
        ) from None


def _join_token(path: str) -> str:
    """The first token of the file (blank lines and # comments skipped)."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"{path}: {exc.strerror or exc}") from None
    tokens = [t.strip() for t in lines if t.strip() and not t.lstrip().startswith("#")]
    if not tokens or any(c.isspace() for c in tokens[0]):
        raise argparse.ArgumentTypeError(f"{path}: holds no token (one per line, no spaces)")
    return tokens[0]


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="dcnr-agent", description="Run a DCNR PNode: host VNodes for a cluster.")
    p.add_argument("--version", action="version", version=f"%(prog)s {version.current()}")
    p.add_argument("--orchestrator", required=True, type=_addresses, metavar="HOST:PORT[,...]")
    p.add_argument("--listen", default="0.0.0.0:7100", type=_address, metavar="HOST:PORT")
    p.add_argument("--advertise", type=_address, metavar="HOST:PORT", help="default: --listen")
    p.add_argument("--name", type=_name, default=None, help="default: kept in --state-dir")
    p.add_argument("--cpu", help="cores to offer (2, 0.5, 500m); default: the machine's")
    p.add_argument("--memory", help="memory to offer (8Gi, 512Mi); default: the machine's")
    p.add_argument("--accelerator", action="append", default=[], metavar="TYPE:COUNT")
    p.add_argument("--label", action="append", default=[], metavar="K=V")
    p.add_argument("--dataset", action="append", default=[], metavar="NAME=URL")
    p.add_argument("--state-dir", type=Path, default=None, help="default: ~/.local/state/...")
    p.add_argument("--workdir", type=Path, default=Path.cwd(), help="relative file:// base")
    p.add_argument(
        "--max-message-bytes", type=_positive_int, default=dataplane.DEFAULT_MAX_MESSAGE_BYTES
    )
    p.add_argument("--drain-deadline", type=float, default=30.0, metavar="SECONDS")
    p.add_argument(
        "--join-token-file", type=_join_token, default=None, metavar="FILE", dest="join_token",
        help="a join token of the orchestrator's --join-token-file (its first token is used)",
    )  # fmt: skip
    p.add_argument(
        "--metrics-listen", type=_address, metavar="HOST:PORT", help="Prometheus /metrics; off"
    )
    p.add_argument(
        "--no-in-process-delivery", dest="in_process", action="store_false",
        help="send to VNodes hosted here over gRPC too (default: in process, same checks)",
    )  # fmt: skip
    p.add_argument(
        "--no-stream-delivery", dest="streams", action="store_false",
        help="a unary Forward/Backward call per message to other agents and the job's "
        "driver (default: one Deliver stream per target VNode, same checks)",
    )  # fmt: skip
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    tls = p.add_argument_group("to the orchestrator (--tls-ca or --insecure is required)")
    tls.add_argument("--tls-ca", type=Path, metavar="FILE", help="CA bundle to verify it with")
    tls.add_argument("--tls-cert", type=Path, metavar="FILE", help="mutual TLS: our certificate")
    tls.add_argument("--tls-key", type=Path, metavar="FILE", help="mutual TLS: its key")
    tls.add_argument("--tls-server-name", default="", metavar="NAME", help="name to expect in "
                     "its certificate (default: the host of --orchestrator)")  # fmt: skip
    tls.add_argument("--insecure", action="store_true", help="plaintext to the orchestrator")
    return p


def _orchestrator_tls(args: argparse.Namespace) -> api_tls.ClientFiles | None:
    given = [f"--{f.replace('_', '-')}" for f in ("tls_ca", "tls_cert", "tls_key",
             "tls_server_name") if getattr(args, f)]  # fmt: skip
    if args.insecure:
        if given:
            raise _Usage(f"--insecure and {given[0]} contradict each other: give one or the other")
        return None
    if args.tls_ca is None:
        raise _Usage(
            "--tls-ca FILE is required to verify the orchestrator (or --insecure for plaintext)"
        )
    return api_tls.ClientFiles(
        ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key, server_name=args.tls_server_name
    )


def _default_state_dir() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "dcnr-agent"


def _hold_port(listen: str) -> tuple[socket.socket, str]:
    """The data-plane address to advertise, known before the listener opens (it opens
    after Register, which names the address). The port (picked now for port 0) is held by a
    bound, non-listening socket with SO_REUSEPORT, as gRPC binds its own, until gRPC has
    bound it; the caller closes the holder then. A port already taken fails here, before
    Register."""
    host, _, port = listen.rpartition(":")
    infos = socket.getaddrinfo(
        host.strip("[]"), int(port), type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )
    family, kind, proto, _, address = infos[0]
    holder = socket.socket(family, kind, proto)
    try:
        holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        holder.bind(address)
    except OSError:
        holder.close()
        raise
    return holder, f"{host}:{holder.getsockname()[1]}"


async def _serve(
    args: argparse.Namespace, caps: capacity.Capabilities, tls: api_tls.ClientFiles | None
) -> int:
    try:
        orchestrators = peers.Orchestrators(args.orchestrator, tls=tls)
    except api_tls.TlsError as exc:
        print(f"dcnr-agent: error: {exc}", file=sys.stderr)
        return 2
    if tls is None:
        logging.getLogger("dcnr.agent").warning(
            "--insecure: plaintext to the orchestrator; this PNode's credential crosses "
            "the network readable"
        )
    keeper = keys.Keeper()  # this PNode's identity: its key lives in memory only
    sender = peers.Peers(
        orchestrators,
        signer=keeper.signer,
        client_ca=keeper.client_ca,
        driver_mutual_tls=lambda: keeper.driver_mutual_tls,
        max_message_bytes=args.max_message_bytes,
        streams=args.streams,
    )
    workdir = args.workdir.resolve()
    state_dir = (args.state_dir or _default_state_dir()).resolve()
    plane = dataplane.DataPlane(
        sender=sender,
        keeper=keeper,
        blob_store=blobs.BlobStore(workdir=workdir),
        kind_factory=dataplane.runtime_kinds(
            workdir=workdir, cache_dir=state_dir / "data-cache", datasets=caps.datasets
        ),
        max_message_bytes=args.max_message_bytes,
    )
    if args.in_process:
        sender.local = plane  # VNodes hosted here get their messages in process
    metrics = metrics_mod.AgentMetrics(dataplane.REFUSAL_REASONS)
    plane.on_message = lambda forward, refused: metrics.message(forward=forward, refused=refused)
    sender.on_stream = metrics.stream
    plane.on_spot = metrics.spot_checked
    metrics_note = ""
    if args.metrics_listen:
        metrics_host, _, metrics_port = args.metrics_listen.rpartition(":")
        try:
            bound = metrics.start_http(metrics_host, int(metrics_port))
        except OSError as exc:
            print(f"dcnr-agent: error: {exc}", file=sys.stderr)
            return 1
        metrics_note = f"; metrics on port {bound}"
    server = aio.server(options=peers.channel_options(args.max_message_bytes))
    plane.add_to_server(server)
    try:
        holder, listen = _hold_port(args.listen)
    except OSError as exc:
        print(f"dcnr-agent: error: --listen: {args.listen!r}: {exc}", file=sys.stderr)
        return 1
    advertise = args.advertise or listen
    agent = agent_mod.Agent(
        agent_mod.AgentConfig(
            name=args.name or "",
            advertise=advertise,
            capabilities=caps,
            state_dir=state_dir,
            drain_deadline=args.drain_deadline,
            join_token=args.join_token or "",
        ),
        orchestrators=orchestrators,
        data_plane=plane,
        keeper=keeper,
        on_heartbeat=metrics.heartbeat,
        on_register=metrics.registered,
        on_link=lambda state: metrics.link(state.value),
    )
    metrics.watch_assignments(lambda: agent.assignment_count)
    plane.reporter = agent
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, agent.request_stop)

    async def ready(a: agent_mod.Agent) -> None:
        # Register said how the cluster's data plane speaks and gave the certificate: only
        # now can the listener open, and never plaintext unless the orchestrator said so.
        try:
            if keeper.plaintext:
                logging.getLogger("dcnr.agent").warning(
                    "the orchestrator runs the data plane plaintext (serve "
                    "--data-plane-insecure): tensors cross the network readable"
                )
                server.add_insecure_port(listen)
            else:
                server.add_secure_port(listen, keeper.server_credentials())
        except RuntimeError as exc:
            raise agent_mod.RegistrationRefused(f"--listen: {listen!r}: {exc}") from None
        finally:
            holder.close()
        await server.start()
        transport = "plaintext" if keeper.plaintext else "TLS"
        print(
            f"dcnr-agent: {a.name} serving the data plane on {listen} ({transport}; "
            f"orchestrator {','.join(args.orchestrator)}, advertised as {advertise}); "
            f"SIGTERM leaves{metrics_note}",
            flush=True,
        )

    try:
        await agent.run(on_registered=ready)
    except agent_mod.RegistrationRefused as exc:
        print(f"dcnr-agent: error: {exc}", file=sys.stderr)
        return 1
    finally:
        holder.close()
        await server.stop(grace=1.0)
        await plane.close()
        await sender.close()
        await orchestrators.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
        caps = capacity.detect(
            cpu=args.cpu,
            memory=args.memory,
            accelerators=args.accelerator,
            labels=args.label,
            datasets=args.dataset,
        )
        if not args.drain_deadline >= 0:
            raise _Usage(f"--drain-deadline: {args.drain_deadline} must be >= 0")
        tls = _orchestrator_tls(args)
    except (_Usage, capacity.FlagError) as exc:
        print(f"dcnr-agent: error: {exc}", file=sys.stderr)
        return 2
    api_logs.setup(args.log_level)
    try:
        return asyncio.run(_serve(args, caps, tls))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
