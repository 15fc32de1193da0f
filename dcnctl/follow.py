"""`train`: create a Job, then follow it to the end with a progress bar.

The Job resource is the whole truth about a run, so following it is watching one document
(WatchJob). The stream may break (an orchestrator replica restarts, the network blips):
the watch is resumed from the last resourceVersion seen, with backoff, for as long as it
takes; the job runs on the server regardless, through Paused and rollbacks, which are
printed as they happen. Ctrl-C stops following, never the job.

On a terminal the bar is one line redrawn with \\r; otherwise (logs, pipes, tests) each
update is its own line.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import TextIO

import grpc

from api.dcnr.v1 import common_pb2, job_pb2
from api.resources import job as job_model
from dcnctl import client as client_mod
from dcnctl import errors, kinds

Client = client_mod.Client
FINAL = ("Succeeded", "Failed", "Cancelled")
BAR = 20
#: Refused this way, a watch would be refused again: stop instead of retrying.
_TERMINAL = (
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.UNAUTHENTICATED,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.UNIMPLEMENTED,
)


def train(args: argparse.Namespace, c: Client) -> int:
    request = job_pb2.TrainRequest(
        header=c.header(),
        name=args.name or "",
        network=args.network,
        epochs=args.epochs or 0,
        batch_size=args.batch_size or 0,
        optimizer=args.optimizer or "",
        learning_rate=args.lr or 0.0,
        checkpoint_interval=args.checkpoint_interval or 0,
        seed=args.seed,
        micro_batches=args.micro_batches or 0,
    )
    if args.data:
        request.data.url = args.data
    found = kinds.decode(c.call(c.jobs.Train, request).job)
    assert isinstance(found, job_model.Job)
    if args.detach:
        print(found.name)
        return 0
    print(f"{kinds.JOB.ref(found.name)} created", flush=True)
    progress = Progress(sys.stdout, tty=sys.stdout.isatty())
    try:
        final = follow(c, found, progress)
    except KeyboardInterrupt:
        progress.clear()
        print(
            f"detached from {kinds.JOB.ref(found.name)}: it keeps running "
            f"(follow it with 'dcnctl get job {found.name} -w')",
            file=sys.stderr,
        )
        return 130
    st = final.status
    if st.phase == "Succeeded":
        loss = "-" if st.loss is None else f"{st.loss:.4f}"
        acc = "-" if st.accuracy is None else f"{st.accuracy:.3f}"
        print(f"{kinds.JOB.ref(final.name)} succeeded: loss {loss} accuracy {acc}")
        return 0
    raise errors.local(
        f"{kinds.JOB.ref(final.name)} {st.phase.lower()}: {st.message or 'no message'}"
    )


def follow(c: Client, found: job_model.Job, progress: Progress) -> job_model.Job:
    """Follow the job until a final phase; returns its last state."""
    progress.update(found)
    backoff = 0.5
    outage = False
    while found.status.phase not in FINAL:
        request = job_pb2.WatchJobRequest(
            header=c.header(), name=found.name, resource_version=found.metadata.resource_version
        )
        try:
            for message in c.stream(c.jobs.WatchJob, request):
                event = message.event
                if event.type == common_pb2.WATCH_EVENT_TYPE_DELETED:
                    progress.clear()
                    raise errors.local(f"{kinds.JOB.ref(found.name)} was deleted")
                if event.type == common_pb2.WATCH_EVENT_TYPE_BOOKMARK:
                    continue
                latest = kinds.decode(event.document)
                if isinstance(latest, job_model.Job):
                    found = latest
                    progress.update(found)
                backoff, outage = 0.5, False
        except grpc.RpcError as exc:
            failure = errors.from_rpc(exc, c.server, tls=c.tls, ca_given=c.ca_given)
            if isinstance(failure, errors.ServerError) and failure.code in _TERMINAL:
                progress.clear()
                if failure.code == grpc.StatusCode.NOT_FOUND:
                    raise kinds.JOB.not_found(found.name) from None
                raise failure from None
            if not outage:
                progress.note(f"lost the watch ({failure}); reconnecting")
                outage = True
            time.sleep(backoff)
            backoff = min(backoff * 2, 5.0)
    progress.clear()
    return found


class Progress:
    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out, self.tty = out, tty
        self._phase: tuple[str, str] | None = None
        self._last = ""
        self._drawn = False

    def update(self, found: job_model.Job) -> None:
        st = found.status
        phase = (st.phase, st.message)
        if phase != self._phase:
            self._phase = phase
            if st.phase not in FINAL:
                self.note(f"{st.phase.lower()}: {st.message}" if st.message else st.phase.lower())
        if not st.total_steps:  # not started: nothing to draw a bar of
            return
        line = bar(found)
        if self.tty:
            self.out.write("\r\033[K" + line)
            self._drawn = True
        elif line.split(" ETA ")[0] != self._last.split(" ETA ")[0]:
            self.out.write(line + "\n")
        self._last = line
        self.out.flush()

    def note(self, text: str) -> None:
        self.clear()
        self.out.write(text + "\n")
        if self.tty and self._last:
            self.out.write(self._last)
            self._drawn = True
        self.out.flush()

    def clear(self) -> None:
        if self.tty and self._drawn:
            self.out.write("\r\033[K")
            self.out.flush()
            self._drawn = False


def bar(found: job_model.Job) -> str:
    """`[#####.....] step 120/345 epoch 6/15 loss 0.2315 acc 0.938 ETA 0:12`"""
    st, spec = found.status, found.spec
    total = st.total_steps
    done = min(BAR, BAR * st.step // total) if total else 0
    parts = [f"[{'#' * done}{'.' * (BAR - done)}]", f"step {st.step}/{total or '?'}",
             f"epoch {st.epoch}/{spec.epochs}"]  # fmt: skip
    if st.loss is not None:
        parts.append(f"loss {st.loss:.4f}")
    if st.accuracy is not None:
        parts.append(f"acc {st.accuracy:.3f}")
    parts.append(f"ETA {eta(found)}")
    return " ".join(parts)


def eta(found: job_model.Job) -> str:
    st = found.status
    if not st.total_steps or not st.samples_per_second:
        return "-"
    steps_per_second = st.samples_per_second / found.spec.batch_size
    seconds = int(max(0, st.total_steps - st.step) / steps_per_second)
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"
