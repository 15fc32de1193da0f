"""`describe network|pnode|job NAME`: kubectl's sections, for a human to read.

The last section, as in kubectl, is the object's Events (the server's ListEvents: placements,
migrations, fencing, strikes, job attempts and rollbacks), `<none>` when it has none. A
PNode without recorded events still shows the last validation outcomes its record keeps,
and a PNode with refused accusations (AccusationRefused events: the orchestrator found no
proof) lists them before its Events, those it made and those made against it.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from datetime import datetime

from api.resources import allocation, event, job, meta, network, pnode
from dcnctl import client as client_mod
from dcnctl import errors, events, get, kinds, render, tables

Client = client_mod.Client
INDENT = "  "
#: Column of the values of the top-level fields, as kubectl aligns them.
WIDTH = 16


def describe(args: argparse.Namespace, c: Client) -> int:
    kind, names = get._type_and_names(args.type, args.names)
    if kind is kinds.ALLOCATION:
        raise errors.local("describe takes network, pnode or job; see 'describe network NAME' "
                           "for where its vnodes run")  # fmt: skip
    if not names:
        raise errors.local(f"give the name of the {kind.singular} to describe")
    now = get.now()
    texts = []
    for name in names:
        found = kinds.get(c, kind, name)
        seen = events.fetch(c, f"{kind.kind}/{name}")
        if isinstance(found, network.Network):
            held = kinds.list_all(c, kinds.ALLOCATION, network=name)
            texts.append(network_text(found, _allocations(held), now, seen))
        elif isinstance(found, pnode.PNode):
            held = kinds.list_all(c, kinds.ALLOCATION, pnode=name)
            texts.append(pnode_text(found, _allocations(held), now, seen))
        elif isinstance(found, job.Job):
            texts.append(job_text(found, now, seen))
    print("\n\n".join(t.rstrip("\n") for t in texts))
    return 0


def _allocations(found: Iterable[meta.Resource]) -> list[allocation.Allocation]:
    return [a for a in found if isinstance(a, allocation.Allocation)]


def fields(pairs: Sequence[tuple[str, str]], indent: str = "") -> str:
    width = max(len(k) for k, _ in pairs) + 2
    return "".join(f"{indent}{(k + ':').ljust(width)}{v}\n" for k, v in pairs)


def _mapping(found: dict[str, str]) -> str:
    """kubectl puts one label per line, aligned under the first."""
    if not found:
        return tables.NONE
    lines = [f"{k}={v}" for k, v in sorted(found.items())]
    return ("\n" + " " * WIDTH).join(lines)


def _header(resource: meta.Resource, now: datetime) -> list[tuple[str, str]]:
    md = resource.metadata
    created = md.creation_timestamp
    pairs = [
        ("Name", md.name),
        ("Labels", _mapping(md.labels)),
        ("Annotations", _mapping(md.annotations)),
        ("Created", f"{created.isoformat()} ({tables.age(created, now)} ago)" if created
         else "<unknown>"),
    ]  # fmt: skip
    if md.deletion_timestamp is not None:
        pairs.append(("Deleting since", md.deletion_timestamp.isoformat()))
    return pairs


def _fields(pairs: list[tuple[str, str]]) -> str:
    return "".join(f"{(k + ':').ljust(WIDTH)}{v}\n" for k, v in pairs)


def _conditions(conditions: Sequence[meta.Condition], now: datetime) -> str:
    if not conditions:
        return f"{'Conditions:'.ljust(WIDTH)}{tables.NONE}\n"
    rows = [
        [c.type, c.status, c.reason or tables.NONE, c.message or tables.NONE,
         tables.age(c.last_transition_time, now)]
        for c in conditions
    ]  # fmt: skip
    body = tables.render(["TYPE", "STATUS", "REASON", "MESSAGE", "AGE"], rows)
    return "Conditions:\n" + _indented(body)


def _indented(text: str) -> str:
    return "".join(INDENT + line + "\n" for line in text.splitlines())


EVENTS = f"{'Events:'.ljust(WIDTH)}{tables.NONE}\n"
Seen = Sequence[event.Event]


def network_text(
    net: network.Network, held: list[allocation.Allocation], now: datetime, seen: Seen = ()
) -> str:
    st = net.status
    out = _fields([
        *_header(net, now),
        ("Generation", str(net.metadata.generation)),
        ("Validation", net.spec.validation),
    ])  # fmt: skip
    vnode_rows = []
    for v in net.spec.vnodes:
        acc = v.resources.accelerator
        vnode_rows.append([
            v.name, v.kind, ",".join(v.inputs) or tables.NONE, _replicas(net, v),
            render.cpu(v.resources.cpu), render.memory(v.resources.memory),
            f"{acc.count}x{acc.type}" if acc else tables.NONE,
            "yes" if v.critical else "no",
            v.data.url if v.data else tables.NONE,
        ])  # fmt: skip
    out += "VNodes:\n" + _indented(tables.render(
        ["NAME", "KIND", "INPUTS", "REPLICAS", "CPU", "MEMORY", "ACCELERATOR", "CRITICAL", "DATA"],
        vnode_rows,
    ))  # fmt: skip
    out += "Status:\n" + fields([
        ("Phase", st.phase),
        ("Ready", f"{st.ready_slots}/{st.desired_slots} slots"),
        ("Observed Generation", str(st.observed_generation)),
        ("Tiebreakers", ", ".join(st.tiebreakers) or tables.NONE),
    ], INDENT)  # fmt: skip
    out += _conditions(st.conditions, now)
    by_slot = {a.name: a for a in held}
    rows = []
    for v in net.spec.vnodes:
        for replica in range(net.replicas_of(v)):
            a = by_slot.get(allocation.slot_name(net.name, v.name, replica))
            if a is None:
                rows.append([v.name, str(replica), "<unplaced>", "-", "-"])
            else:
                rows.append([v.name, str(replica), a.spec.pnode, str(a.spec.epoch),
                             a.status.phase])  # fmt: skip
    out += "Placement:\n" + _indented(
        tables.render(["VNODE", "REPLICA", "PNODE", "EPOCH", "PHASE"], rows)
    )
    unschedulable = [c for c in st.conditions if c.type == "Unschedulable" and c.status == "True"]
    for cond in unschedulable:
        out += f"{'Unschedulable:'.ljust(WIDTH)}{cond.message}\n"
    return out + events.section(seen, now, WIDTH)


def _replicas(net: network.Network, v: network.VNodeSpec) -> str:
    """The replicas that run, which is what placement shows; and why, when it is not the
    spec's count (a validation policy runs at least two, a dispute one more)."""
    running = net.replicas_of(v)
    if running == v.replicas:
        return str(running)
    why = []
    if net.base_replicas(v) != v.replicas:
        why.append(f"validation {net.spec.validation}")
    if v.name in net.status.tiebreakers:
        why.append("+1 tiebreaker")
    return f"{running} (spec {v.replicas}; {', '.join(why)})"


