"""`get`: list or fetch resources, print them in the chosen format, and `-w` follow them.

Networks are watched with WatchNetworks (pushed changes); the other kinds have no watch
RPC, so `-w` polls them every second and prints the rows whose contents changed (AGE
aside, which changes by itself).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime

import grpc

from api.dcnr.v1 import common_pb2, network_pb2
from api.resources import allocation, meta, network
from dcnctl import client as client_mod
from dcnctl import dot, errors, events, kinds, render, tables

Client = client_mod.Client
POLL_SECONDS = 1.0


def now() -> datetime:
    return datetime.now(UTC)


def get(args: argparse.Namespace, c: Client) -> int:
    if args.type.lower() in events.WORDS:
        if args.watch or args.selector or args.network:
            raise errors.local("get events takes --for TYPE/NAME, -o and --no-headers only")
        return events.get(args, c, now())
    if args.for_object:
        raise errors.local("--for applies to events only")
    kind, names = _type_and_names(args.type, args.names)
    if names and args.selector:
        raise errors.local("name cannot be provided when a selector is specified")
    if args.network and kind not in (kinds.ALLOCATION, kinds.JOB):
        raise errors.local(f"--network applies to vnodes and jobs, not {kind.plural}")
    if args.output == "dot":
        return _dot(args, c, kind, names)
    if args.watch:
        if kind is kinds.NETWORK:
            return _watch_networks(args, c, names)
        return _poll(args, c, kind, names)
    found = _fetch(args, c, kind, names)
    if not found:
        if args.output in ("json", "yaml"):
            sys.stdout.write(render.structured([], args.output, single=False))
        else:
            print("No resources found", file=sys.stderr)
        return 0
    sys.stdout.write(_format(args, c, kind, found, single=len(names) == 1))
    return 0


def _dot(args: argparse.Namespace, c: Client, kind: kinds.Kind, names: list[str]) -> int:
    if kind is not kinds.NETWORK or len(names) != 1:
        raise errors.local("-o dot draws one network: dcnctl get network NAME -o dot")
    if args.watch or args.selector or args.network:
        raise errors.local("-o dot takes one network name and no -w, -l or --network")
    net = kinds.get(c, kind, names[0])
    assert isinstance(net, network.Network)
    held = kinds.list_all(c, kinds.ALLOCATION, network=net.name)
    sys.stdout.write(
        dot.network(net, [a for a in held if isinstance(a, allocation.Allocation)])
    )
    return 0


def _type_and_names(type_word: str, names: Sequence[str]) -> tuple[kinds.Kind, list[str]]:
    """`network a b` and kubectl's `network/a`."""
    if "/" in type_word:
        word, name = type_word.split("/", 1)
        if names:
            raise errors.local("there is no need to specify a resource type as a separate "
                               "argument when passing arguments in resource/name form")  # fmt: skip
        return kinds.lookup(word), [name]
    return kinds.lookup(type_word), list(names)


def _fetch(
    args: argparse.Namespace, c: Client, kind: kinds.Kind, names: list[str]
) -> list[meta.Resource]:
    if names:
        found = [kinds.get(c, kind, n) for n in names]
        if args.network:
            found = [r for r in found if _network_of(r) == args.network]
        return found
    return kinds.list_all(c, kind, selector=args.selector or "", network=args.network or "")


def _network_of(resource: meta.Resource) -> str | None:
    spec = getattr(resource, "spec", None)
    return getattr(spec, "network", None)


def _format(
    args: argparse.Namespace,
    c: Client,
    kind: kinds.Kind,
    found: Sequence[meta.Resource],
    *,
    single: bool,
) -> str:
    if args.output in ("json", "yaml"):
        return render.structured(found, args.output, single=single)
    if args.output == "name":
        return render.names(kind, found)
    return render.table(
        kind,
        found,
        now(),
        wide=args.output == "wide",
        no_headers=args.no_headers,
        allocations_on=_counts(c) if kind is kinds.PNODE else None,
    )


def _counts(c: Client) -> dict[str, int]:
    held = kinds.list_all(c, kinds.ALLOCATION)
    return dict(Counter(a.spec.pnode for a in held if isinstance(a, allocation.Allocation)))


class _Rows:
    """Prints watch rows under one header, widening columns only when a cell needs it."""

    def __init__(self, args: argparse.Namespace, kind: kinds.Kind) -> None:
        self.args, self.kind = args, kind
        self.headers = render.headers(kind, wide=args.output == "wide")
        self.widths = [len(h) for h in self.headers]

    def print(self, c: Client, resources: Sequence[meta.Resource], *, first: bool) -> None:
        if not resources and not first:
            return
        out = self.args.output
        if out in ("json", "yaml"):
            for r in resources:
                text = render.structured([r], out, single=True)
                sys.stdout.write(text if out == "json" else "---\n" + text)
        elif out == "name":
            sys.stdout.write(render.names(self.kind, resources))
        else:
            counts = _counts(c) if self.kind is kinds.PNODE else None
            rows = [render.row(r, now(), wide=out == "wide", allocations_on=counts)
                    for r in resources]  # fmt: skip
            lines = ([self.headers] if first and not self.args.no_headers else []) + rows
            for line in lines:
                self.widths = [max(w, len(cell)) for w, cell in zip(self.widths, line, strict=True)]
            for line in lines:
                cells = [
                    cell.ljust(w + tables.GAP)
                    for cell, w in zip(line[:-1], self.widths, strict=False)
                ]
                print(("".join(cells) + line[-1]).rstrip())
        sys.stdout.flush()


def _watch_networks(args: argparse.Namespace, c: Client, names: list[str]) -> int:
    if len(names) > 1:
        raise errors.local("watch is only supported on individual resources and resource "
                           "collections, but 2 or more names were given")  # fmt: skip
    request = network_pb2.WatchNetworksRequest(
        header=c.header(), name=names[0] if names else "", label_selector=args.selector or ""
    )
    rows = _Rows(args, kinds.NETWORK)
    initial: list[meta.Resource] = []
    replaying = True
    try:
        for message in c.stream(c.networks.WatchNetworks, request):
            event = message.event
            if event.type == common_pb2.WATCH_EVENT_TYPE_BOOKMARK:
                if replaying:
                    if names and not initial:
                        raise kinds.NETWORK.not_found(names[0])
                    rows.print(c, initial, first=True)
                    replaying = False
                continue
            resource = kinds.decode(event.document)
            if replaying:
                initial.append(resource)
            else:
                rows.print(c, [resource], first=False)
    except grpc.RpcError as exc:
        raise errors.from_rpc(exc, c.server, tls=c.tls, ca_given=c.ca_given) from None
    return 0


def _poll(args: argparse.Namespace, c: Client, kind: kinds.Kind, names: list[str]) -> int:
    rows = _Rows(args, kind)
    shown: dict[str, list[str]] = {}
    first = True
    while True:
        found = _fetch(args, c, kind, names)
        changed = []
        age = render.headers(kind, wide=True).index("AGE")
        for r in found:
            cells = render.row(r, now(), wide=True)
            key = cells[:age] + cells[age + 1 :]
            if shown.get(r.name) != key:
                shown[r.name] = key
                changed.append(r)
        rows.print(c, changed, first=first)
        first = False
        time.sleep(POLL_SECONDS)
