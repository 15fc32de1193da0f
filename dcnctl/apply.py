"""`apply -f` and `delete`: manifests to the server, one line per resource, kubectl's words;
`delete job` cancels a running job and deletes one that ended.

Every file is read and validated before anything is sent, so a typo in the third file
changes nothing on the server. Documents then go one at a time; a server refusal of one
is reported and the others still go through (kubectl's behaviour), ending with exit 1.
"""

from __future__ import annotations

import argparse
import sys
import time

import grpc

from api import manifest
from api.dcnr.v1 import common_pb2, job_pb2, network_pb2
from api.resources import job, meta, network
from dcnctl import client as client_mod
from dcnctl import errors, kinds

Client = client_mod.Client

_OUTCOMES = {
    network_pb2.APPLY_OUTCOME_CREATED: "created",
    network_pb2.APPLY_OUTCOME_CONFIGURED: "configured",
    network_pb2.APPLY_OUTCOME_UNCHANGED: "unchanged",
}


def read_manifests(files: list[str]) -> list[meta.Resource]:
    """Every resource of every -f; ManifestError lines become one CliError."""
    found: list[meta.Resource] = []
    problems: list[str] = []
    for name in files:
        try:
            if name == "-":
                # One byte past the limit is enough to refuse it: never buffer all of stdin.
                data = sys.stdin.buffer.read(manifest.MAX_DOCUMENT_BYTES + 1)
                found += manifest.parse_documents(data, source="<stdin>")
            else:
                found += manifest.load_path(name)
        except manifest.ManifestError as exc:
            problems += str(exc).splitlines()
    if problems:
        raise errors.CliError("\n".join(f"error: {p}" for p in problems))
    if not found:
        raise errors.local(f"no objects passed to apply in {', '.join(files)}")
    return found


def _networks(found: list[meta.Resource], verb: str) -> list[network.Network]:
    others = [r for r in found if not isinstance(r, network.Network)]
    if others:
        r = others[0]
        raise errors.local(
            f'{r.KIND} "{r.name}": dcnctl {verb} takes Network documents '
            f"(start a Job with 'dcnctl train')"
        )
    return [r for r in found if isinstance(r, network.Network)]


def apply(args: argparse.Namespace, c: Client) -> int:
    nets = _networks(read_manifests(args.filename), "apply")
    if args.dry_run == "client":
        for net in nets:
            print(f"{kinds.NETWORK.ref(net.name)} validated (dry run)")
        return 0
    failed: list[errors.CliError] = []
    for net in nets:
        request = network_pb2.ApplyRequest(
            header=c.header(),
            document=common_pb2.ResourceDocument(kind=net.KIND, json=net.to_json().encode()),
            dry_run=args.dry_run == "server",
            field_manager="dcnctl",
        )
        try:
            reply = c.call(c.networks.Apply, request)
        except errors.CliError as exc:
            if isinstance(exc, errors.Unreachable):
                raise  # nothing else will get through either
            failed.append(exc)
            continue
        for warning in reply.warnings:
            print(f"Warning: {warning}", file=sys.stderr)
        suffix = " (server dry run)" if args.dry_run == "server" else ""
        outcome = _OUTCOMES.get(reply.outcome, "applied")
        print(f"{kinds.NETWORK.ref(net.name)} {outcome}{suffix}")
    if failed:
        raise errors.CliError("\n".join(str(e) for e in failed))
    return 0


def delete(args: argparse.Namespace, c: Client) -> int:
    if args.filename:
        if args.names:
            raise errors.local("there is no need to give resource names when using -f")
        names = [n.name for n in _networks(read_manifests(args.filename), "delete")]
    else:
        if not args.names:
            raise errors.local("give a resource type and name(s), e.g. 'delete network NAME', "
                               "or -f FILE")  # fmt: skip
        kind, names = _type_and_names(args.names)
        if kind is kinds.JOB:
            if not names:
                raise errors.local("give the name of the job to delete")
            return _delete_jobs(args, c, names)
        if kind is not kinds.NETWORK:
            raise errors.local(
                f"{kind.plural} cannot be deleted with dcnctl: only networks and jobs can "
                "(PNodes leave when their agent deregisters)"
            )
        if not names:
            raise errors.local("give the name of the network to delete")
    timeout = parse_seconds(args.timeout, "--timeout")
    failed: list[errors.CliError] = []
    deleted: list[str] = []
    for name in names:
        request = network_pb2.DeleteNetworkRequest(
            header=c.header(), name=name, dry_run=args.dry_run == "server"
        )
        try:
            c.call(c.networks.DeleteNetwork, request)
        except errors.ServerError as exc:
            if exc.reason == "NotFound":
                if not args.ignore_not_found:
                    failed.append(kinds.NETWORK.not_found(name))
                continue
            failed.append(exc)
            continue
        suffix = " (server dry run)" if args.dry_run == "server" else ""
        print(f'{kinds.NETWORK.singular}.{meta.GROUP} "{name}" deleted{suffix}', flush=True)
        deleted.append(name)
    if args.wait and args.dry_run != "server":
        for name in deleted:
            _wait_gone(c, name, timeout)
    if failed:
        raise errors.CliError("\n".join(str(e) for e in failed))
    return 0


