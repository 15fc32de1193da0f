"""A chaos soak against real processes (issue 16): `python -m benchmarks.soak --seed N
--duration 15m --report benchmarks/results/soak-....md`, or `make soak`.

A moto server (DynamoDB), several `dcnr-orchestrator serve` replicas on it, agents, three
networks (digits, and two chains whose first VNodes want 2 replicas) and a training job of
digits. First the job runs undisturbed and its held-out accuracy is measured through
`Infer`; then the same job runs again while a seeded schedule (`soak_schedule`) SIGKILLs and
SIGSTOPs agents and replicas and stalls the store, one fault at a time. Throughout, a poller
reads the cluster through the public API (a different live replica each time) and feeds
`soak_invariants.Checker`; afterwards the report (`soak_report`) gives each invariant's
verdict with its evidence, the fault log and the re-convergence times.

Exit status: 0 when every invariant held, 1 when one did not, 2 when the soak itself could
not run (a process would not start, the cluster never converged before the faults).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from grpc import aio

from benchmarks import soak_api, soak_cluster, soak_report, soak_schedule
from benchmarks import soak_invariants as inv

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "examples" / "digits"
#: The orchestrator's default timings (`serve --help`); the bounds are derived from them.
LEASE, GRACE = 4.0, 2.0
POLL_EVERY = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class Options:
    seed: int = 1
    duration: float = 900.0
    replicas: int = 3
    agents: int = 6
    networks: int = 3
    epochs: int = 15
    report: Path | None = None
    json_out: Path | None = None
    workdir: Path | None = None
    #: Seconds the disturbed job may take after the faults stop, before it counts as stuck.
    training_timeout: float = 600.0


def parse_duration(text: str) -> float:
    """Seconds in "15m", "90s", "1h", "120" (seconds) → seconds; ValueError naming the value."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise ValueError(f"--duration {text!r}: expected a number with s, m or h (e.g. 15m)")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600}[match[2]]


def networks(count: int) -> list[dict[str, Any]]:
    """digits first, then chains whose first two VNodes want 2 replicas."""
    found: list[dict[str, Any]] = [yaml.safe_load((DIGITS / "network.yaml").read_text())]
    for i in range(1, count):
        vnodes: list[dict[str, Any]] = []
        for v in range(4):
            vnode: dict[str, Any] = {
                "name": f"v{v}", "kind": "input" if v == 0 else "dense",
                "resources": {"cpu": "100m", "memory": "64Mi"},
            }  # fmt: skip
            if v:
                vnode["inputs"] = [f"v{v - 1}"]
                vnode["params"] = {"units": 4}
            if v < 2:
                vnode["replicas"] = 2
            vnodes.append(vnode)
        found.append({
            "apiVersion": "dcnr.io/v1", "kind": "Network",
            "metadata": {"name": f"chain-{i}"}, "spec": {"vnodes": vnodes},
        })  # fmt: skip
    return found


