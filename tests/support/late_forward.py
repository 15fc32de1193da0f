"""An agent whose Forward messages to some VNodes arrive after the step's gradient: the real
`dcnr-agent`, with the data plane made to handle a training Forward to a `--late-vnode`
only once a Backward of the same step and attempt to the same replica has been handled (or
`--late-wait` seconds passed, so a gradient that never comes delays nothing for long).
Test-only; nothing here ships.

    python -m tests.support.late_forward --late-vnode fc2 [--late-wait S] \\
        [--late-log PATH] AGENT FLAGS...

This is the ordering a slow replica meets when its siblings reach a quorum without it (the
child accepts two of three results and sends its gradient to all three) made certain
instead of a matter of timing: a test with it fails at once when an early gradient is
refused. `--late-log` appends one line per Forward that waited ("STEP backward-first" when
the gradient came first, "STEP waited-out" otherwise), so a test can check that the
ordering happened at all.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any

from agent import dataplane, vnode
from agent import main as agent_main

Key = tuple[str, str, int, str, int, int]


def install(*, vnodes: frozenset[str], wait: float, log: str = "") -> None:
    """Wrap `DataPlane._message` (test-only: a private method) to reorder as described."""
    original = dataplane.DataPlane._message
    handled: dict[Key, asyncio.Event] = {}

    def key(request: Any) -> Key:
        return (
            request.network, request.target_vnode, request.target_replica, request.job,
            request.attempt, request.step,
        )  # fmt: skip

    async def message(self: dataplane.DataPlane, request: Any, *args: Any, **kw: Any) -> bool:
        training = request.WhichOneof("position") == "step"
        if not training or request.target_vnode not in vnodes:
            return await original(self, request, *args, **kw)
        done = handled.setdefault(key(request), asyncio.Event())
        if not kw.get("forward", True):
            try:
                return await original(self, request, *args, **kw)
            finally:
                done.set()
        if request.sender_vnode != vnode.DRIVER:
            try:
                await asyncio.wait_for(done.wait(), wait)
                how = "backward-first"
            except TimeoutError:
                how = "waited-out"
            if log:  # one short line, as the liar's log: no worth a thread
                with open(log, "a") as f:  # noqa: ASYNC230
                    f.write(f"{request.step} {how}\n")
        if len(handled) > 4096:  # old steps: forget (a test run has far fewer)
            handled.clear()
        return await original(self, request, *args, **kw)

    dataplane.DataPlane._message = message  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="late_forward", add_help=False)
    parser.add_argument("--late-vnode", action="append", default=[])
    parser.add_argument("--late-wait", type=float, default=2.0)
    parser.add_argument("--late-log", default="")
    ours, rest = parser.parse_known_args(argv)
    install(vnodes=frozenset(ours.late_vnode), wait=ours.late_wait, log=ours.late_log)
    return agent_main.main(rest)


if __name__ == "__main__":
    sys.exit(main())
