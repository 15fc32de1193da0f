"""PNode administration (cordon, uncordon, drain), `explain placement`, and `version`."""

from __future__ import annotations

import argparse
import json
import sys

import grpc

from api import version as version_mod
from api.dcnr.v1 import network_pb2, pnode_pb2
from dcnctl import client as client_mod
from dcnctl import errors, kinds, tables

Client = client_mod.Client


def _pnode_name(words: list[str]) -> str:
    """`pnode NAME`, `pnode/NAME` or plain `NAME`, as kubectl takes nodes."""
    if len(words) == 1 and "/" in words[0]:
        words = words[0].split("/", 1)
    if len(words) == 2:
        kinds.lookup(words[0], allowed=(kinds.PNODE,))
        return words[1]
    if len(words) == 1:
        return words[0]
    raise errors.local("give one pnode: 'pnode NAME' or 'NAME'")


def cordon(args: argparse.Namespace, c: Client) -> int:
    name = _pnode_name(args.target)
    verb = args.command
    try:
        if verb == "cordon":
            c.call(
                c.pnodes.Cordon,
                pnode_pb2.CordonRequest(header=c.header(), pnode=name, reason=args.reason),
            )
        elif verb == "uncordon":
            c.call(c.pnodes.Uncordon, pnode_pb2.UncordonRequest(header=c.header(), pnode=name))
        else:
            reply = c.call(c.pnodes.Drain,
                           pnode_pb2.DrainRequest(header=c.header(), pnode=name,
                                                  reason=args.reason))  # fmt: skip
            print(f"{kinds.PNODE.ref(name)} cordoned")
            if reply.migrating_allocations:
                print(f"migrating {reply.migrating_allocations} allocations away from {name}")
    except errors.ServerError as exc:
        if exc.code == grpc.StatusCode.NOT_FOUND:
            raise kinds.PNODE.not_found(name) from None
        raise
    print(f"{kinds.PNODE.ref(name)} {verb}ed")
    return 0


def explain(args: argparse.Namespace, c: Client) -> int:
    if args.topic != "placement":
        raise errors.local(f'unknown explanation "{args.topic}"; try "explain placement"')
    reply = c.call(
        c.networks.ExplainPlacement,
        network_pb2.ExplainPlacementRequest(
            header=c.header(), network=args.network, vnode=args.vnode, replica=args.replica
        ),
    )
    scorers: list[str] = []
    for p in reply.pnodes:
        for s in p.scores:
            if s.scorer not in scorers:
                scorers.append(s.scorer)
    rows = []
    for p in reply.pnodes:
        failed = [f.reason or f.filter for f in p.filters if not f.passed]
        if p.feasible and not p.sampled and not p.scores:
            reason = "not in the scored sample"
        else:
            reason = "; ".join(failed) or "-"
        by_scorer = {s.scorer: s for s in p.scores}
        score = f"{p.total_score:.3f}" if p.feasible and p.scores else "-"
        name = p.pnode_id + (" *" if p.pnode_id == reply.placed_on else "")
        rows.append([name, "yes" if p.feasible else "no", reason, score] + [
            f"{by_scorer[s].normalized:.3f}" if s in by_scorer else "-" for s in scorers
        ])  # fmt: skip
    headers = ["PNODE", "FEASIBLE", "REASON", "SCORE"] + [s.upper() for s in scorers]
    if rows:
        sys.stdout.write(tables.render(headers, rows))
    else:
        print("No pnodes were considered")
    print()
    print(f"Placed on:  {reply.placed_on or '<unplaced>'}" +
          ("  (marked *)" if reply.placed_on and rows else ""))  # fmt: skip
    print(f"Summary:    {reply.summary}")
    if reply.reasons:
        counted = ", ".join(f"{r.count} {r.reason}" for r in reply.reasons)
        print(f"Rejections: {counted}")
    print(f"Seed:       {reply.seed}")
    return 0


def version(args: argparse.Namespace, c: Client | None) -> int:
    found = {"clientVersion": version_mod.current()}
    unreachable: errors.CliError | None = None
    if c is not None:
        try:
            reply = c.call(c.networks.ListNetworks,
                           network_pb2.ListNetworksRequest(header=c.header(), limit=1))  # fmt: skip
        except errors.CliError as exc:
            # As kubectl: the client's version is known whatever the server's state.
            unreachable, c = exc, None
        else:
            found["serverVersion"] = reply.header.server_version or "<unknown>"
            found["serverApiVersion"] = reply.header.api_version
    if args.output == "json":
        print(json.dumps(found, indent=2))
    elif args.output == "yaml":
        for key, value in found.items():
            print(f"{key}: {value}")
    else:
        print(f"Client Version: v{found['clientVersion']}")
        if c is not None:
            print(f"Server Version: v{found['serverVersion']} ({found['serverApiVersion']})")
    if unreachable is not None:
        sys.stdout.flush()
        raise unreachable
    return 0