def desired(manifests: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    return {
        m["metadata"]["name"]: {v["name"]: int(v.get("replicas", 1)) for v in m["spec"]["vnodes"]}
        for m in manifests
    }


class Soak:
    def __init__(self, opts: Options, workdir: Path) -> None:
        self.opts = opts
        self.t0 = time.monotonic()
        self.cluster = soak_cluster.Cluster(
            workdir, replicas=opts.replicas, agents=opts.agents, agent_cpu="1", agent_memory="1Gi"
        )
        self.manifests = networks(opts.networks)
        self.checker = inv.Checker(desired=desired(self.manifests), lease=LEASE, grace=GRACE)
        self.log: list[tuple[float, str]] = []
        self.clients: dict[str, soak_api.Client] = {}
        self._turn = 0
        self.training: dict[str, Any] = {}
        self.faults_done = 0
        #: The fault whose effects the schedule waits for; the poller sets `settled`.
        self.waiting_for: int | None = None
        self.settled = asyncio.Event()
        self.faults_over = False
        self.current_job = ""

    def now(self) -> float:
        return time.monotonic() - self.t0

    def note(self, text: str) -> None:
        at = self.now()
        self.log.append((at, text))
        print(f"[soak t={at:7.1f}s] {text}", flush=True)

    # -- the API, through whichever replica is up -----------------------------------------

    def client(self) -> soak_api.Client:
        live = [r for r in self.cluster.replicas if r.state == "up"]
        replica = live[self._turn % len(live)] if live else self.cluster.replicas[0]
        self._turn += 1
        if replica.name not in self.clients:
            self.clients[replica.name] = soak_api.Client(
                replica.address, ca=self.cluster.ca, token=self.cluster.token
            )
        return self.clients[replica.name]

    async def call(self, what: str, fn: Any, *, within: float = 120.0) -> Any:
        """fn(client) through live replicas in turn until it answers or `within` passes."""
        deadline = time.monotonic() + within
        while True:
            try:
                return await fn(self.client())
            except aio.AioRpcError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{what}: {exc.code().name} {exc.details()}") from None
                await asyncio.sleep(0.5)  # a replica down: the next one in turn

    # -- polling ----------------------------------------------------------------------------

    async def poll_once(self) -> inv.Round:
        up_before = {a.name for a in self.cluster.agents if a.state == "up"}
        client = self.client()
        started = self.now()
        vnodes = [(n, v) for n, vs in self.checker.desired.items() for v in vs]

        async def attempt(coro: Any) -> Any:
            try:
                return await coro
            except aio.AioRpcError:
                return None

        pnodes, allocations, endpoints = await asyncio.gather(
            attempt(client.list_pnodes()),
            attempt(client.list_allocations()),
            attempt(client.resolve(vnodes)),
        )
        ended = self.now()
        up_after = {a.name for a in self.cluster.agents if a.state == "up"}
        replica = next(r.name for r in self.cluster.replicas if r.address == client.address)
        return inv.Round(started, ended, replica, pnodes, allocations, endpoints,
                         frozenset(up_before & up_after))  # fmt: skip

    async def poller(self) -> None:
        while True:
            self.checker.observe(await self.poll_once())
            if self.waiting_for is not None and self.checker.settled(self.waiting_for):
                self.settled.set()
            await self.notice_exits()
            await asyncio.sleep(POLL_EVERY)

    async def notice_exits(self) -> None:
        for member, code in self.cluster.unexpected_exits():
            at = self.now()
            log_tail = soak_cluster.tail(member.log)
            self.checker.process_exited(member.name, at, code, log_tail)
            self.note(f"UNEXPECTED EXIT: {member.name} exited with {code}")
            if member.role == "agent":
                self.checker.agent_down(member.name, at)
            if member.role != "store":
                await asyncio.to_thread(self.cluster.restart, member)
                if member.role == "agent":
                    self.checker.agent_up(member.name, self.now())
                self.note(f"restarted {member.name} after its unexpected exit")

    async def converge(self, *, within: float) -> float:
        start = self.now()
        while self.now() - start < within:
            r = await self.poll_once()
            self.checker.observe(r)
            if r.complete and self.checker.converged(r):
                return self.now() - start
            await asyncio.sleep(POLL_EVERY)
        raise RuntimeError(f"the cluster did not converge within {within:.0f} s")

    # -- faults ------------------------------------------------------------------------------

    async def perform(self, fault: soak_schedule.Fault) -> None:
        c, ck = self.cluster, self.checker
        member = c.store if fault.kind == "stall-store" else c.member(fault.target)
        self.note(f"fault {fault.index}: {fault.describe()}")
        at = self.now()
        if fault.kind == "kill-agent":
            ck.agent_down(member.name, at)
            c.kill(member)
            ck.expect_moves(fault.index, member.name, at)
        elif fault.kind == "stop-agent":
            ck.agent_down(member.name, at)
            c.stop(member)
            if fault.hold > LEASE + GRACE:
                ck.expect_moves(fault.index, member.name, at)
        elif fault.kind == "kill-replica":
            c.kill(member)
        else:
            c.stop(member)
        await asyncio.sleep(fault.hold)  # the fault's hold: time passing is the point
        if fault.kind.startswith("kill-"):
            if member.state == "killed":
                await asyncio.to_thread(c.restart, member)
            verb = "restarted"
        else:
            c.cont(member)
            verb = "resumed (SIGCONT)"
        healed = self.now()
        if fault.kind.endswith("-agent"):
            ck.agent_up(member.name, healed)
        ck.healed(fault.index, fault.describe(), began=at, at=healed)
        self.note(f"fault {fault.index}: {member.name} {verb}")
        # Until its effects have re-converged, or its bound has passed: then rest.
        self.waiting_for = fault.index
        self.settled.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.settled.wait(), ck.bound + 2.0)
        self.note(f"fault {fault.index}: " + ("settled" if ck.settled(fault.index)
                                              else "NOT settled within its bound"))  # fmt: skip
        await asyncio.sleep(fault.rest)

    async def faults(self, until: float) -> None:
        schedule = soak_schedule.faults(
            self.opts.seed,
            agents=[a.name for a in self.cluster.agents],
            replicas=[r.name for r in self.cluster.replicas],
        )
        for fault in schedule:
            if self.now() >= until:
                return
            await self.perform(fault)
            self.faults_done += 1

    # -- training ----------------------------------------------------------------------------

    async def train(self, name: str) -> tuple[Any, float]:
        """Run job `name` over digits to its end; (final job, held-out accuracy)."""
        started = self.now()
        await self.call(f"Train {name}", lambda cl: cl.train(
            name, "digits", epochs=self.opts.epochs, seed=self.opts.seed))  # fmt: skip
        self.note(f"training job {name} started")
        return await self.finish(name, started)

    async def finish(self, name: str, started: float, *, within: float = 1e9) -> tuple[Any, float]:
        deadline = time.monotonic() + within
        while True:
            job = await self.call(f"GetJob {name}", lambda cl: cl.get_job(name))
            if job.status.phase in ("Succeeded", "Failed", "Cancelled"):
                break
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"job {name} still {job.status.phase} at step {job.status.step}/"
                    f"{job.status.total_steps} (attempt {job.status.attempt}): {job.status.message}"
                )
            await asyncio.sleep(1.0)
        self.note(f"training job {name} {job.status.phase} after {self.now() - started:.0f} s,"
                  f" step {job.status.step}, attempt {job.status.attempt}")  # fmt: skip
        if job.status.phase != "Succeeded":
            raise RuntimeError(f"job {name} ended {job.status.phase}: {job.status.message}")
        data = np.load(DIGITS / "data.npz")
        probabilities = await self.call(
            "Infer", lambda cl: cl.infer("digits", data["x_test"], output="loss")
        )
        accuracy = float(np.mean(np.argmax(probabilities, axis=1) == data["y_test"]))
        self.note(f"training job {name}: held-out accuracy {accuracy:.4f}")
        self.training[name] = {
            "phase": job.status.phase, "step": job.status.step, "attempts": job.status.attempt,
            "seconds": self.now() - started, "accuracy": accuracy,
        }  # fmt: skip
        return job, accuracy

    async def soaked_jobs(self) -> None:
        """The same job again and again while the faults go on (at least once), so training
        is under fire for the whole soak; each run's accuracy is compared."""
        index = 0
        while not self.faults_over:
            self.current_job = f"soaked-{index}"
            index += 1
            try:
                await self.train(self.current_job)
            except RuntimeError as exc:
                self.training[self.current_job] = {"error": str(exc)}

    def accuracy_verdict(self, calm: float) -> inv.Verdict:
        soaked = {n: v for n, v in self.training.items() if n.startswith("soaked")}
        diffs = {n: abs(v["accuracy"] - calm) for n, v in soaked.items() if "accuracy" in v}
        bad = [n for n in soaked if n not in diffs or diffs[n] > 0.01]
        summary = f"{len(soaked)} runs under faults, {len(diffs)} finished"
        if diffs:
            worst = max(diffs, key=lambda n: diffs[n])
            summary += (
                f"; worst {soaked[worst]['accuracy']:.4f} ({worst}) vs {calm:.4f} undisturbed,"
                f" {diffs[worst] * 100:.2f} points"
            )
        return inv.Verdict(
            "training accuracy within 1 point of the undisturbed run", bool(soaked) and not bad,
            summary + f"; {len(bad)} not within 1 point or not finished",
            [f"{n}: {json.dumps(v)}" for n, v in self.training.items()],
        )  # fmt: skip

    # -- the whole run -----------------------------------------------------------------------

    async def run(self) -> list[inv.Verdict]:
        c = self.cluster
        self.note(f"starting: moto server, {len(c.replicas)} replicas, {len(c.agents)} agents")
        await asyncio.to_thread(c.start_store)
        await asyncio.gather(*(asyncio.to_thread(c.start_replica, r) for r in c.replicas))
        await asyncio.gather(*(asyncio.to_thread(c.start_agent, a) for a in c.agents))
        for manifest in self.manifests:
            await self.call("Apply", lambda cl, m=manifest: cl.apply(m))
        took = await self.converge(within=180)
        self.note(f"{len(self.manifests)} networks applied and resolvable after {took:.1f} s")
        poller = asyncio.create_task(self.poller())
        accuracy: inv.Verdict | None = None
        try:
            _, calm = await self.train("undisturbed")
            fault_end = self.now() + self.opts.duration
            self.note(f"faults start, for {self.opts.duration:.0f} s (seed {self.opts.seed})")
            training = asyncio.create_task(self.soaked_jobs())
            await self.faults(fault_end)
            self.faults_over = True
            self.note(f"faults stop after {self.faults_done} faults")
            try:
                await asyncio.wait_for(training, self.opts.training_timeout)
            except TimeoutError:
                job = await self.call("GetJob", lambda cl: cl.get_job(self.current_job))
                self.training[self.current_job] = {"error": (
                    f"not finished {self.opts.training_timeout:.0f} s after the faults stopped:"
                    f" {job.status.phase} at step {job.status.step}/{job.status.total_steps},"
                    f" attempt {job.status.attempt}: {job.status.message}")}  # fmt: skip
                self.note(f"training job {self.current_job}: {self.training[self.current_job]}")
            accuracy = self.accuracy_verdict(calm)
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
        return self.checker.verdicts(accuracy=accuracy)

    async def close(self) -> None:
        for client in self.clients.values():
            await client.close()
        await asyncio.to_thread(self.cluster.close)