def _delete_jobs(args: argparse.Namespace, c: Client, names: list[str]) -> int:
    """kubectl's habit on a Job, in two steps: a job that has not ended is cancelled (its
    record stays, Cancelled, so describe still says how far it got and why it stopped);
    a job that ended is deleted. So `delete job NAME` stops a run, and a second one removes
    it. --wait waits until a cancelled job reads Cancelled."""
    if args.dry_run == "server":
        raise errors.local("--dry-run=server is not supported for jobs")
    timeout = parse_seconds(args.timeout, "--timeout")
    failed: list[errors.CliError] = []
    for name in names:
        try:
            found = kinds.get(c, kinds.JOB, name)
            phase = found.status.phase if isinstance(found, job.Job) else ""
            if phase in _FINAL_JOB_PHASES:
                c.call(c.jobs.DeleteJob, job_pb2.DeleteJobRequest(header=c.header(), name=name))
                print(f'{kinds.JOB.singular}.{meta.GROUP} "{name}" deleted', flush=True)
                continue
            c.call(c.jobs.CancelJob, job_pb2.CancelJobRequest(
                header=c.header(), name=name, reason="dcnctl delete"))  # fmt: skip
            print(f'{kinds.JOB.singular}.{meta.GROUP} "{name}" cancelled (was {phase}; delete '
                  "it again to remove the record)", flush=True)  # fmt: skip
            if args.wait:
                _wait_cancelled(c, name, timeout)
        except errors.ServerError as exc:
            if exc.reason == "NotFound" or exc.code == grpc.StatusCode.NOT_FOUND:
                if not args.ignore_not_found:
                    failed.append(kinds.JOB.not_found(name))
                continue
            failed.append(exc)
    if failed:
        raise errors.CliError("\n".join(str(e) for e in failed))
    return 0


_FINAL_JOB_PHASES = frozenset({"Succeeded", "Failed", "Cancelled"})


def _wait_cancelled(c: Client, name: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        found = kinds.get(c, kinds.JOB, name)
        if isinstance(found, job.Job) and found.status.phase == "Cancelled":
            return
        if time.monotonic() >= deadline:
            raise errors.local(
                f'timed out waiting for job.{meta.GROUP} "{name}" to be cancelled '
                f"(--timeout {timeout:g}s)"
            )
        time.sleep(0.2)


def _type_and_names(words: list[str]) -> tuple[kinds.Kind, list[str]]:
    """`network a b` or `network/a network/b`, as kubectl takes them."""
    if "/" in words[0]:
        pairs = [w.split("/", 1) for w in words]
        found = {kinds.lookup(t) for t, _ in pairs}
        if len(found) != 1:
            raise errors.local("give names of one resource type at a time")
        return found.pop(), [n for _, n in pairs]
    return kinds.lookup(words[0]), words[1:]


def _wait_gone(c: Client, name: str, timeout: float) -> None:
    """Poll until the Network is gone: the network loop stops its allocations first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            kinds.get(c, kinds.NETWORK, name)
        except errors.ServerError as exc:
            if exc.reason == "NotFound":
                return
            raise
        if time.monotonic() >= deadline:
            raise errors.local(
                f'timed out waiting for network.{meta.GROUP} "{name}" to be deleted '
                f"(--timeout {timeout:g}s)"
            )
        time.sleep(0.2)


def parse_seconds(text: str, flag: str) -> float:
    """kubectl durations: "60s", "2m", "1h", "1m30s", or bare seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    rest, total = text.strip(), 0.0
    try:
        if rest.replace(".", "", 1).isdigit():
            return float(rest)
        while rest:
            digits = len(rest) - len(rest.lstrip("0123456789."))
            number, rest = float(rest[:digits]), rest[digits:]
            unit = "ms" if rest.startswith("ms") else rest[:1]
            total += number * units[unit]
            rest = rest[len(unit) :]
    except (ValueError, KeyError):
        raise errors.local(
            f"{flag} {text!r}: must be a duration such as 30s, 2m or 1h30m"
        ) from None
    return total
