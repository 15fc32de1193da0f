"""One attempt's messages to the VNodes: Restore, each step's batch, Checkpoint.

Every replica of every VNode takes part (the plan's counts, tiebreakers included): each is
restored from its VNode's one canonical checkpoint and told how many replicas each of its
neighbours runs (and a source, the job's own data if it has some: the batches' indices are
cut from it), each replica of a source gets the batch, and each replica checkpoints
(the canonical blob is the majority's: controller.jobs.driver_checkpoint).

Any failure is a `Rollback` carrying the reason the Job's status shows; the run then starts
a new attempt. A dispute (replicas disagreeing with no majority) is a `Disputed` rollback
naming the VNode, for which the run requests a tiebreaker replica. The epochs the attempt
restored are pinned: a slot whose epoch moves in the view (re-placed, re-issued, its PNode
re-registered) ends the attempt, because the VNode now at that slot never loaded the
checkpoint the others did.

Checkpoint blobs are recorded in `status.checkpoint_blobs` as text, "URL#sha256=HEX&size=N",
so the digest an agent must verify on Restore survives in a field typed as a string.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Iterable, Sequence
from typing import Any, TypeVar
from urllib.parse import parse_qs

import numpy as np

from api import tensors
from api.dcnr.v1 import common_pb2, vnode_pb2
from api.resources import job as job_model
from controller.jobs import driver_checkpoint, driver_inbox, driver_plan, vnode_client
from controller.runtime import clock as clock_mod
from controller.state import view as view_mod

T = TypeVar("T")
DRIVER = driver_inbox.DRIVER


class Rollback(Exception):
    """The attempt cannot go on; the message is the reason shown in the Job's status."""


class Disputed(Rollback):
    """The replicas of `vnode` disagree with no majority: it needs a tiebreaker replica."""

    def __init__(self, vnode: str, why: str, *, forged: tuple[str, ...] = ()) -> None:
        super().__init__(why)
        self.vnode = vnode
        #: Slots whose checkpoint blob did not match its claimed digest (struck).
        self.forged = forged


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpointed:
    #: Replica-0 slot → blob text of each stateful VNode's canonical checkpoint.
    blobs: dict[str, str]
    #: VNodes with a replica whose state is not the majority's (a disagreement).
    outliers: tuple[str, ...] = ()
    #: Slots whose blob's bytes do not match the digest they claimed (their PNode lied).
    forged: tuple[str, ...] = ()


def _missing(boxes: Sequence[driver_inbox.Mailbox]) -> list[str]:
    """What the step's mailboxes wait for, each part named when there are several."""
    if len(boxes) == 1:
        return boxes[0].missing()
    return [f"{what} of part {i}" for i, box in enumerate(boxes) for what in box.missing()]


def blob_text(blob: common_pb2.BlobRef) -> str:
    return f"{blob.url}#sha256={blob.sha256.hex()}&size={blob.size_bytes}"


def blob_ref(text: str) -> common_pb2.BlobRef:
    url, _, fragment = text.partition("#")
    fields = parse_qs(fragment)
    digest = fields.get("sha256", [""])[-1]
    size = fields.get("size", ["0"])[-1]
    try:
        return common_pb2.BlobRef(
            url=url, sha256=bytes.fromhex(digest), size_bytes=int(size) if size else 0
        )
    except ValueError:
        return common_pb2.BlobRef(url=url)


