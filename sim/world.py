"""The simulation: seeded churn of simulated agents against real replicas, one event at a time.

Single-threaded and discrete-event: a heap of (time, sequence, event); the clock jumps to
each event, the event runs to completion (its store calls inline, see `sim.inline`), then
every live replica dispatches the reconciles it queued. Every random choice comes from the
seed (the churn's `random.Random(seed)`, and streams of their own for the data plane and
for record uids), keys are processed in sorted order, and each event appends one line to
the trace, whose SHA-256 is the run's digest: the same seed gives the same digest, whatever
PYTHONHASHSEED is. Identity keys, certificates and ECDSA signatures are random, and never
enter the trace or any decision but whether they verify.

What is simulated, and at what grain, is in docs/simulator.md.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import itertools
import random
from collections import Counter, deque
from typing import Any

import grpc
import numpy as np

from api import identity, signed, tensors
from api.dcnr.v1 import common_pb2, pnode_pb2, resolve_pb2, validation_pb2, vnode_pb2
from api.resources import allocation, meta, network, pnode
from controller import config as config_mod
from controller.trust import book as trust
from controller.trust import evidence
from sim import clock as sim_clock
from sim import inline, invariants
from sim import replica as replica_mod
from store import base, errors, sqlite

GIB = 2**30
#: PNode shapes a joining agent draws from: (cpu millicores, memory bytes).
SHAPES = ((2000, 4 * GIB), (4000, 8 * GIB), (8000, 16 * GIB))
#: VNode shapes a network draws from.
VNODE_SHAPES = ((500, GIB), (1000, GIB), (1500, 2 * GIB))
TAIL = 40
#: What an honest VNode sends its child, and what a liar sends instead: tensors `api.checks`
#: passes and refuses (a dense VNode's output must be finite).
HONEST = np.array([[0.5, 1.0]], dtype=np.float32)
LIES = (
    np.array([[0.5, np.nan]], dtype=np.float32),
    np.array([[np.inf, 1.0]], dtype=np.float32),
)
FORWARD = signed.full_method("Forward")


@dataclasses.dataclass(frozen=True, slots=True)
class Params:
    seed: int = 1
    pnode_hours: float = 1_000_000.0
    #: Fleet size the joins keep the fleet around.
    pnodes: int = 60
    replicas: int = 2
    networks: int = 6
    vnodes_per_network: int = 6
    #: Timings, simulated seconds: the grain of the simulation (docs/simulator.md).
    lease: float = 43200.0
    heartbeat: float = 14400.0
    view_refresh: float = 21600.0
    lost_grace: float = 14400.0
    #: Churn, in simulated hours: mean time to each kind of fault.
    mean_life_hours: float = 400.0
    pause_every_hours: float = 400.0
    replica_death_every_hours: float = 300.0
    #: Share of agents whose heartbeats come late (up to `slow_factor` x the interval).
    slow_fraction: float = 0.2
    slow_factor: float = 1.6
    #: State invariants are checked at this interval (fencing and resolution at every call).
    check_every: float = 28800.0
    #: Share of joining PNodes that lie, the share of their results that are lies, and the
    #: share of the honest results a liar receives that it falsely accuses.
    liars: float = 0.1
    lie_share: float = 0.5
    false_accusations: float = 0.2
    #: Mean simulated hours between two results sampled on the data plane, per network (a
    #: result: one parent replica's Forward to one child replica; the cap on report volume).
    results_every_hours: float = 1.0
    #: Identity certificate lifetime: the server's 3600 s against its 4 s lease, in leases.
    identity_ttl: float = 900 * 43200.0

    def control(self) -> config_mod.ControlPlaneConfig:
        return config_mod.ControlPlaneConfig(
            heartbeat_interval=self.heartbeat,
            lease_duration=self.lease,
            lost_grace=self.lost_grace,
            lost_retention=4 * self.lease,
            pending_retention=2 * self.lease,
            max_pending_pnodes=10 * self.pnodes,
            view_refresh=self.view_refresh,
            replica_lease=self.lease,
            resync_every=12 * self.lease,
            unschedulable_retry=self.heartbeat,
            event_ttl=self.lease,
            workers_per_loop=1,
        )


@dataclasses.dataclass(slots=True)
class Agent:
    name: str
    cpu: int
    memory: int
    slow: bool
    replica: str
    credential: str = ""
    incarnation: int = 0
    known: int = 0
    #: slot name → (network, vnode, replica, epoch) the agent runs.
    held: dict[str, tuple[str, str, int, int]] = dataclasses.field(default_factory=dict)
    state: str = "up"  # up | paused | dead
    #: Bumped when the agent stops: heartbeats scheduled before are void.
    generation: int = 0
    liar: bool = False
    #: Its identity key (one per PNode, made at join), and the certificate (DER) its last
    #: registration got, valid until `certificate_expiry` (simulated seconds).
    key: identity.PrivateKey | None = None
    csr: bytes = b""
    certificate: bytes = b""
    certificate_expiry: float = 0.0


@dataclasses.dataclass(order=True, slots=True)
class Event:
    at: float
    seq: int
    kind: str = dataclasses.field(compare=False)
    args: tuple[Any, ...] = dataclasses.field(compare=False, default=())


class Simulation:
    def __init__(self, params: Params) -> None:
        self.params = params
        self.config = params.control()
        self.rng = random.Random(params.seed)
        #: The data plane's draws (who lies, which results, which lie): from the seed too,
        #: but a stream of their own, so that liars and results leave the churn's draws as
        #: they are (a run with `liars` 0 meets the same faults at the same times).
        self.plane = random.Random(params.seed ^ 0x11A5)
        self.clock = sim_clock.SimClock()
        uid_rng = random.Random(params.seed ^ 0x5EED)
        self.store = sqlite.SqliteStore.in_memory(
            clock=self.clock.wall,
            executor=inline.InlineExecutor(),
            uids=lambda: f"{uid_rng.getrandbits(128):032x}",
        )
        self.authority = identity.Authority.create(self.clock.now())
        self.verifier = identity.Verifier(self.authority.certificate_pem)
        #: Names of every PNode that ever lied (dead ones too: their records outlive them).
        self.liars: set[str] = set()
        #: (liar, record uid) → its judged lies (`invariants.liars_bugged`).
        self.lies: dict[tuple[str, str], invariants.Lies] = {}
        self.placements = invariants.BuggedPlacements(params.view_refresh)
        self.steps = itertools.count(1)
        #: (slot, epoch) → when a network loop first wrote it.
        self.placed_at: dict[tuple[str, int], float] = {}
        #: Every PNode seen Bugged at a check.
        self.bugged: set[str] = set()
        self.replicas: dict[str, replica_mod.Replica | None] = {}
        self.agents: dict[str, Agent] = {}
        #: Ground truth: pnode → (incarnation, when its lease really expires), from the
        #: answers agents got (a heartbeat accepted by any replica, a registration).
        self.truth: dict[str, tuple[int, float]] = {}
        self.heap: list[Event] = []
        self.seq = itertools.count()
        self.names = itertools.count()
        self.replica_starts = itertools.count()
        self.trace_hash = hashlib.sha256()
        self.tail: deque[str] = deque(maxlen=TAIL)
        self.events = 0
        self.counts: Counter[str] = Counter()
        self.violations: list[invariants.Violation] = []
        self.checked: Counter[str] = Counter()
        self.history = invariants.SlotHistory()
        bound_pending = 3 * params.lease + 2 * params.view_refresh
        bound_converge = 2 * params.lease + params.lost_grace + 2 * params.view_refresh
        self.pending = invariants.Since(bound_pending)
        self.unplaced = invariants.Since(bound_converge)
        self.pnode_hours = 0.0
        self.first_violation_pnode_hours: float | None = None
        #: network → the names of its desired slots.
        self.desired: dict[str, list[str]] = {}
        self.keep: list[str] = []  # full trace, when asked for
        self.keep_trace = False

    # -- the trace --------------------------------------------------------------------------

    def trace(self, line: str) -> None:
        text = f"{self.clock.monotonic():.0f} {line}"
        self.trace_hash.update(text.encode() + b"\n")
        self.tail.append(text)
        self.events += 1
        if self.keep_trace:
            self.keep.append(text)

    def violated(self, invariant: str, detail: str) -> None:
        found = invariants.Violation(invariant, self.clock.monotonic(), detail)
        if not self.violations:
            self.first_violation_pnode_hours = self.pnode_hours
        self.violations.append(found)
        self.trace(f"VIOLATION {found.invariant}: {detail}")

    # -- scheduling -------------------------------------------------------------------------

    def at(self, when: float, kind: str, *args: Any) -> None:
        heapq.heappush(self.heap, Event(when, next(self.seq), kind, args))

    def after(self, delay: float, kind: str, *args: Any) -> None:
        self.at(self.clock.monotonic() + delay, kind, *args)

    def timer(self, timer: replica_mod.Timer) -> None:
        self.at(timer.at, "timer", timer.replica, timer.loop, timer.key)

    def exp_hours(self, mean_hours: float) -> float:
        return self.rng.expovariate(1.0 / (mean_hours * 3600.0))

    def plane_hours(self, mean_hours: float) -> float:
        return self.plane.expovariate(1.0 / (mean_hours * 3600.0))

    # -- setup ------------------------------------------------------------------------------

    async def setup(self) -> None:
        p = self.params
        for i in range(p.replicas):
            await self.start_replica(f"r{i}")
        first = self.live_replicas()[0]
        for n in range(p.networks):
            created = await self.store.create(self.network(f"net{n}"))
            first.view.apply_written([created])
        for _ in range(p.pnodes):
            await self.join()
        self.after(p.check_every, "check")
        self.after(self.exp_hours(p.mean_life_hours / p.pnodes), "join")
        self.after(self.exp_hours(p.replica_death_every_hours), "replica-death")
        self.after(self.plane_hours(p.results_every_hours / p.networks), "result")

    def network(self, name: str) -> network.Network:
        vnodes = []
        for i in range(self.params.vnodes_per_network):
            cpu, memory = self.rng.choice(VNODE_SHAPES)
            vnodes.append(
                network.VNodeSpec(
                    name=f"v{i}",
                    kind="dense",
                    inputs=[f"v{i - 1}"] if i else [],
                    resources=network.ResourceRequest(cpu=f"{cpu}m", memory=memory),
                    replicas=self.rng.choice((1, 1, 2)),
                )
            )
        self.desired[name] = [
            allocation.slot_name(name, v.name, r) for v in vnodes for r in range(v.replicas)
        ]
        return network.Network(
            metadata=meta.ObjectMeta(name=name, finalizers=["dcnr.io/allocations"]),
            spec=network.NetworkSpec(vnodes=vnodes),
        )

    async def start_replica(self, rid: str) -> None:
        made = replica_mod.Replica(
            rid,
            store=self.store,
            clock=self.clock,
            config=self.config,
            authority=self.authority,
            verifier=self.verifier,
            identity_ttl=self.params.identity_ttl,
            rng=self.rng,
            schedule=self.timer,
            trace=self.trace,
            placed=self.placed,
        )
        self.replicas[rid] = made
        made.incarnation = next(self.replica_starts)
        await made.start()
        # Its background work, each first at a point of its own in its period.
        for kind, every in (
            ("persist", self.params.lease / 6),
            ("refresh", self.params.view_refresh),
        ):
            self.after(self.rng.uniform(0.1, 1.0) * every, kind, rid, made.incarnation)

    def placed(self, written: allocation.Allocation) -> None:
        key = (written.name, written.spec.epoch)
        if key not in self.placed_at:
            self.placed_at[key] = self.clock.monotonic()

    def live_replicas(self) -> list[replica_mod.Replica]:
        return [r for _, r in sorted(self.replicas.items()) if r is not None]

    # -- agents -----------------------------------------------------------------------------

    async def join(self) -> None:
        cpu, memory = self.rng.choice(SHAPES)
        name = f"pn{next(self.names)}"
        agent = Agent(
            name=name,
            cpu=cpu,
            memory=memory,
            slow=self.rng.random() < self.params.slow_fraction,
            replica=self.rng.choice(self.live_replicas()).id,
            liar=self.plane.random() < self.params.liars,
            key=identity.generate_key(),
        )
        assert agent.key is not None
        agent.csr = identity.csr_pem(agent.key, name)
        self.agents[name] = agent
        if agent.liar:
            self.liars.add(name)
        self.trace(f"join {name} cpu={cpu} slow={agent.slow} liar={agent.liar} via {agent.replica}")
        self.counts["joins"] += 1
        await self.register(agent)
        self.after(self.exp_hours(self.params.mean_life_hours), "death", name)
        self.after(self.exp_hours(self.params.pause_every_hours), "pause", name)

    def replica_for(self, agent: Agent) -> replica_mod.Replica:
        """The replica the agent talks to; when it died, another (the agent's client fails
        over)."""
        current = self.replicas.get(agent.replica)
        if current is None:
            current = self.rng.choice(self.live_replicas())
            agent.replica = current.id
        return current

    async def register(self, agent: Agent) -> None:
        rep = self.replica_for(agent)
        request = pnode_pb2.RegisterRequest(
            name=agent.name,
            capacity=common_pb2.Capacity(cpu_millis=agent.cpu, memory_bytes=agent.memory),
            data_plane_address=f"{agent.name}.sim:7000",
            agent_version="sim",
            csr=agent.csr,
        )
        call = replica_mod.Call(agent.credential or None).context()
        try:
            answer = await rep.pnodes.Register(request, call)
        except replica_mod.Refused as exc:
            self.counts["register-refused"] += 1
            self.trace(f"register {agent.name} refused by {rep.id}: {exc.code.name}")
            self.stop(agent, "dead")
            self.agents.pop(agent.name, None)
            return
        agent.credential = answer.credential
        agent.certificate = identity.certificate_der(answer.certificate)
        agent.certificate_expiry = self.clock.monotonic() + self.params.identity_ttl
        agent.incarnation = answer.incarnation
        agent.known = 0
        agent.held = {}
        self.truth[agent.name] = (answer.incarnation, self.clock.monotonic() + self.params.lease)
        self.counts["registrations"] += 1
        self.trace(f"register {agent.name} inc={answer.incarnation} via {rep.id}")
        self.schedule_heartbeat(agent)

    def schedule_heartbeat(self, agent: Agent) -> None:
        interval = self.params.heartbeat
        if agent.slow:
            interval *= 1.0 + self.rng.random() * (self.params.slow_factor - 1.0)
        self.after(interval, "heartbeat", agent.name, agent.generation)

    async def heartbeat(self, agent: Agent) -> None:
        rep = self.replica_for(agent)
        now = self.clock.monotonic()
        request = pnode_pb2.HeartbeatRequest(
            pnode_id=agent.name,
            incarnation=agent.incarnation,
            known_assignment_set_version=agent.known,
            assignment_statuses=[
                pnode_pb2.AssignmentStatus(
                    network=net,
                    vnode=vnode,
                    replica=replica,
                    epoch=epoch,
                    state=pnode_pb2.ASSIGNMENT_STATE_RUNNING,
                )
                for net, vnode, replica, epoch in (agent.held[k] for k in sorted(agent.held))
            ],
        )
        self.counts["heartbeats"] += 1
        try:
            answer = await rep.pnodes.Heartbeat(
                request, replica_mod.Call(agent.credential).context()
            )
        except replica_mod.Refused as exc:
            if exc.code != grpc.StatusCode.UNAUTHENTICATED:
                raise
            # Garbage-collected, or never seen: the agent takes it as a fence.
            self.counts["unauthenticated"] += 1
            self.trace(f"heartbeat {agent.name} unauthenticated by {rep.id}")
            await self.register(agent)
            return
        incarnation, expiry = self.truth.get(agent.name, (0, float("-inf")))
        true_expiry = expiry if incarnation == agent.incarnation else None
        accepted = answer.lease_state == pnode_pb2.LEASE_STATE_ACTIVE
        broken = invariants.fencing(
            accepted=accepted, lease_expiry=true_expiry, now=now, pnode=agent.name
        )
        self.checked["fencing"] += 1
        if broken:
            self.violated("fencing", broken)
        if not accepted:
            if true_expiry is not None and true_expiry > now:
                self.counts["fenced-within-lease"] += 1
            self.counts["fenced"] += 1
            self.trace(f"heartbeat {agent.name} fenced by {rep.id}")
            await self.register(agent)
            return
        self.truth[agent.name] = (agent.incarnation, now + self.params.lease)
        line = f"heartbeat {agent.name} via {rep.id}"
        if answer.HasField("assignment_set"):
            agent.known = answer.assignment_set.version
            agent.held = {
                allocation.slot_name(a.network, a.vnode, a.replica): (
                    a.network,
                    a.vnode,
                    a.replica,
                    a.epoch,
                )
                for a in answer.assignment_set.assignments
            }
            held = ",".join(f"{k}@{agent.held[k][3]}" for k in sorted(agent.held))
            line += f" set v{agent.known} [{held}]"
        self.trace(line)
        self.schedule_heartbeat(agent)

    # -- faults -----------------------------------------------------------------------------

    def stop(self, agent: Agent, state: str) -> None:
        agent.state = state
        agent.generation += 1

    async def run_event(self, event: Event) -> None:
        kind, args = event.kind, event.args
        if kind == "heartbeat":
            agent = self.agents.get(args[0])
            if agent is not None and agent.state == "up" and agent.generation == args[1]:
                await self.heartbeat(agent)
        elif kind == "timer":
            rep = self.replicas.get(args[0])
            if rep is not None:
                rep.enqueue(args[1], args[2])
        elif kind in ("persist", "refresh"):
            rep = self.replicas.get(args[0])
            if rep is not None and rep.incarnation == args[1]:  # not a dead instance's
                if kind == "persist":
                    await rep.persist()
                    every = self.params.lease / 6
                else:
                    await rep.refresh()
                    every = self.params.view_refresh
                self.trace(f"{kind} {rep.id} members={','.join(rep.membership.members)}")
                self.after(every, kind, rep.id, rep.incarnation)
        elif kind == "check":
            await self.check()
            self.after(self.params.check_every, "check")
        elif kind == "join":
            await self.join()
            self.after(self.exp_hours(self.params.mean_life_hours / self.params.pnodes), "join")
        elif kind == "death":
            agent = self.agents.pop(args[0], None)
            if agent is not None:
                self.stop(agent, "dead")
                self.counts["deaths"] += 1
                self.trace(f"death {agent.name}")
        elif kind == "pause":
            agent = self.agents.get(args[0])
            if agent is not None and agent.state == "up":
                self.stop(agent, "paused")
                length = self.rng.uniform(0.2, 3.0) * self.params.lease
                self.counts["pauses"] += 1
                self.trace(f"pause {agent.name} for {length:.0f}s")
                self.after(length, "resume", agent.name)
            if agent is not None:
                self.after(self.exp_hours(self.params.pause_every_hours), "pause", args[0])
        elif kind == "resume":
            agent = self.agents.get(args[0])
            if agent is not None and agent.state == "paused":
                agent.state = "up"
                self.trace(f"resume {agent.name}")
                await self.heartbeat(agent)
        elif kind == "replica-death":
            live = self.live_replicas()
            if len(live) > 1:
                dying = self.rng.choice(live)
                self.replicas[dying.id] = None  # its unpersisted renewals die with it
                self.counts["replica-deaths"] += 1
                self.trace(f"replica-death {dying.id}")
                self.after(
                    self.rng.uniform(0.2, 2.0) * self.params.lease, "replica-start", dying.id
                )
            self.after(self.exp_hours(self.params.replica_death_every_hours), "replica-death")
        elif kind == "result":
            await self.result()
            every = self.params.results_every_hours / self.params.networks
            self.after(self.plane_hours(every), "result")
        elif kind == "replica-start":
            await self.start_replica(args[0])
            self.trace(f"replica-start {args[0]}")
        else:
            raise ValueError(f"unknown event kind {kind!r}")

    # -- the data plane, abstractly: results, lies and reports -------------------------------

    def holders(self, net: str) -> dict[str, tuple[Agent, int]]:
        """Slots of `net` held by agents that are up with an unexpired identity certificate
        (without one nothing reaches them on the data plane): slot → (agent, epoch)."""
        now = self.clock.monotonic()
        found: dict[str, tuple[Agent, int]] = {}
        for name in sorted(self.agents):
            agent = self.agents[name]
            if agent.state != "up" or agent.certificate_expiry <= now:
                continue
            for slot in sorted(agent.held):
                held_net, _vnode, _replica, epoch = agent.held[slot]
                if held_net == net:
                    found[slot] = (agent, epoch)
        return found

    async def result(self) -> None:
        """One result on the data plane: a parent VNode replica's Forward reaches one replica
        of its child. A liar's is, at `lie_share`, a tensor that fails `api.checks`; an
        honest receiver reports it with the liar's signed request as evidence. A liar that
        receives an honest result accuses its sender, at `false_accusations`, without proof
        (no evidence, or the honest signed result, which passes when checked again)."""
        p = self.params
        net = self.plane.choice(sorted(self.desired))
        child = self.plane.randrange(1, p.vnodes_per_network)
        held = self.holders(net)
        senders = [s for s in self.desired[net] if s.startswith(f"{net}.v{child - 1}.")]
        targets = [s for s in self.desired[net] if s.startswith(f"{net}.v{child}.")]
        sender_slot, target_slot = self.plane.choice(senders), self.plane.choice(targets)
        if sender_slot not in held or target_slot not in held:
            return
        (producer, sender_epoch), (receiver, target_epoch) = held[sender_slot], held[target_slot]
        if producer is receiver:
            return
        self.counts["results"] += 1
        lie = producer.liar and self.plane.random() < p.lie_share
        sender = producer.held[sender_slot]
        target = receiver.held[target_slot]
        request = vnode_pb2.ForwardRequest(
            job="sim",
            step=next(self.steps),
            network=net,
            sender_vnode=sender[1],
            sender_replica=sender[2],
            sender_epoch=sender_epoch,
            target_vnode=target[1],
            target_replica=target[2],
            target_epoch=target_epoch,
            tensor=tensors.encode(self.plane.choice(LIES) if lie else HONEST),
            attempt=1,
        )
        if lie:
            self.counts["lies"] += 1
            if receiver.liar:
                self.counts["lies-unreported"] += 1  # liars do not report each other
                return
            await self.report(receiver, producer, request, [self.sign(producer, request)], True)
        elif receiver.liar and self.plane.random() < p.false_accusations:
            self.counts["false-accusations"] += 1
            proof = [self.sign(producer, request)] if self.plane.random() < 0.5 else []
            await self.report(receiver, producer, request, proof, False)

    def sign(self, agent: Agent, request: vnode_pb2.ForwardRequest) -> common_pb2.SignedMessage:
        """`request` as its sender signed it: with its own key and certificate."""
        assert agent.key is not None
        body = request.SerializeToString()
        return common_pb2.SignedMessage(
            method=FORWARD,
            body=body,
            certificate=agent.certificate,
            signature=identity.sign(agent.key, FORWARD, body),
        )

    async def report(
        self,
        reporter: Agent,
        accused: Agent,
        request: vnode_pb2.ForwardRequest,
        proof: list[common_pb2.SignedMessage],
        lie: bool,
    ) -> None:
        """The receiver's ReportResult through the real ValidationService; who paid is
        recorded against the liar's record (`invariants.Lies`)."""
        rep = self.replica_for(reporter)
        report = validation_pb2.ReportResultRequest(
            pnode_id=reporter.name,
            incarnation=reporter.incarnation,
            job=request.job,
            step=request.step,
            network=request.network,
            vnode=request.target_vnode,
            replica=request.target_replica,
            epoch=request.target_epoch,
            phase=validation_pb2.COMPUTE_PHASE_FORWARD,
            checks=[
                validation_pb2.CheckOutcome(
                    check="finite",
                    result=validation_pb2.CHECK_RESULT_FAILED,
                    message="values not finite",
                )
            ],
            subject_vnode=request.sender_vnode,
            subject_replica=request.sender_replica,
            subject_epoch=request.sender_epoch,
            evidence=proof,
        )
        rep.refusals.clear()
        self.counts["reports"] += 1
        try:
            answer = await rep.validation.ReportResult(
                report, replica_mod.Call(reporter.credential).context()
            )
        except replica_mod.Refused as exc:
            charged = [r for r in rep.refusals if r in evidence.REFUSALS]
            charged = [r for r in charged if r not in evidence.BLAMELESS]
            outcome = f"{exc.code.name} {','.join(rep.refusals)}"
            if charged:
                self.counts["accusers-charged"] += 1
                if not reporter.liar:
                    self.counts["honest-accusers-charged"] += 1
                await self.judged(reporter.name)
        else:
            verdict = answer.verdict
            outcome = validation_pb2.ValidationVerdict.Name(verdict)
            if verdict == validation_pb2.VALIDATION_VERDICT_REJECTED:
                self.counts["accused-struck"] += 1
                if not lie:
                    self.counts["honest-accused-struck"] += 1
                await self.judged(accused.name)
        kind = "lie" if lie else "false-accusation"
        self.counts[f"report {kind}: {outcome}"] += 1
        self.trace(
            f"report {kind} {reporter.name} accuses {accused.name}"
            f" ({request.sender_vnode}.{request.sender_replica}@{request.sender_epoch}"
            f" -> {request.target_vnode}.{request.target_replica}) via {rep.id}: {outcome}"
        )

    async def judged(self, name: str) -> None:
        """A strike the validation service recorded against `name`: a judged lie of a liar's
        current record (an honest PNode's strikes are `honest-not-bugged`'s business)."""
        if name not in self.liars:
            return
        try:
            record = await self.store.get(pnode.PNode, name)
        except errors.NotFound:
            return
        seen = self.lies.setdefault((name, record.metadata.uid), invariants.Lies())
        seen.add(self.clock.monotonic(), trust.TrustPolicy().strike_limit)

    # -- invariants -------------------------------------------------------------------------

    def live_pnodes(self, now: float) -> list[str]:
        """Agents up, whose lease really holds now, at the incarnation the truth records."""
        return sorted(
            name
            for name, agent in self.agents.items()
            if agent.state == "up"
            and self.truth.get(name, (0, 0.0))[1] > now
            and self.truth[name][0] == agent.incarnation
        )

    async def check(self) -> None:
        now = self.clock.monotonic()
        nodes = {n.name: n for n in await base.list_all(self.store, pnode.PNode)}
        allocs = await base.list_all(self.store, allocation.Allocation)
        for detail in invariants.capacity(nodes, allocs):
            self.violated("capacity", detail)
        for detail in invariants.replicas_apart(allocs):
            self.violated("replicas-apart", detail)
        for name, detail in self.history.observe(allocs):
            self.violated(name, detail)
        live = self.live_pnodes(now)
        for key in self.pending.observe(invariants.pending_on_live(allocs, nodes, live), now):
            self.violated("stranded-pending", f"{key} Pending past {self.pending.bound:.0f}s")
        short = invariants.unplaced(self.desired, allocs, nodes, live)
        feasible = short if self.room_for(nodes, allocs, live) >= len(short) else []
        for key in self.unplaced.observe(feasible, now):
            self.violated(
                "convergence",
                f"slot {key} not on a live Ready pnode for {self.unplaced.bound:.0f}s"
                " with room on live pnodes, and not re-placed meanwhile",
            )
        bugged = {
            name: (node.status.trust.bugged_since - sim_clock.EPOCH).total_seconds()
            for name, node in nodes.items()
            if node.status.trust.bugged and node.status.trust.bugged_since is not None
        }
        await self.check_resolution(allocs, now, bugged)
        self.check_trust(nodes, allocs, now, bugged)
        for name in ("capacity", "replicas-apart", "one-pnode-per-slot-epoch", "epochs-forward",
                     "stranded-pending", "convergence", "liars-bugged", "honest-not-bugged",
                     "no-placement-on-bugged"):  # fmt: skip
            self.checked[name] += 1
        self.trace(f"check pnodes={len(nodes)} live={len(live)} allocations={len(allocs)}")

    def check_trust(
        self,
        nodes: dict[str, pnode.PNode],
        allocs: list[allocation.Allocation],
        now: float,
        bugged: dict[str, float],
    ) -> None:
        for detail in invariants.liars_bugged(self.lies, nodes, now=now, bound=self.params.lease):
            self.violated("liars-bugged", detail)
        for detail in invariants.honest_not_bugged(nodes, self.liars):
            self.violated("honest-not-bugged", detail)
        self.bugged.update(bugged)
        self.counts["pnodes-bugged"] = len(self.bugged)
        for detail in self.placements.observe(allocs, bugged, now):
            self.violated("no-placement-on-bugged", detail)

    def room_for(
        self,
        nodes: dict[str, pnode.PNode],
        allocs: list[allocation.Allocation],
        live: list[str],
    ) -> int:
        """How many of the largest VNode shape still fit on live, Ready PNodes that are not
        Bugged: a lower
        bound on what placement could do (each PNode counted for the largest shape)."""
        cpu_need, mem_need = max(c for c, _ in VNODE_SHAPES), max(m for _, m in VNODE_SHAPES)
        used: Counter[str] = Counter()
        mem: Counter[str] = Counter()
        for a in allocs:
            used[a.spec.pnode] += a.spec.resources.cpu
            mem[a.spec.pnode] += a.spec.resources.memory
        room = 0
        for name in live:
            node = nodes.get(name)
            if node is None or node.status.phase != "Ready" or node.status.trust.bugged:
                continue
            cap = node.spec.capacity
            room += min((cap.cpu - used[name]) // cpu_need, (cap.memory - mem[name]) // mem_need)
        return room

    async def check_resolution(
        self, allocs: list[allocation.Allocation], now: float, bugged: dict[str, float]
    ) -> None:
        epochs = {a.name: a.spec.epoch for a in allocs}
        # The newest incarnation's lease, of agents alive or dead: a dead agent's lease ran
        # out when it stopped heartbeating.
        expiry = {name: at for name, (_inc, at) in self.truth.items()}
        rep = self.rng.choice(self.live_replicas())
        answered = []
        for net in sorted(self.desired):
            for i in range(self.params.vnodes_per_network):
                request = resolve_pb2.ResolveRequest(network=net, vnode=f"v{i}")
                answer = await rep.resolver.Resolve(request, replica_mod.Call().context())
                for e in answer.endpoints.endpoints:
                    slot = allocation.slot_name(net, f"v{i}", e.replica)
                    answered.append(invariants.Resolved(slot, e.pnode_id, e.epoch))
        self.counts["endpoints-resolved"] += len(answered)
        judged, tolerated = invariants.superseded_by_migration(
            answered,
            slot_epochs=epochs,
            placed_at=self.placed_at,
            bugged=bugged,
            refreshed_at=rep.refreshed_at,
        )
        if tolerated:
            self.counts["endpoints-superseded-by-migration"] += len(tolerated)
            self.trace(f"resolved via {rep.id}: {len(tolerated)} endpoints migrating off Bugged")
        for name, detail in invariants.resolution(
            judged, lease_expiry=expiry, slot_epochs=epochs, now=now
        ):
            self.violated(name, f"via {rep.id}: {detail}")
        self.checked["resolution-live"] += 1
        self.checked["resolution-current"] += 1

    # -- running ----------------------------------------------------------------------------

    async def run(self) -> None:
        await self.setup()
        last = 0.0
        while self.pnode_hours < self.params.pnode_hours and self.heap:
            event = heapq.heappop(self.heap)
            # Machines that exist (up or paused); dead agents leave `agents`.
            self.pnode_hours += len(self.agents) * (event.at - last) / 3600.0
            last = event.at
            self.clock.set(event.at)
            self.checked["no-crash"] += 1
            try:
                await self.run_event(event)
                for rep in self.live_replicas():
                    await rep.dispatch()
            except Exception as exc:  # a crash is a finding: record it and carry on
                self.violated("no-crash", f"{event.kind}{event.args}: {type(exc).__name__}: {exc}")
        await self.store.close()

    def digest(self) -> str:
        return self.trace_hash.hexdigest()
