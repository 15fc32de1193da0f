"""`python -m sim --seed N --pnode-hours H [--report PATH]`: run, print what it found.

Exit status: 0 when every invariant held, 1 when one broke (the seed and the trace tail are
printed, so the run can be replayed), 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from pathlib import Path

from sim import regression, report, world


def parse(argv: list[str]) -> tuple[world.Params, argparse.Namespace]:
    defaults = world.Params()
    parser = argparse.ArgumentParser(prog="python -m sim", description=__doc__)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--pnode-hours", type=float, default=defaults.pnode_hours)
    parser.add_argument("--pnodes", type=int, default=defaults.pnodes)
    parser.add_argument("--replicas", type=int, default=defaults.replicas)
    parser.add_argument("--networks", type=int, default=defaults.networks)
    parser.add_argument(
        "--liars",
        type=float,
        default=defaults.liars,
        help="share of joining PNodes that lie on some of their results (0 to 1)",
    )
    parser.add_argument("--report", type=Path, help="write the report (markdown) here")
    parser.add_argument("--trace", type=Path, help="write the whole event trace here")
    parser.add_argument(
        "--regressions",
        type=Path,
        help="when an invariant breaks, write a test replaying the seed into this directory",
    )
    args = parser.parse_args(argv)
    for flag, value, low in (
        ("--pnode-hours", args.pnode_hours, 1.0),
        ("--pnodes", args.pnodes, 1),
        ("--replicas", args.replicas, 1),
        ("--networks", args.networks, 1),
    ):
        if value < low:
            parser.error(f"{flag} {value}: must be at least {low}")
    if not 0.0 <= args.liars <= 1.0:
        parser.error(f"--liars {args.liars}: must be a share between 0 and 1")
    params = world.Params(
        seed=args.seed,
        pnode_hours=args.pnode_hours,
        pnodes=args.pnodes,
        replicas=args.replicas,
        networks=args.networks,
        liars=args.liars,
    )
    return params, args


def main(argv: list[str] | None = None) -> int:
    params, args = parse(sys.argv[1:] if argv is None else argv)
    # Simulated liars fail checks and get Bugged by design: the servers' warnings about each
    # would drown the report.
    for name in ("dcnr.validation", "dcnr.trust"):
        logging.getLogger(name).setLevel(logging.ERROR)
    outcome = asyncio.run(report.simulate(params, keep_trace=args.trace is not None))
    text = report.markdown(outcome)
    print(text)
    if args.report is not None:
        args.report.write_text(text)
    if args.trace is not None:
        args.trace.write_text("\n".join(outcome.trace) + "\n")
    if outcome.violations:
        print(f"\nINVARIANT BROKEN with --seed {params.seed}; trace tail:", file=sys.stderr)
        for line in outcome.tail:
            print(f"  {line}", file=sys.stderr)
        if args.regressions is not None:
            saved = regression.write(outcome, args.regressions)
            print(f"regression test written: {saved}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
