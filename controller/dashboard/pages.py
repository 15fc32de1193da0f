"""What each dashboard page shows, as JSON-ready dicts, computed from records.

Pure: the callers pass the records, the liveness judgement and `now`; nothing here reads a
store or a clock. The same dicts are served at `/api/...` and pushed by `/api/watch/...`
(docs/operations.md, "Dashboard"), so they are the dashboard's contract with its pages and
with anyone scripting against it: add keys, do not rename them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime
from typing import Any

from api.resources import allocation as alloc_model
from api.resources import event as event_model
from api.resources import job as job_model
from api.resources import network as net_model
from api.resources import pnode as pnode_model

JSON = dict[str, Any]
#: Whether a PNode's lease is live at the moment of the question (`Liveness.is_live`).
IsLive = Callable[[str], bool]
#: The slot phase of a replica no allocation holds (no PNode fits, or not placed yet).
UNPLACED = "Unplaced"
#: Events on the overview, newest first.
RECENT_EVENTS = 30


def _time(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _cordoned(node: pnode_model.PNode) -> bool:
    return node.spec.unschedulable or node.spec.draining


def pnode_row(node: pnode_model.PNode, *, live: bool, hosted: int) -> JSON:
    capacity, allocated = node.spec.capacity, node.status.allocated
    return {
        "name": node.name,
        "phase": node.status.phase,
        "live": live,
        "bugged": node.status.trust.bugged,
        "cordoned": _cordoned(node),
        "draining": node.spec.draining,
        "address": node.spec.address,
        "cpu": {"capacity": capacity.cpu, "allocated": allocated.cpu},
        "memory": {"capacity": capacity.memory, "allocated": allocated.memory},
        "allocations": hosted,
        "strikes": node.status.trust.strikes,
    }


def network_row(net: net_model.Network) -> JSON:
    return {
        "name": net.name,
        "phase": net.status.phase,
        "ready": net.status.ready_slots,
        "desired": net.status.desired_slots or net.slot_count(),
        "vnodes": len(net.spec.vnodes),
        "deleting": net.metadata.deletion_timestamp is not None,
    }


def job_row(job: job_model.Job) -> JSON:
    status = job.status
    return {
        "name": job.name,
        "network": job.spec.network,
        "type": job.spec.type,
        "phase": status.phase,
        "step": status.step,
        "total_steps": status.total_steps,
        "epoch": status.epoch,
        "loss": status.loss,
        "accuracy": status.accuracy,
        "attempt": status.attempt,
        "driver": status.driver,
        "message": status.message,
    }


def event_row(event: event_model.Event) -> JSON:
    return {
        "object": event.involved_object.key(),
        "type": event.type,
        "reason": event.reason,
        "message": event.message,
        "count": event.count,
        "last": _time(event.last_timestamp),
    }


def recent(events: Iterable[event_model.Event], limit: int = RECENT_EVENTS) -> list[JSON]:
    newest = sorted(events, key=lambda e: (e.last_timestamp, e.name), reverse=True)
    return [event_row(e) for e in newest[:limit]]


def overview(
    *,
    pnodes: Iterable[pnode_model.PNode],
    allocations: Iterable[alloc_model.Allocation],
    networks: Iterable[net_model.Network],
    jobs: Iterable[job_model.Job],
    events: Iterable[event_model.Event],
    is_live: IsLive,
) -> JSON:
    hosted = Counter(a.spec.pnode for a in allocations)
    rows = [
        pnode_row(n, live=is_live(n.name), hosted=hosted[n.name])
        for n in sorted(pnodes, key=lambda n: n.name)
    ]
    phases = Counter(r["phase"] for r in rows)
    return {
        "pnodes": rows,
        "counts": {
            "pnodes": len(rows),
            **{phase: phases[phase] for phase in ("Ready", "NotReady", "Lost")},
            "Bugged": sum(r["bugged"] for r in rows),
            "Cordoned": sum(r["cordoned"] for r in rows),
        },
        "networks": [network_row(n) for n in sorted(networks, key=lambda n: n.name)],
        "jobs": [job_row(j) for j in _newest_first(jobs)],
        "events": recent(events),
    }


def _newest_first(jobs: Iterable[job_model.Job]) -> list[job_model.Job]:
    by_name = sorted(jobs, key=lambda j: j.name)  # a stable sort keeps ties A-Z
    return sorted(by_name, key=lambda j: _time(j.metadata.creation_timestamp) or "", reverse=True)


def _slot_phase(alloc: alloc_model.Allocation | None, is_live: IsLive) -> str:
    if alloc is None:
        return UNPLACED
    if alloc.status.phase == "Running" and not is_live(alloc.spec.pnode):
        return "PNodeDown"  # its PNode's lease ran out: the network loop will move it
    return alloc.status.phase


def network_graph(
    net: net_model.Network,
    allocations: Sequence[alloc_model.Allocation],
    *,
    is_live: IsLive,
    events: Iterable[event_model.Event] = (),
) -> JSON:
    """One graph node per VNode replica slot the network runs now (tiebreakers included),
    plus any allocation of a slot past that count still being stopped; an edge from every
    replica of an input to every replica of the VNode that reads it (each replica of a
    VNode receives from one replica of each input, chosen at run time)."""
    held = {(a.spec.vnode, a.spec.replica): a for a in allocations}
    nodes: list[JSON] = []
    ids: dict[str, list[str]] = {}
    tiebreakers = set(net.status.tiebreakers)
    for v in net.spec.vnodes:
        count = net.replicas_of(v)
        extra = sorted(r for (name, r) in held if name == v.name and r >= count)
        for replica in [*range(count), *extra]:
            alloc = held.get((v.name, replica))
            slot = f"{v.name}#{replica}"
            ids.setdefault(v.name, []).append(slot)
            nodes.append(
                {
                    "id": slot,
                    "vnode": v.name,
                    "replica": replica,
                    "kind": v.kind,
                    "critical": v.critical,
                    "tiebreaker": v.name in tiebreakers and replica == count - 1,
                    "pnode": alloc.spec.pnode if alloc is not None else "",
                    "epoch": alloc.spec.epoch if alloc is not None else 0,
                    "phase": _slot_phase(alloc, is_live),
                    "reason": alloc.status.reason if alloc is not None else "",
                }
            )
    edges = [
        {"id": f"{src}>{dst}", "source": src, "target": dst}
        for v in net.spec.vnodes
        for parent in v.inputs
        for src in ids.get(parent, [])
        for dst in ids.get(v.name, [])
    ]
    return {
        "network": network_row(net),
        "validation": net.spec.validation,
        "tiebreakers": sorted(tiebreakers),
        "conditions": [c.model_dump(mode="json") for c in net.status.conditions],
        "nodes": nodes,
        "edges": edges,
        "events": recent(events),
    }


def pnode_detail(
    node: pnode_model.PNode,
    allocations: Sequence[alloc_model.Allocation],
    *,
    live: bool,
    lease_expiry: datetime | None,
    events: Iterable[event_model.Event] = (),
) -> JSON:
    trust = node.status.trust
    return {
        "pnode": pnode_row(node, live=live, hosted=len(allocations)),
        "capacity": node.spec.capacity.model_dump(mode="json"),
        "allocated": node.status.allocated.model_dump(mode="json"),
        "labels": dict(node.metadata.labels),
        "datasets": list(node.spec.datasets),
        "allocations": [
            {
                "name": a.name,
                "network": a.spec.network,
                "vnode": a.spec.vnode,
                "replica": a.spec.replica,
                "epoch": a.spec.epoch,
                "phase": a.status.phase,
                "cpu": a.spec.resources.cpu,
                "memory": a.spec.resources.memory,
            }
            for a in sorted(allocations, key=lambda a: a.name)
        ],
        "trust": {
            "strikes": trust.strikes,
            "bugged": trust.bugged,
            "bugged_since": _time(trust.bugged_since),
            "consecutive_valid": trust.consecutive_valid,
            "valid_total": trust.valid_total,
            "strikes_total": trust.strikes_total,
            "window": trust.window,
        },
        "validation_events": [
            e.model_dump(mode="json") for e in reversed(node.status.validation_events)
        ],
        "lease": {
            "live": live,
            "expires": _time(lease_expiry),
            "incarnation": node.status.incarnation,
            "missed_heartbeats": node.status.missed_heartbeats,
            "phase_since": _time(node.status.phase_since),
            "registered_at": _time(node.status.registered_at),
        },
        "conditions": [c.model_dump(mode="json") for c in node.status.conditions],
        "events": recent(events),
    }


def job_detail(
    job: job_model.Job, points: Sequence[JSON], events: Iterable[event_model.Event] = ()
) -> JSON:
    """`points`: the job's curve (`controller.dashboard.curves`), oldest first."""
    return {
        "job": job_row(job),
        "spec": job.spec.model_dump(mode="json"),
        "checkpoint_step": job.status.checkpoint_step,
        "samples_per_second": job.status.samples_per_second,
        "conditions": [c.model_dump(mode="json") for c in job.status.conditions],
        "points": list(points),
        "events": recent(events),
    }