def pnode_text(
    node: pnode.PNode, held: list[allocation.Allocation], now: datetime, seen: Seen = ()
) -> str:
    spec, st = node.spec, node.status
    cap, used = spec.capacity, st.allocated

    def accelerators(found: pnode.Capacity) -> str:
        return ", ".join(f"{a.count}x{a.type}" for a in found.accelerators) or tables.NONE

    out = _fields([
        *_header(node, now),
        ("Address", spec.address),
        ("Datasets", ", ".join(spec.datasets) or tables.NONE),
        ("Unschedulable", str(spec.unschedulable).lower()),
        ("Draining", str(spec.draining).lower()),
    ])  # fmt: skip
    out += "Capacity:\n" + fields([
        ("cpu", render.cpu(cap.cpu)), ("memory", render.memory(cap.memory)),
        ("accelerators", accelerators(cap)),
    ], INDENT)  # fmt: skip
    out += "Allocated:\n" + fields([
        ("cpu", render.cpu(used.cpu)), ("memory", render.memory(used.memory)),
        ("accelerators", accelerators(used)),
    ], INDENT)  # fmt: skip
    since = st.phase_since
    out += "Status:\n" + fields([
        ("Phase", render.pnode_status(node)),
        ("Since", f"{since.isoformat()} ({tables.age(since, now)} ago)" if since else "<unknown>"),
        ("Incarnation", str(st.incarnation)),
        ("Joined By", st.joined_by or tables.NONE),
        ("Identity", _identity(node, now)),
        ("Trust", f"{st.trust.consecutive_valid} consecutive valid results, "
                  f"{st.trust.strikes} strikes{', bugged' if st.trust.bugged else ''}"),
        ("Missed Heartbeats", str(st.missed_heartbeats)),
        ("Evictions", str(st.evictions)),
    ], INDENT)  # fmt: skip
    out += _conditions(st.conditions, now)
    rows = [[a.name, a.spec.network, a.spec.vnode, str(a.spec.replica), str(a.spec.epoch),
             render.cpu(a.spec.resources.cpu), render.memory(a.spec.resources.memory),
             a.status.phase] for a in held]  # fmt: skip
    if rows:
        out += f"Allocations ({len(rows)}):\n" + _indented(
            tables.render(
                ["NAME", "NETWORK", "VNODE", "REPLICA", "EPOCH", "CPU", "MEMORY", "PHASE"], rows
            )
        )
    else:
        out += f"{'Allocations:'.ljust(WIDTH)}{tables.NONE}\n"
    out += _accusations(node.name, seen, now)
    if seen:
        return out + events.section(seen, now, WIDTH)
    return out + _validation_events(node, now)