async def soak(opts: Options) -> int:
    with contextlib.ExitStack() as stack:
        workdir = opts.workdir or Path(
            stack.enter_context(tempfile.TemporaryDirectory(prefix="dcnr-soak-"))
        )
        s = Soak(opts, workdir)
        verdicts: list[inv.Verdict] = []
        failure = ""
        try:
            verdicts = await s.run()
        except Exception as exc:  # the soak could not run: still report what it saw
            failure = f"{type(exc).__name__}: {exc}"
            s.note(f"SOAK ABORTED: {failure}")
            verdicts = s.checker.verdicts()
        finally:
            await s.close()
        text = soak_report.render(s, verdicts, failure=failure)
        if opts.report is not None:
            opts.report.parent.mkdir(parents=True, exist_ok=True)
            opts.report.write_text(text)
            print(f"report: {opts.report}")
        else:
            print(text)
        if opts.json_out is not None:
            opts.json_out.write_text(json.dumps(soak_report.summary(s, verdicts, failure=failure),
                                                indent=2))  # fmt: skip
        if failure:
            return 2
        return 0 if all(v.holds is not False for v in verdicts) else 1


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--seed", type=int, default=1, help="seed of the fault schedule (default 1)")
    p.add_argument("--duration", default="15m",
                   help="how long faults go on (15m, 90s; default 15m)")
    p.add_argument("--replicas", type=int, default=3, help="orchestrator replicas (default 3)")
    p.add_argument("--agents", type=int, default=6, help="agents (default 6)")
    p.add_argument("--networks", type=int, default=3,
                   help="digits, then chains with 2-replica VNodes (default 3)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs of digits (default 15)")
    p.add_argument("--training-timeout", default="10m",
                   help="how long the job may still take once faults stop (default 10m)")
    p.add_argument("--report", type=Path, help="markdown report path (default: stdout)")
    p.add_argument("--json", type=Path, dest="json_out", help="verdicts as JSON, for tests")
    p.add_argument("--workdir", type=Path, help="keep logs and state here (default: a temp dir)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        duration = parse_duration(args.duration)
        training_timeout = parse_duration(args.training_timeout)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    minimums = (("--replicas", args.replicas, 1), ("--agents", args.agents, 2),
                ("--networks", args.networks, 1), ("--epochs", args.epochs, 1))  # fmt: skip
    for flag, value, low in minimums:
        if value < low:
            print(f"{flag} {value}: must be at least {low}", file=sys.stderr)
            return 2
    opts = Options(
        seed=args.seed, duration=duration, replicas=args.replicas, agents=args.agents,
        networks=args.networks, epochs=args.epochs, report=args.report, json_out=args.json_out,
        workdir=args.workdir, training_timeout=training_timeout,
    )  # fmt: skip
    return asyncio.run(soak(opts))


if __name__ == "__main__":
    sys.exit(main())