class Calls:
    def __init__(
        self,
        *,
        client: vnode_client.VNodeClient,
        view: view_mod.View,
        clock: clock_mod.Clock,
        job: job_model.Job,
        attempt: int,
        plan: driver_plan.Plan,
        reply_to: str,
        step_timeout: float,
        blob_store: str,
    ) -> None:
        self._client = client
        self._view = view
        self._clock = clock
        self._job = job
        self._attempt = attempt
        self._plan = plan
        self._reply_to = reply_to
        self._timeout = step_timeout
        self._destination = blob_store.rstrip("/") + "/" if blob_store else ""
        #: slot → epoch, pinned by `restore`.
        self._slots: dict[str, int] = {}

    def _epoch(self, vnode: str, replica: int = 0) -> int:
        return self._slots[self._plan.slot(vnode, replica)]

    def _replicas(self, names: Iterable[str]) -> list[tuple[str, int]]:
        return [(v, r) for v in names for r in range(self._plan.replicas_of(v))]

    def check_epochs(self) -> None:
        for slot, epoch in self._slots.items():
            current = self._view.allocations.get(slot)
            if current is None or current.spec.epoch != epoch:
                now = "no allocation" if current is None else f"epoch {current.spec.epoch}"
                raise Rollback(f"slot {slot} moved from epoch {epoch} to {now}")

    async def _all(self, calls: Iterable[Awaitable[T]], what: str) -> list[T]:
        results = await asyncio.gather(*calls, return_exceptions=True)
        failures = [r for r in results if isinstance(r, BaseException)]
        for failure in failures:
            if not isinstance(failure, vnode_client.SendFailed):
                raise failure
        if failures:
            raise Rollback(f"{what}: {failures[0]}")
        return [r for r in results if not isinstance(r, BaseException)]

    # -- restore --------------------------------------------------------------------------

    async def restore(self) -> None:
        plan, spec, status = self._plan, self._job.spec, self._job.status
        for slot in plan.slots:
            current = self._view.allocations.get(slot)
            if current is None:
                raise Rollback(f"slot {slot} has no allocation")
            self._slots[slot] = current.spec.epoch
        deadline = self._clock.monotonic() + self._timeout

        async def one(vnode: str, replica: int) -> None:
            text = status.checkpoint_blobs.get(plan.slot(vnode))
            request = vnode_pb2.RestoreRequest(
                job=self._job.name,
                step=status.checkpoint_step,
                network=plan.network,
                vnode=vnode,
                replica=replica,
                epoch=self._epoch(vnode, replica),
                seed=spec.seed,
                attempt=self._attempt,
                optimizer=spec.optimizer,
                learning_rate=spec.learning_rate,
                neighbour_replicas=plan.neighbour_replicas(vnode),
            )
            if text and status.checkpoint_step:
                request.blob.CopyFrom(blob_ref(text))
            if spec.data is not None and vnode in plan.sources:  # the job's data wins
                request.data.CopyFrom(
                    common_pb2.DataRef(url=spec.data.url, dataset=spec.data.dataset or "")
                )
            answer = await self._client.restore(
                plan.network,
                vnode,
                request,
                deadline=deadline,
                epoch=self._epoch(vnode, replica),
                replica=replica,
            )
            if answer.step != status.checkpoint_step:
                raise vnode_client.SendFailed(
                    f"{vnode}.{replica} restored to step {answer.step}, "
                    f"not {status.checkpoint_step}"
                )

        await self._all(
            [one(v, r) for v, r in self._replicas(plan.vnodes)],
            f"restore to step {status.checkpoint_step}",
        )
        self.check_epochs()

    # -- one step -------------------------------------------------------------------------

    async def step(
        self,
        boxes: Sequence[driver_inbox.Mailbox],
        step: int,
        indices: np.ndarray[Any, Any],
    ) -> None:
        """Send the batch to every replica of every source, cut into one equal part per
        mailbox of `boxes` (one: the whole batch; several: micro-batches, each part sent once
        the sources took the one before, so parts are in flight together); return once every
        mailbox is complete. The mailboxes share one `changed` signal."""
        plan, clock = self._plan, self._clock
        deadline = clock.monotonic() + self._timeout
        signal = self._view.network_signal(plan.network)
        seen = signal.value
        parts = len(boxes)
        changed = boxes[0].changed

        async def one(source: str, replica: int, part: int, tensor: common_pb2.Tensor) -> None:
            request = vnode_pb2.ForwardRequest(
                job=self._job.name,
                step=step,
                network=plan.network,
                sender_vnode=DRIVER,
                target_vnode=source,
                target_replica=replica,
                target_epoch=self._epoch(source, replica),
                tensor=tensor,
                reply_to=self._reply_to,
                attempt=self._attempt,
            )
            if parts > 1:
                request.micro, request.micro_batches = part, parts
            await self._client.forward(
                plan.network,
                source,
                request,
                deadline=deadline,
                epoch=self._epoch(source, replica),
                replica=replica,
            )

        async def send_all() -> None:
            for part, rows in enumerate(np.split(indices, parts)):
                tensor = tensors.encode(rows)
                await self._all(
                    [one(s, r, part, tensor) for s, r in self._replicas(plan.sources)],
                    f"step {step}: sending the batch"
                    + (f" (part {part} of {parts})" if parts > 1 else ""),
                )

        sends = asyncio.ensure_future(send_all())
        try:
            while not (all(box.complete for box in boxes) and sends.done()):
                failed = next((box for box in boxes if box.failed is not None), None)
                if failed is not None:
                    where = f"step {step}" + (
                        f" (part {boxes.index(failed)} of {parts})" if parts > 1 else ""
                    )
                    if failed.disputed is not None:
                        raise Disputed(failed.disputed, f"{where}: {failed.failed}")
                    raise Rollback(f"{where}: {failed.failed}")
                if sends.done():
                    sends.result()  # raises the Rollback of a failed send
                remaining = deadline - clock.monotonic()
                if remaining <= 0:
                    waiting = ", ".join(_missing(boxes)) or "the sources to accept the batch"
                    raise Rollback(
                        f"step {step} timed out after {self._timeout:g} s waiting for {waiting}"
                    )
                waits: list[Awaitable[Any]] = [
                    changed.wait_past(changed.value),
                    signal.wait_past(seen),
                ]
                if not sends.done():
                    waits.append(asyncio.shield(sends))
                await driver_inbox.first_of(clock, waits, seconds=remaining)
                if signal.value != seen:
                    seen = signal.value
                    self.check_epochs()
            sends.result()
        finally:
            if not sends.done():
                sends.cancel()
                await asyncio.gather(sends, return_exceptions=True)

    # -- checkpoint -----------------------------------------------------------------------

    @property
    def epochs(self) -> dict[str, int]:
        """slot → the epoch this attempt restored and talks to."""
        return dict(self._slots)

    async def checkpoint(self, step: int) -> Checkpointed:
        """Every replica's state after `step`, reduced to each stateful VNode's canonical
        blob; Rollback unless every replica wrote, Disputed when a VNode's replicas have no
        majority."""
        plan = self._plan
        deadline = self._clock.monotonic() + self._timeout

        async def one(vnode: str, replica: int) -> tuple[str, int, common_pb2.BlobRef]:
            request = vnode_pb2.CheckpointRequest(
                job=self._job.name,
                step=step,
                network=plan.network,
                vnode=vnode,
                replica=replica,
                epoch=self._epoch(vnode, replica),
                destination=self._destination,
                attempt=self._attempt,
            )
            answer = await self._client.checkpoint(
                plan.network,
                vnode,
                request,
                deadline=deadline,
                epoch=self._epoch(vnode, replica),
                replica=replica,
            )
            return vnode, replica, answer.blob

        written = await self._all(
            [one(v, r) for v, r in self._replicas(plan.vnodes)], f"checkpoint of step {step}"
        )
        by_vnode: dict[str, dict[int, common_pb2.BlobRef]] = {}
        for vnode, replica, blob in written:
            by_vnode.setdefault(vnode, {})[replica] = blob
        blobs: dict[str, str] = {}
        outliers: list[str] = []
        forged: list[str] = []
        for vnode in plan.vnodes:
            chosen = await driver_checkpoint.choose(by_vnode.get(vnode, {}))
            forged += [plan.slot(vnode, r) for r in chosen.forged]
            if chosen.blob is None:
                raise Disputed(
                    vnode,
                    f"checkpoint of step {step}: the {len(by_vnode.get(vnode, {}))} replicas "
                    f"of {vnode} wrote different states with no majority; a tiebreaker "
                    "replica is requested",
                    forged=tuple(forged),
                )
            if chosen.outliers:
                outliers.append(vnode)
            if chosen.blob.url:
                blobs[plan.slot(vnode)] = blob_text(chosen.blob)
        return Checkpointed(blobs, tuple(outliers), tuple(forged))
