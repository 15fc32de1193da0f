"""Which checkpoint is a VNode's when several replicas wrote one: the majority's.

Every replica of a VNode writes its own state after the same step. The VNode's canonical
checkpoint is the blob a strict majority of its replicas produced: first byte for byte
(equal sha256, the usual case on identical CPUs and the only one that needs no I/O here);
failing that, the driver reads the blobs and compares their arrays with `api.quorum.agree`,
because honest replicas on different CPUs round differently and their bytes differ while
their values agree. Still no majority is a dispute: the VNode needs a tiebreaker replica,
and the checkpoint is not recorded.

One blob per VNode is recorded (and every replica restores from it), so the replicas of
a VNode start every attempt from identical state.

A replica's digest is its own claim. A liar could claim the majority's digest for a blob
holding something else; elected, it would make every restore fail its digest check and wedge
the run in rollbacks. So with several replicas, the digest majority's blobs are read and
hashed here before one is elected: a blob whose bytes do not match its claimed digest is
forged (a provable lie: its writer is struck) and counts for nobody.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

from api import quorum
from api.dcnr.v1 import common_pb2
from controller.jobs import blob_reads

Arrays = dict[str, np.ndarray[Any, Any]]


class How(enum.Enum):
    #: Equal sha256 (or no blob at all: a stateless VNode) from a strict majority.
    DIGEST = "digest"
    #: Different bytes, but a strict majority's arrays agree within tolerance.
    TENSORS = "tensors"
    #: No strict majority either way.
    DISPUTED = "disputed"


@dataclasses.dataclass(frozen=True, slots=True)
class Canonical:
    how: How
    #: The VNode's blob (an empty BlobRef: stateless); None when disputed.
    blob: common_pb2.BlobRef | None
    #: Replicas whose checkpoint is not the majority's (empty when disputed).
    outliers: tuple[int, ...] = ()
    #: Replicas whose blob's bytes do not match the digest they claimed for it.
    forged: tuple[int, ...] = ()

    @property
    def disputed(self) -> bool:
        return self.how is How.DISPUTED


def _majority(groups: list[list[int]], n: int) -> list[int] | None:
    best = max(groups, key=len, default=[])
    return best if len(best) >= n // 2 + 1 else None


def by_digest(blobs: Mapping[int, common_pb2.BlobRef]) -> Canonical | None:
    """The majority by sha256 (pure); None when there is none."""
    groups: dict[tuple[str, bytes], list[int]] = {}
    for replica in sorted(blobs):
        blob = blobs[replica]
        groups.setdefault((blob.url and "blob", bytes(blob.sha256)), []).append(replica)
    best = _majority(list(groups.values()), len(blobs))
    if best is None:
        return None
    outliers = tuple(r for r in sorted(blobs) if r not in best)
    return Canonical(How.DIGEST, blobs[best[0]], outliers)


def by_value(blobs: Mapping[int, common_pb2.BlobRef], arrays: Mapping[int, Arrays]) -> Canonical:
    """The majority by comparing arrays (pure). A replica missing from `arrays` (its blob
    could not be read) agrees with nobody."""
    groups: list[list[int]] = []
    for replica in sorted(blobs):
        mine = arrays.get(replica)
        for group in groups:
            theirs = arrays.get(group[0])
            if mine is not None and theirs is not None and same_state(mine, theirs):
                group.append(replica)
                break
        else:
            groups.append([replica])
    best = _majority(groups, len(blobs))
    if best is None:
        return Canonical(How.DISPUTED, None)
    outliers = tuple(r for r in sorted(blobs) if r not in best)
    return Canonical(How.TENSORS, blobs[best[0]], outliers)


def same_state(a: Arrays, b: Arrays) -> bool:
    return a.keys() == b.keys() and all(quorum.agree(a[k], b[k]) for k in a)


async def choose(blobs: Mapping[int, common_pb2.BlobRef]) -> Canonical:
    """replica → the blob it wrote, to the VNode's canonical checkpoint. With several
    replicas the digest majority's blobs are hashed (off the event loop) to catch forged
    digests; the blobs are read as arrays only when the digests have no majority."""
    forged = await _forged(blobs) if len(blobs) > 1 else ()
    honest = {r: b for r, b in blobs.items() if r not in forged}
    found = by_digest(honest)
    if found is not None and len(honest) - len(found.outliers) < len(blobs) // 2 + 1:
        found = None  # a majority of the unforged blobs, not of every replica
    if found is not None:
        found = dataclasses.replace(found, outliers=tuple(sorted({*found.outliers, *forged})))
    else:
        arrays: dict[int, Arrays] = {}
        for replica, blob in honest.items():
            if not blob.url:
                arrays[replica] = {}
                continue
            try:
                arrays[replica] = await blob_reads.arrays(blob.url)
            except blob_reads.BlobError:
                continue  # unreadable: it cannot be part of a majority
        found = by_value(blobs, arrays)  # a forged replica has no arrays: agrees with none
    return dataclasses.replace(found, forged=forged)


async def _forged(blobs: Mapping[int, common_pb2.BlobRef]) -> tuple[int, ...]:
    """Replicas of the claimed-digest majority whose bytes do not hash to their claim (an
    unreadable blob is not proof of a lie: it is left to the vote)."""
    best = by_digest(blobs)
    if best is None or best.blob is None or not best.blob.url:
        return ()
    forged = []
    for replica in sorted(blobs):
        if replica in best.outliers:
            continue
        blob = blobs[replica]
        try:
            actual = await blob_reads.sha256(blob.url)
        except blob_reads.BlobError:
            continue
        if actual != bytes(blob.sha256):
            forged.append(replica)
    return tuple(forged)
