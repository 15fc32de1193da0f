"""`get events [--for TYPE/NAME]` and the Events section of `describe`: kubectl's columns.

Events come from the server's ListEvents (api.resources.event): one row per aggregated
event, oldest last-seen first as kubectl prints them, with `(xN over AGE)` when it
happened N times.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from datetime import datetime

from api.dcnr.v1 import network_pb2
from api.resources import event as event_model
from dcnctl import client as client_mod
from dcnctl import errors, kinds, render, tables

Client = client_mod.Client
Event = event_model.Event
WORDS = ("events", "event", "ev")
HEADERS = ["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"]


def fetch(c: Client, involved: str = "") -> list[Event]:
    """Every event of `involved` ("Network/digits"; empty: all), oldest last-seen first."""
    found: list[Event] = []
    token = ""
    while True:
        reply = c.call(c.networks.ListEvents, network_pb2.ListEventsRequest(
            header=c.header(), involved_object=involved, continue_token=token))  # fmt: skip
        found += [e for e in map(kinds.decode, reply.items) if isinstance(e, Event)]
        token = reply.continue_token
        if not token:
            break
    return sorted(found, key=lambda e: (e.last_timestamp, e.name))


def involved(text: str) -> str:
    """`--for network/digits` (any name dcnctl takes for the type) as the server's
    "Network/digits"."""
    word, _, name = text.partition("/")
    if not name:
        raise errors.local(f"--for {text!r}: give TYPE/NAME, e.g. network/digits")
    kind = kinds.lookup(word)
    return f"{kind.kind}/{name}"


def rows(found: Sequence[Event], now: datetime) -> list[list[str]]:
    out = []
    for e in found:
        seen = tables.age(e.last_timestamp, now)
        if e.count > 1:
            seen += f" (x{e.count} over {tables.age(e.first_timestamp, now)})"
        obj = f"{e.involved_object.kind.lower()}/{e.involved_object.name}"
        out.append([seen, e.type, e.reason, obj, e.message])
    return out


def section(found: Sequence[Event], now: datetime, width: int) -> str:
    """describe's last section: `Events: <none>`, or kubectl's table without OBJECT (it is
    the object described)."""
    if not found:
        return f"{'Events:'.ljust(width)}{tables.NONE}\n"
    body = tables.render(
        ["LAST SEEN", "TYPE", "REASON", "MESSAGE"],
        [[r[0], r[1], r[2], r[4]] for r in rows(found, now)],
    )
    return "Events:\n" + "".join("  " + line + "\n" for line in body.splitlines())


def get(args: argparse.Namespace, c: Client, now: datetime) -> int:
    if args.names:
        raise errors.local("events are listed, not named: use --for TYPE/NAME")
    found = fetch(c, involved(args.for_object) if args.for_object else "")
    if args.output in ("json", "yaml"):
        sys.stdout.write(render.structured(found, args.output, single=False))
        return 0
    if not found:
        print("No resources found", file=sys.stderr)
        return 0
    if args.output == "name":
        sys.stdout.write("".join(f"event/{e.name}\n" for e in found))
        return 0
    sys.stdout.write(tables.render(HEADERS, rows(found, now), no_headers=args.no_headers))
    return 0