def _accusations(name: str, seen: Seen, now: datetime) -> str:
    """Refused accusations by and against `name`, from its AccusationRefused events; empty
    when there are none. ROLE "by": `name` accused PNODE; "against": PNODE accused `name`."""
    rows = []
    for e in seen:
        parsed = event.parse_accusation(e.message) if e.reason == "AccusationRefused" else None
        if parsed is None:
            continue
        accuser, accused, detail = parsed
        role, other = ("by", accused) if accuser == name else ("against", accuser)
        rows.append([tables.age(e.last_timestamp, now), role, other, str(e.count), detail])
    if not rows:
        return ""
    headers = ["LAST SEEN", "ROLE", "PNODE", "COUNT", "DETAIL"]
    return "Refused Accusations:\n" + _indented(tables.render(headers, rows))


def _identity(node: pnode.PNode, now: datetime) -> str:
    """When the PNode's identity certificate expires (docs/security.md)."""
    left = render.identity_validity(node, now)
    if left == tables.NONE:
        return left
    expires = node.status.identity.expires_at
    assert expires is not None
    return f"expires {expires.isoformat()} ({left if left == 'expired' else 'in ' + left})"


def _validation_events(node: pnode.PNode, now: datetime) -> str:
    """The PNode's recent validation outcomes (strikes, Bugged transitions) are the one
    kind of event the server records; read through getattr so that a server without them
    (older than the trust controller) still describes."""
    found = getattr(node.status, "validation_events", None) or []
    if not found:
        return EVENTS
    rows = [
        [tables.age(e.time, now), e.verdict, e.job or "-", e.vnode or "-", e.check or "-",
         e.message or "-"]
        for e in reversed(found)
    ]  # fmt: skip
    headers = ["AGE", "VERDICT", "JOB", "VNODE", "CHECK", "MESSAGE"]
    return "Events:\n" + _indented(tables.render(headers, rows))


def job_text(found: job.Job, now: datetime, seen: Seen = ()) -> str:
    spec, st = found.spec, found.status
    out = _fields([*_header(found, now), ("Network", spec.network), ("Type", spec.type)])
    out += "Spec:\n" + fields([
        ("Data", spec.data.url if spec.data else "<the network's data>"),
        ("Epochs", str(spec.epochs)),
        ("Batch Size", str(spec.batch_size)),
        ("Optimizer", spec.optimizer),
        ("Learning Rate", f"{spec.learning_rate:g}"),
        ("Checkpoint Interval", f"{spec.checkpoint_interval} steps"),
        ("Seed", str(spec.seed)),
        *([("Micro Batches", str(spec.micro_batches))] if spec.micro_batches > 1 else []),
    ], INDENT)  # fmt: skip
    speed = st.samples_per_second
    out += "Status:\n" + fields([
        ("Phase", st.phase),
        ("Message", st.message or tables.NONE),
        ("Step", f"{st.step}/{st.total_steps or '?'}"),
        ("Epoch", f"{st.epoch}/{spec.epochs}"),
        ("Loss", tables.NONE if st.loss is None else f"{st.loss:.4f}"),
        ("Accuracy", tables.NONE if st.accuracy is None else f"{st.accuracy:.3f}"),
        ("Samples/s", tables.NONE if speed is None else f"{speed:.1f}"),
        ("Checkpoint", f"step {st.checkpoint_step} ({len(st.checkpoint_blobs)} blobs)"),
        ("Attempt", f"{st.attempt}" + (
            f" ({st.attempts_without_progress} in a row without a new checkpoint)"
            if st.attempts_without_progress else ""
        )),
        ("Driver", st.driver or tables.NONE),
    ], INDENT)  # fmt: skip
    return out + _conditions(st.conditions, now) + events.section(seen, now, WIDTH)
