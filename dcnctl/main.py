"""The argument parser, and the one place where failures become kubectl-style lines.

Exit codes: 0 success, 1 any error (one `error: ...` or `Error from server (...)` line per
problem on stderr, never a traceback), 2 bad usage (argparse), 130 interrupted.
Connection flags (--server, --context, --token, --insecure, --config, --request-timeout) are
accepted before or after the subcommand, as kubectl's global flags are. TLS unless
--insecure (or the context's insecure: true) asks for plaintext; then one warning line goes
to stderr, never to stdout, where output may be read by a program.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Sequence

from api import messages, version
from dcnctl import admin, apply, completion, config, contexts, describe, errors, follow, get
from dcnctl import client as client_mod
from dcnctl import infer as infer_mod

Handler = Callable[[argparse.Namespace, client_mod.Client], int]


def _globals(*, suppress: bool) -> argparse.ArgumentParser:
    """Connection flags; in subparsers they default to SUPPRESS so a flag given before the
    subcommand is not reset by the subparser's default."""
    default = argparse.SUPPRESS if suppress else None
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection")
    g.add_argument("--server", "-s", default=default, metavar="HOST:PORT",
                   help=f"orchestrator address (default: ${config.SERVER_ENV}, the current "
                        f"context, or {config.DEFAULT_SERVER})")  # fmt: skip
    g.add_argument("--context", default=default, help="use this context of the config file")
    g.add_argument("--token", default=default, help="bearer token for management calls")
    g.add_argument("--insecure", action=argparse.BooleanOptionalAction, default=default,
                   help="plaintext gRPC, even if TLS files are set (default: the context's "
                        "insecure, else TLS); the token crosses the network readable")  # fmt: skip
    g.add_argument(
        "--config",
        default=default,
        metavar="FILE",
        help=f"config file (default: ${config.CONFIG_ENV} or ~/.dcnr/config)",
    )
    g.add_argument(
        "--request-timeout",
        default="30s" if not suppress else argparse.SUPPRESS,
        metavar="DURATION",
        help="deadline of each call; 0: none (default: 30s)",
    )
    return p


def parser() -> argparse.ArgumentParser:
    common = _globals(suppress=True)
    top = argparse.ArgumentParser(
        prog="dcnctl",
        parents=[_globals(suppress=False)],
        description="dcnctl controls a DCNR cluster: networks, pnodes, vnodes and jobs.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {version.current()}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, help_text: str, **kw: object) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_text, description=help_text, parents=[common],
                              **kw)  # type: ignore[arg-type]  # fmt: skip

    p = command("apply", "Create or update networks from manifest files.")
    p.add_argument(
        "-f",
        "--filename",
        action="append",
        required=True,
        metavar="FILE|DIR|-",
        help="manifest file, directory of manifests, or - for stdin (repeatable)",
    )
    p.add_argument("--dry-run", choices=["none", "client", "server"], default="none",
                   help="client: validate locally only; server: validate on the server, "
                        "write nothing")  # fmt: skip

    p = command("get", "Display one or many resources.")
    p.add_argument("type", metavar="TYPE", help="networks|pnodes|vnodes|allocations|jobs|"
                                                "events (or TYPE/NAME)")  # fmt: skip
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--network", help="only vnodes or jobs of this network")
    p.add_argument("--for", dest="for_object", metavar="TYPE/NAME",
                   help="get events: only those of this object, e.g. network/digits")  # fmt: skip
    p.add_argument("-l", "--selector", help="label selector, e.g. app=digits,tier!=gpu")
    p.add_argument("-o", "--output", choices=["wide", "yaml", "json", "name", "dot"],
                   help="dot: one network's VNode graph as Graphviz text")  # fmt: skip
    p.add_argument("-w", "--watch", action="store_true", help="after listing, watch changes")
    p.add_argument("--no-headers", action="store_true", help="omit table headers")

    p = command("describe", "Show details of a network, pnode or job.")
    p.add_argument("type", metavar="TYPE", help="network|pnode|job (or TYPE/NAME)")
    p.add_argument("names", nargs="*", metavar="NAME")

    p = command("explain", "Explain a placement decision.")
    p.add_argument("topic", choices=["placement"])
    p.add_argument("network")
    p.add_argument("vnode")
    p.add_argument("--replica", type=int, default=0, help="replica slot (default: 0)")

    p = command("delete", "Delete networks by name or by manifest; cancel or delete jobs.")
    p.add_argument("names", nargs="*", metavar="TYPE NAME",
                   help="e.g. network digits; job NAME cancels a running job, "
                        "and deletes one that ended")  # fmt: skip
    p.add_argument("-f", "--filename", action="append", metavar="FILE|DIR|-")
    p.add_argument("--wait", action="store_true",
                   help="wait until the network is gone, or the job is Cancelled")  # fmt: skip
    p.add_argument("--timeout", default="60s", help="how long --wait waits (default: 60s)")
    p.add_argument("--ignore-not-found", action="store_true")
    p.add_argument("--dry-run", choices=["none", "server"], default="none")

    for verb, text in (("cordon", "Mark a pnode unschedulable."),
                       ("uncordon", "Mark a pnode schedulable again (undoes drain too)."),
                       ("drain", "Cordon a pnode and migrate its vnodes away.")):  # fmt: skip
        p = command(verb, text)
        p.add_argument("target", nargs="+", metavar="[pnode] NAME")
        if verb != "uncordon":
            p.add_argument("--reason", default="", help="recorded on the pnode")

    p = command("train", "Train a network: create a Job and follow its progress.")
    p.add_argument("network")
    p.add_argument("--data", metavar="URL",
                   help="file:// or s3:// training data for every source, instead of the "
                        "network's data refs; read by the agents (relative file:// "
                        "against their --workdir)")  # fmt: skip
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", choices=["sgd", "momentum", "adam"])
    p.add_argument("--lr", type=float, help="learning rate")
    p.add_argument("--checkpoint-interval", type=int, metavar="STEPS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--micro-batches", type=int, metavar="N",
                   help="cut each step's batch into N parts pipelined through the network "
                        "(same weights as N=1, the default; N must divide the batch "
                        "size)")  # fmt: skip
    p.add_argument("--name", help="job name (default: generated from the network's)")
    p.add_argument("--detach", action="store_true", help="print the job name and exit")

    p = command("infer", "Run inference on a network.")
    p.add_argument("network")
    p.add_argument("--input", "-i", required=True, metavar="FILE.npy|FILE.npz|FILE.json|-")
    p.add_argument("--source", help="the source vnode a .npy or bare JSON list is for")
    p.add_argument(
        "-o",
        "--output",
        dest="output_file",
        metavar="FILE.npy|FILE.npz",
        help="write the outputs here instead of printing them",
    )

    p = command("version", "Print the client and server versions.")
    p.add_argument("--client", action="store_true", help="client version only")
    p.add_argument("-o", "--output", choices=["json", "yaml"])

    p = command("completion", "Print a shell completion script.")
    p.add_argument("shell", choices=["bash", "zsh"])

    p = command("config", "Manage contexts in the config file.")
    cfg = p.add_subparsers(dest="config_command", metavar="SUBCOMMAND", required=True)
    q = cfg.add_parser("set-context", help="create or modify a context", parents=[common])
    q.add_argument("name")
    for flag in ("--tls-ca", "--tls-cert", "--tls-key"):
        q.add_argument(flag, metavar="FILE")
    q.add_argument("--tls-server-name", metavar="NAME",
                   help="the name to expect in the server's certificate")  # fmt: skip
    q = cfg.add_parser("use-context", help="make a context current", parents=[common])
    q.add_argument("name")
    q = cfg.add_parser("delete-context", help="remove a context", parents=[common])
    q.add_argument("name")
    q = cfg.add_parser("get-contexts", help="list contexts", parents=[common])
    q.add_argument("--no-headers", action="store_true")
    cfg.add_parser("current-context", help="print the current context", parents=[common])
    return top


