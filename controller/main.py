"""`dcnr-orchestrator`: serve the control plane, or prepare its store.

    dcnr-orchestrator serve (--tls-cert FILE --tls-key FILE [--tls-client-ca FILE] | --insecure)
                            [--store URL] [--listen HOST:PORT] [--metrics-listen HOST:PORT]
                            [--replica-id ID] [--heartbeat-interval S] [--lease-duration S]
                            [--data-plane-insecure] ...
    dcnr-orchestrator up [--agents N] [--insecure] ...
    dcnr-orchestrator init-store [--store URL]

Exit codes: 0 success, 1 runtime failure (store unreachable, port taken), 2 bad usage.
Errors are one line on stderr naming the flag and value; no tracebacks for user mistakes.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from api import logs as api_logs
from api import tls as api_tls
from api import version
from controller import admission_flags, config, server
from controller.jobs import driver
from controller.runtime import collector
from controller.services import addresses, auth
from store import errors, url

log = logging.getLogger("dcnr.server")

_TIMINGS = (
    "heartbeat_interval",
    "lease_duration",
    "lost_grace",
    "lost_retention",
    "pending_retention",
    "view_refresh",
    "view_resync",
    "replica_lease",
    "resync_every",
    "job_poll",
    "store_stall_after",
    "store_stall_max",
    "unschedulable_retry",
    "event_ttl",
    "pending_repair_after",
)


_CA_HELP = (
    "the identity CA's certificate and key, both or neither (e.g. from a Secret); default: "
    "the store's, created once by init-store or the first serve (store access is CA access)"
)


def _identity_ca(args: argparse.Namespace) -> tuple[bytes, bytes] | None:
    """The --identity-ca-cert/--identity-ca-key PEM files, checked to be a CA and its key."""
    from api import identity

    if (args.identity_ca_cert is None) != (args.identity_ca_key is None):
        raise ValueError("--identity-ca-cert and --identity-ca-key go together")
    if args.identity_ca_cert is None:
        return None
    pem = (args.identity_ca_cert.read_bytes(), args.identity_ca_key.read_bytes())
    try:
        identity.Authority.from_pem(*pem)
    except ValueError as exc:
        raise ValueError(
            f"--identity-ca-cert {str(args.identity_ca_cert)!r} / --identity-ca-key: {exc}"
        ) from None
    return pem


async def _init_identity_ca(store_url: str) -> str:
    from controller.state import identity_ca

    store = await url.open_store(store_url)
    try:
        await identity_ca.load_or_create(store, datetime.now(UTC))
    finally:
        await store.close()
    return "identity CA ready (kept in the store: store access is CA access)"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dcnr-orchestrator",
        description="DCNR orchestrator: the control plane of a DCNR cluster.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {version.current()}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="serve the dcnr.v1 gRPC API")
    serve.add_argument("--store", default=None, help=f"store URL (default: {url.default_url()})")
    serve.add_argument(
        "--listen", default="127.0.0.1:7070", help="gRPC address (default: %(default)s)"
    )
    serve.add_argument(
        "--metrics-listen",
        default=None,
        help="serve Prometheus /metrics on HOST:PORT (port 0: any free port; default: off)",
    )
    serve.add_argument(
        "--ui-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the read-only web dashboard on HOST:PORT (port 0: any free port), with "
        "the gRPC listener's TLS certificate and the admin or read-only token (default: off)",
    )
    serve.add_argument(
        "--replica-id", default="", help="this replica's name (default: host-pid-random)"
    )
    serve.add_argument(
        "--grace", type=float, default=10.0, help="seconds to finish in-flight work on SIGTERM"
    )
    serve.add_argument(
        "--admin-token-file",
        metavar="FILE",
        default=None,
        help="require 'authorization: Bearer <token>' on management calls; one token per line "
        "(default: no admin auth)",
    )
    serve.add_argument(
        "--read-only-token-file",
        metavar="FILE",
        default=None,
        help="tokens of the read-only role (Get*, List*, Watch*, ExplainPlacement, Resolve*), "
        "same format as --admin-token-file, which it needs (default: none)",
    )
    serve.add_argument(
        "--blob-store",
        default=None,
        metavar="URL",
        help="where VNodes write checkpoints: file:///dir/ or s3://bucket/prefix/ "
        "(default: file:// checkpoints/ beside the SQLite store, or under the state directory)",
    )
    serve.add_argument(
        "--advertise",
        default="",
        metavar="HOST:PORT",
        help="how agents reach this replica's job driver (default: the listen address)",
    )
    serve.add_argument(
        "--step-timeout", type=float, default=10.0, metavar="S",
        help="a training step not finished in this long rolls back to the last checkpoint",
    )  # fmt: skip
    serve.add_argument(
        "--max-message-bytes", type=int, default=64 * 2**20, metavar="N",
        help="largest data-plane message the job driver accepts",
    )  # fmt: skip
    serve.add_argument(
        "--no-stream-delivery", dest="stream_delivery", action="store_false",
        help="the job driver sends each step's batch as a unary Forward call per source "
        "(default: one Deliver stream per source, same checks)",
    )  # fmt: skip
    _add_tls_flags(serve)
    admission_flags.add(serve)
    identity = serve.add_argument_group("identity CA (docs/security.md)")
    identity.add_argument("--identity-ca-cert", type=Path, metavar="PEM", help=_CA_HELP)
    identity.add_argument("--identity-ca-key", type=Path, metavar="PEM", help=_CA_HELP)
    identity.add_argument(
        "--identity-ttl", type=float, default=3600.0, metavar="S",
        help="lifetime of the identity certificates of PNodes and replicas (default: %(default)s)",
    )  # fmt: skip
    defaults = config.ControlPlaneConfig()
    timings = serve.add_argument_group("timings (seconds)")
    for name in _TIMINGS:
        timings.add_argument(
            "--" + name.replace("_", "-"),
            type=float,
            default=getattr(defaults, name),
            metavar="S",
            help=f"default: {getattr(defaults, name)}",
        )

    up = commands.add_parser("up", help="run a local cluster: the orchestrator and N agents")
    up.add_argument("--agents", type=int, default=3, help="agents to start (default: 3)")
    up.add_argument(
        "--store", default=None, help="store URL (default: sqlite:/// under --state-dir)"
    )
    up.add_argument(
        "--listen", default="127.0.0.1:7070", help="gRPC address (default: %(default)s)"
    )
    up.add_argument(
        "--metrics-listen",
        default=None,
        metavar="HOST:PORT",
        help="serve the orchestrator's Prometheus /metrics on HOST:PORT (port 0: any free "
        "port, printed in the banner; default: off)",
    )
    up.add_argument(
        "--ui-listen",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="the web dashboard's address, printed in the banner (default: %(default)s, any "
        "free port; 'off' turns it off)",
    )
    up.add_argument("--state-dir", type=Path, default=None, help="default: $XDG_STATE_HOME/dcnr/up")
    up.add_argument(
        "--workdir", type=Path, default=Path.cwd(), help="agents resolve file:// data here"
    )
    up.add_argument(
        "--insecure",
        action="store_true",
        help="plaintext gRPC (default: TLS with a local CA kept in --state-dir/tls)",
    )

    init = commands.add_parser("init-store", help="create the store's tables (idempotent)")
    init.add_argument("--store", default=None, help=f"store URL (default: {url.default_url()})")
    return parser


def _add_tls_flags(serve: argparse.ArgumentParser) -> None:
    group = serve.add_argument_group(
        "transport (one of --tls-cert/--tls-key or --insecure is required)"
    )
    group.add_argument("--tls-cert", type=Path, metavar="FILE", help="PEM certificate chain; "
                       "re-read when the file changes, no restart needed")  # fmt: skip
    group.add_argument("--tls-key", type=Path, metavar="FILE", help="PEM private key")
    group.add_argument(
        "--tls-client-ca",
        type=Path,
        metavar="FILE",
        help="mutual TLS: every client must present a certificate signed by this CA bundle",
    )
    group.add_argument(
        "--insecure", action="store_true", help="plaintext gRPC: credentials cross unencrypted"
    )
    group.add_argument(
        "--data-plane-insecure",
        action="store_true",
        help="plaintext data plane (agents' VNodeService listeners and their clients), told "
        "to every agent at Register; default: TLS with the PNodes' identity certificates",
    )
    group.add_argument(
        "--driver-listen",
        metavar="HOST:PORT",
        help="serve the job driver's inbox (__driver__) on a second listener over mutual TLS "
        "with this replica's identity certificate, told to agents at Register, so results' "
        "signatures are verified only when they may become evidence; runs' reply_to names "
        "it (with --advertise, give this listener's reachable address). Default: the "
        "inbox is on --listen and verifies every result's signature on receipt",
    )


class _Usage(Exception):
    pass


def _server_tls(args: argparse.Namespace) -> api_tls.ServerFiles | None:
    """serve's transport from its flags: TLS files, or None for an explicit --insecure."""
    given = [f for f in ("tls_cert", "tls_key", "tls_client_ca") if getattr(args, f)]
    if args.insecure:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise _Usage(f"--insecure and {flag} contradict each other: give one or the other")
        return None
    if not given:
        raise _Usage(
            "serve needs --tls-cert FILE and --tls-key FILE (TLS), or --insecure for "
            "plaintext gRPC"
        )
    if args.tls_cert is None:
        raise _Usage(f"--{given[0].replace('_', '-')} needs --tls-cert FILE (and --tls-key FILE)")
    if args.tls_key is None:
        raise _Usage("--tls-cert needs --tls-key FILE (the certificate's private key)")
    return api_tls.ServerFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def _up(args: argparse.Namespace) -> int:
    from controller import up

    if args.agents < 0:
        print(
            f"dcnr-orchestrator: error: --agents: must be >= 0, got {args.agents}", file=sys.stderr
        )
        return 2
    state_dir = (args.state_dir or url.default_state_dir() / "up").resolve()
    store_url = args.store or f"sqlite:///{state_dir / 'state.db'}"
    try:
        url.parse(store_url)
    except errors.InvalidRequest as exc:
        print(f"dcnr-orchestrator: error: --store: {exc}", file=sys.stderr)
        return 2
    host = args.listen.rsplit(":", 1)[0]
    serve_config = server.ServeConfig(
        store_url=store_url,
        listen=args.listen,
        metrics_listen=args.metrics_listen,
        ui_listen=None if args.ui_listen == "off" else args.ui_listen,
        # The driver's inbox on its own mutual-TLS listener, verifying lazily.
        driver_listen=f"{host}:0",
        driver=driver.DriverConfig(blob_store=f"file://{state_dir}/checkpoints/"),
    )
    config = up.UpConfig(
        serve=serve_config,
        agents=args.agents,
        state_dir=state_dir,
        workdir=args.workdir.resolve(),
        insecure=args.insecure,
    )
    try:
        asyncio.run(up.run(config))
    except errors.StoreError as exc:
        print(f"dcnr-orchestrator: error: store {store_url}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dcnr-orchestrator: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _default_blob_store(store_url: str) -> str:
    parsed = url.parse(store_url)
    base = parsed.path.parent if isinstance(parsed, url.SqliteURL) else url.default_state_dir()
    return f"file://{base.resolve()}/checkpoints/"


def _store_url(value: str | None) -> str:
    chosen = value or url.default_url()
    url.parse(chosen)  # raises InvalidRequest naming what is wrong
    return chosen


async def _serve(
    config: server.ServeConfig, *, on_ready: Callable[[server.Orchestrator], None] | None = None
) -> None:
    """Run until SIGTERM or SIGINT, then shut down gracefully."""
    store = await url.open_store(config.store_url)
    orchestrator = server.Orchestrator(config, store)
    try:
        await orchestrator.start()
    except BaseException:
        with contextlib.suppress(Exception):
            await orchestrator.stop()
        raise
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    log.info(
        "serving dcnr.v1",
        extra={
            "fields": {
                "listen": config.listen,
                "port": orchestrator.port,
                "metrics_port": orchestrator.metrics_port,
                "ui_url": orchestrator.ui_url,
                "store": config.store_url,
                "replica": orchestrator.replica_id,
            }
        },
    )
    if on_ready is not None:
        on_ready(orchestrator)
    await stopping.wait()
    log.info("shutting down: draining in-flight calls and reconciles")
    await orchestrator.stop()
    log.info("stopped")


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    api_logs.setup(args.log_level)
    try:
        store_url = _store_url(args.store)
    except errors.InvalidRequest as exc:
        print(f"dcnr-orchestrator: error: --store: {exc}", file=sys.stderr)
        return 2
    if args.command in ("up", "serve"):
        # The process's collector, tuned for holding every record (issue 13): only here,
        # where the process is ours, never in a library or a test process.
        collector.tune()
    if args.command == "up":
        return _up(args)
    try:
        if args.command == "init-store":
            for line in asyncio.run(url.init_store(store_url)):
                print(line)
            print(asyncio.run(_init_identity_ca(store_url)))
            return 0
        try:
            server_tls = _server_tls(args)
            if server_tls is not None:
                api_tls.ReloadingServerCredentials(server_tls)  # the files are usable, now
            admitting = admission_flags.read(args)
        except (_Usage, api_tls.TlsError, ValueError) as exc:
            print(f"dcnr-orchestrator: error: {exc}", file=sys.stderr)
            return 2
        try:
            control = config.ControlPlaneConfig(
                **{n: getattr(args, n) for n in _TIMINGS},
                max_pending_pnodes=admitting.max_pending_pnodes,
            )
        except ValueError as exc:
            print(f"dcnr-orchestrator: error: --{str(exc).replace('_', '-')}", file=sys.stderr)
            return 2
        blob_store = args.blob_store or _default_blob_store(store_url)
        if not blob_store.startswith(("file:///", "s3://")):
            print(
                f"dcnr-orchestrator: error: --blob-store {blob_store!r}: must be an absolute "
                "file:///dir/ or s3://bucket/prefix/ (agents must all reach it)",
                file=sys.stderr,
            )
            return 2
        if args.step_timeout <= 0 or args.max_message_bytes <= 0:
            print(
                "dcnr-orchestrator: error: --step-timeout and --max-message-bytes must be positive",
                file=sys.stderr,
            )
            return 2
        try:
            admin_tokens = (
                frozenset(auth.load_tokens(args.admin_token_file))
                if args.admin_token_file
                else frozenset()
            )
        except (OSError, ValueError) as exc:
            print(f"dcnr-orchestrator: error: --admin-token-file: {exc}", file=sys.stderr)
            return 2
        try:
            read_only_tokens = (
                frozenset(auth.load_tokens(args.read_only_token_file, "--read-only-token-file"))
                if args.read_only_token_file
                else frozenset()
            )
            auth.Tokens(admin_tokens, read_only_tokens)  # the roles' rules, checked up front
        except (OSError, ValueError) as exc:
            print(f"dcnr-orchestrator: error: --read-only-token-file: {exc}", file=sys.stderr)
            return 2
        try:
            identity_pem = _identity_ca(args)
        except (OSError, ValueError) as exc:
            print(f"dcnr-orchestrator: error: {exc}", file=sys.stderr)
            return 2
        if args.ui_listen is not None:
            try:
                addresses.split(args.ui_listen, "--ui-listen")
            except OSError as exc:
                print(f"dcnr-orchestrator: error: {exc}", file=sys.stderr)
                return 2
        if not args.identity_ttl > 0:
            print(f"dcnr-orchestrator: error: --identity-ttl: {args.identity_ttl} must be > 0",
                  file=sys.stderr)  # fmt: skip
            return 2
        if server_tls is None:
            log.warning(
                "--insecure: gRPC is plaintext; PNode credentials, admin tokens and tensors "
                "cross the network readable"
            )
        if args.driver_listen and args.data_plane_insecure:
            print("dcnr-orchestrator: error: --driver-listen serves mutual TLS and "
                  "--data-plane-insecure makes the data plane plaintext: give one or the other",
                  file=sys.stderr)  # fmt: skip
            return 2
        if args.data_plane_insecure:
            log.warning(
                "--data-plane-insecure: agents serve and dial the data plane plaintext; "
                "tensors cross the network readable and a listener is not authenticated "
                "(requests stay signed)"
            )
        serve_config = server.ServeConfig(
            store_url=store_url,
            listen=args.listen,
            metrics_listen=args.metrics_listen,
            ui_listen=args.ui_listen,
            grace_seconds=args.grace,
            replica_id=args.replica_id,
            control=control,
            admin_tokens=admin_tokens,
            tls=server_tls,
            read_only_tokens=read_only_tokens,
            join_tokens=admitting.join_tokens,
            admission=admitting.limits,
            identity_ca=identity_pem,
            identity_ttl=args.identity_ttl,
            data_plane_insecure=args.data_plane_insecure,
            driver_listen=args.driver_listen or None,
            stream_delivery=args.stream_delivery,
            driver=driver.DriverConfig(
                blob_store=blob_store if blob_store.endswith("/") else blob_store + "/",
                advertise=args.advertise,
                step_timeout=args.step_timeout,
                max_message_bytes=args.max_message_bytes,
            ),
        )

        def ready(orchestrator: server.Orchestrator) -> None:
            metrics = (
                f", metrics on port {orchestrator.metrics_port}"
                if orchestrator.metrics_port is not None
                else ""
            )
            transport = "TLS" if server_tls else "plaintext, --insecure"
            ui = f", dashboard on {orchestrator.ui_url}" if orchestrator.ui_url else ""
            print(
                f"dcnr-orchestrator: serving dcnr.v1 on {args.listen.rsplit(':', 1)[0]}:"
                f"{orchestrator.port} ({transport}; store {store_url}, replica "
                f"{orchestrator.replica_id}{metrics}{ui}); Ctrl-C or SIGTERM stops it",
                flush=True,
            )

        asyncio.run(_serve(serve_config, on_ready=ready))
        return 0
    except errors.StoreError as exc:
        print(f"dcnr-orchestrator: error: store {store_url}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"dcnr-orchestrator: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
