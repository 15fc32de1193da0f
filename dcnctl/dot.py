"""`dcnctl get network NAME -o dot`: the network's graph as Graphviz text.

The same graph as the dashboard's network page: one node per VNode replica slot the
network runs now, labelled with its PNode and epoch and filled by its allocation's phase
(an unplaced slot is grey and dashed, a tiebreaker replica has a double border), and an
edge from every replica of an input to every replica of the VNode reading it. Pure: the
caller fetches the Network and its allocations. Render it with `dot -Tsvg`.
"""

from __future__ import annotations

from collections.abc import Sequence

from api.resources import allocation as alloc_model
from api.resources import network as net_model

FILL = {
    "Running": "#2c9a55",
    "Pending": "#c98a12",
    "Stopping": "#7a8290",
    "Failed": "#c73a3a",
}
UNPLACED_FILL = "#b0b6c0"


def _quote(text: str) -> str:
    """A DOT double-quoted string: backslashes and quotes escaped, newlines as \\n."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


def network(net: net_model.Network, allocations: Sequence[alloc_model.Allocation]) -> str:
    held = {(a.spec.vnode, a.spec.replica): a for a in allocations if a.spec.network == net.name}
    tiebreakers = set(net.status.tiebreakers)
    status = net.status
    desired = status.desired_slots or net.slot_count()
    title = f"network {net.name}: {status.phase}, {status.ready_slots}/{desired} slots ready"
    lines = [
        f"digraph {_quote(net.name)} {{",
        "  rankdir=LR;",
        '  node [shape=box, style="rounded,filled", fontname="Helvetica", fontsize=10, '
        "fontcolor=white];",
        f"  label={_quote(title)};",
        "  labelloc=t;",
    ]
    slots: dict[str, list[str]] = {}
    for v in net.spec.vnodes:
        count = net.replicas_of(v)
        extra = sorted(r for (name, r) in held if name == v.name and r >= count)
        for replica in [*range(count), *extra]:
            slot = f"{v.name}#{replica}"
            slots.setdefault(v.name, []).append(slot)
            alloc = held.get((v.name, replica))
            tiebreaker = v.name in tiebreakers and replica == count - 1
            if alloc is None:
                label = f"{slot}\nunplaced"
                attrs = f'fillcolor="{UNPLACED_FILL}", style="rounded,filled,dashed"'
            else:
                label = f"{slot}\n{alloc.spec.pnode}\nepoch {alloc.spec.epoch}"
                attrs = f'fillcolor="{FILL.get(alloc.status.phase, "#7a8290")}"'
            if tiebreaker:
                label += "\n(tiebreaker)"
                attrs += ", peripheries=2"
            if v.critical:
                attrs += ", penwidth=3"
            lines.append(f"  {_quote(slot)} [label={_quote(label)}, {attrs}];")
    for v in net.spec.vnodes:
        for parent in v.inputs:
            for src in slots.get(parent, []):
                for dst in slots.get(v.name, []):
                    lines.append(f"  {_quote(src)} -> {_quote(dst)};")
    lines.append("}")
    return "\n".join(lines) + "\n"
