"""`serve` flags of admission and limits (issue 11), kept apart from `controller.main` so the
parser there only calls `add` and `read`.

    --join-token-file FILE        new PNodes must present one of these tokens (one per line)
    --register-rate RATE/BURST    Register per source address (default 5/20; 0: no limit)
    --call-rate RATE/BURST        Heartbeat, Resolve, BatchResolve, WatchEndpoints and
                                  ReportResult per caller identity (default 100/200)
    --max-pending-pnodes N        new PNodes are refused while N never-heartbeated ones exist
    --pending-retention S         (a timing, in `controller.main`'s group)
"""

from __future__ import annotations

import argparse
import dataclasses

from controller.runtime import ratelimit
from controller.services import admission, auth


@dataclasses.dataclass(frozen=True, slots=True)
class Admission:
    limits: admission.Limits
    join_tokens: frozenset[str]
    max_pending_pnodes: int


def add(serve: argparse.ArgumentParser) -> None:
    defaults = admission.Limits()
    group = serve.add_argument_group("admission and limits (docs/security.md)")
    group.add_argument(
        "--join-token-file", metavar="FILE", default=None,
        help="admit new PNodes only with one of these join tokens (one per line; default: "
        "open registration)",
    )  # fmt: skip
    group.add_argument(
        "--register-rate", metavar="RATE/BURST", default=_spell(defaults.register),
        help="Register calls per source address (default: %(default)s; 0: no limit)",
    )  # fmt: skip
    group.add_argument(
        "--call-rate", metavar="RATE/BURST", default=_spell(defaults.hot),
        help="Heartbeat/Resolve/BatchResolve/WatchEndpoints/ReportResult calls per caller "
        "credential (default: %(default)s; 0: no limit)",
    )  # fmt: skip
    group.add_argument(
        "--max-pending-pnodes", metavar="N", type=int, default=1000,
        help="refuse new PNodes while N registered ones never heartbeated (default: "
        "%(default)s)",
    )  # fmt: skip


def read(args: argparse.Namespace) -> Admission:
    """The flags' values; ValueError names the flag and what is wrong."""
    register = ratelimit.Limit.parse(args.register_rate, "--register-rate")
    hot = ratelimit.Limit.parse(args.call_rate, "--call-rate")
    if args.max_pending_pnodes < 1:
        raise ValueError(f"--max-pending-pnodes {args.max_pending_pnodes}: must be at least 1")
    tokens: frozenset[str] = frozenset()
    if args.join_token_file:
        path = args.join_token_file
        try:
            tokens = frozenset(auth.load_tokens(path))
        except OSError as exc:
            raise ValueError(f"--join-token-file {path}: {exc.strerror or exc}") from None
        except ValueError as exc:  # auth's message names its own flag: keep only the why
            why = str(exc).rpartition(": ")[2]
            raise ValueError(f"--join-token-file {path}: {why}") from None
    return Admission(
        limits=admission.Limits(register=register, hot=hot),
        join_tokens=tokens,
        max_pending_pnodes=args.max_pending_pnodes,
    )


def _spell(limit: ratelimit.Limit) -> str:
    return "0" if limit.unlimited else f"{limit.rate:g}/{limit.burst}"
