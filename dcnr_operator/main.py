"""`dcnr-operator`: runs the kopf operator for Network and Job CRs.

Kubernetes credentials come the way kopf finds them (in-cluster service account, or
$KUBECONFIG); the orchestrator's address and admin token from flags or the environment
(DCNR_SERVER, DCNR_TOKEN_FILE), as the chart's operator Deployment sets them. TLS to the
orchestrator always, verified with --tls-ca (else gRPC's default roots: the file
$GRPC_DEFAULT_SSL_ROOTS_FILE_PATH names, or the bundle grpcio ships), with --tls-cert and
--tls-key for mutual TLS and --tls-server-name for the name its certificate carries (env
DCNR_TLS_CA, DCNR_TLS_CERT, DCNR_TLS_KEY, DCNR_TLS_SERVER_NAME). Plaintext only with
--insecure, which contradicts the TLS flags, and then with a warning.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import kopf

from api import tls as api_tls
from dcnr_operator import client as client_mod
from dcnr_operator import handlers

DEFAULT_RESYNC = 60.0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="dcnr-operator", description=__doc__)
    env = os.environ.get
    p.add_argument("--server", default=env("DCNR_SERVER", "127.0.0.1:7070"),
                   help="orchestrator gRPC address (env DCNR_SERVER)")  # fmt: skip
    p.add_argument("--token-file", default=env("DCNR_TOKEN_FILE", ""),
                   help="file holding the admin token (env DCNR_TOKEN_FILE)")  # fmt: skip
    p.add_argument("--tls-ca", default=env("DCNR_TLS_CA", ""),
                   help="CA bundle to verify the orchestrator's TLS certificate (env "
                        "DCNR_TLS_CA; default: gRPC's default roots)")  # fmt: skip
    p.add_argument("--tls-cert", default=env("DCNR_TLS_CERT", ""),
                   help="mutual TLS: the operator's certificate (env DCNR_TLS_CERT)")  # fmt: skip
    p.add_argument("--tls-key", default=env("DCNR_TLS_KEY", ""),
                   help="mutual TLS: its private key (env DCNR_TLS_KEY)")  # fmt: skip
    p.add_argument("--tls-server-name", default=env("DCNR_TLS_SERVER_NAME", ""),
                   help="name to expect in the orchestrator's certificate "
                   "(env DCNR_TLS_SERVER_NAME; default: the host of --server)")  # fmt: skip
    p.add_argument("--insecure", action="store_true",
                   help="plaintext gRPC to the orchestrator: the admin token crosses the "
                        "network readable (default: TLS)")  # fmt: skip
    p.add_argument("--namespace", "-n", action="append", default=[],
                   help="watch this namespace (repeatable); none: all namespaces")  # fmt: skip
    p.add_argument("--resync-seconds", type=float,
                   default=float(env("DCNR_RESYNC_SECONDS", DEFAULT_RESYNC)),
                   help="how often every CR is compared with the orchestrator")  # fmt: skip
    p.add_argument("--log-level", default=env("DCNR_LOG_LEVEL", "info"),
                   choices=["debug", "info", "warning", "error"])  # fmt: skip
    p.add_argument(
        "--liveness", default="", help="kopf's liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )
    return p


def configure(settings: kopf.OperatorSettings) -> None:
    """Where kopf keeps its state: annotations under dcnr.io (the CRD's status schema is
    structural, so status would prune kopf's fields), our own finalizer, no peering (one
    replica, Recreate strategy), and only warnings as Events (a timer's success every
    resync would flood them). No scanning: the CRDs are installed with the chart before the
    operator starts, and the namespaces to watch are named, so the operator needs no
    cluster-wide access to CRDs or namespaces (least privilege, docs/operator.md)."""
    settings.persistence.finalizer = handlers.FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="dcnr.io")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="dcnr.io", key="last-handled-configuration"
    )
    settings.peering.standalone = True
    settings.posting.level = logging.WARNING
    settings.scanning.disabled = True


class Usage(ValueError):
    """Flags that contradict each other; the message names them."""


def target(args: argparse.Namespace) -> client_mod.Target:
    if args.insecure:
        given = [f"--{f.replace('_', '-')}" for f in ("tls_ca", "tls_cert", "tls_key",
                 "tls_server_name") if getattr(args, f)]  # fmt: skip
        if given:
            raise Usage(
                f"--insecure and {given[0]} (or its DCNR_ environment variable) contradict "
                "each other: give one or the other"
            )
    token = Path(args.token_file).read_text().strip() if args.token_file else ""
    return client_mod.Target(
        server=args.server,
        token=token,
        insecure=args.insecure,
        tls_ca=Path(args.tls_ca) if args.tls_ca else None,
        tls_cert=Path(args.tls_cert) if args.tls_cert else None,
        tls_key=Path(args.tls_key) if args.tls_key else None,
        tls_server_name=args.tls_server_name,
    )


async def operate(
    args: argparse.Namespace,
    orchestrator: client_mod.Target,
    *,
    stop_flag: asyncio.Event | None = None,
) -> None:
    """The operator until `stop_flag` is set (or the task cancelled)."""
    c = client_mod.Client(orchestrator)
    registry = kopf.OperatorRegistry()
    handlers.register(registry, resync=args.resync_seconds)
    # kopf's own login (in-cluster service account, or $KUBECONFIG), as `kopf run` does.
    kopf.on.login(registry=registry)(kopf.login_with_service_account)
    kopf.on.login(registry=registry)(kopf.login_with_kubeconfig)
    settings = kopf.OperatorSettings()
    configure(settings)
    options: dict[str, Any] = (
        {"namespaces": args.namespace} if args.namespace else {"clusterwide": True}
    )
    try:
        await kopf.operator(
            registry=registry,
            settings=settings,
            standalone=True,
            memo=kopf.Memo(client=c),
            stop_flag=stop_flag,
            liveness_endpoint=args.liveness or None,
            **options,
        )
    finally:
        await c.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        orchestrator = target(args)
    except Usage as exc:
        print(f"dcnr-operator: error: {exc}", file=sys.stderr)
        return 2
    tls = orchestrator.tls
    if tls is None:
        logging.getLogger("dcnr.operator").warning(
            "--insecure: plaintext gRPC to %s; the admin token crosses the network readable",
            orchestrator.server,
        )
    else:
        try:
            tls.credentials()  # the files are usable now, not at the first reconcile
        except api_tls.TlsError as exc:
            print(f"dcnr-operator: error: {exc}", file=sys.stderr)
            return 2
    try:
        asyncio.run(operate(args, orchestrator))
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