HANDLERS: dict[str, Handler] = {
    "apply": apply.apply,
    "get": get.get,
    "describe": describe.describe,
    "explain": admin.explain,
    "delete": apply.delete,
    "cordon": admin.cordon,
    "uncordon": admin.cordon,
    "drain": admin.cordon,
    "train": follow.train,
    "infer": infer_mod.infer,
}


def _connect(args: argparse.Namespace) -> client_mod.Client:
    file = config.load(config.path_of(args.config))
    ctx = config.resolve(
        file, server=args.server, context=args.context, token=args.token, insecure=args.insecure
    )
    timeout = apply.parse_seconds(args.request_timeout, "--request-timeout")
    c = client_mod.Client(ctx, timeout=timeout)
    if not ctx.tls:  # one connection per invocation, so one warning
        _stderr(
            f"warning: --insecure: plaintext gRPC to {ctx.server}; the token and everything "
            "else cross the network readable"
        )
    return c


def run(args: argparse.Namespace, top: argparse.ArgumentParser) -> int:
    if args.command == "config":
        # For set-context, --server and --token are the values to store, not to connect with.
        return contexts.run(args)
    if args.command == "completion":
        sys.stdout.write(completion.script(top, args.shell))
        return 0
    if args.command == "version" and args.client:
        return admin.version(args, None)
    try:
        c = _connect(args)
    except errors.CliError:
        if args.command == "version":  # as kubectl: the client's version, then the error
            admin.version(args, None)
        raise
    try:
        if args.command == "version":
            return admin.version(args, c)
        return HANDLERS[args.command](args, c)
    finally:
        c.close()


def main(argv: Sequence[str] | None = None) -> int:
    top = parser()
    args = top.parse_args(argv)
    try:
        return run(args, top)
    except errors.CliError as exc:
        # One bounded line per problem, whatever went into the message.
        _stderr("\n".join(messages.clip(line) for line in str(exc).splitlines()))
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly, and keep Python from complaining
        # again when it flushes stdout at exit.
        with contextlib.suppress(OSError):
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        return 1


def _stderr(text: str) -> None:
    with contextlib.suppress(OSError):
        print(text, file=sys.stderr)
