"""A VNode's training state: where its randomness comes from, and its checkpoint bytes.

Initialization must be the same on whichever PNode a VNode lands, and after every re-place:
so the generator is seeded from (network, vnode, seed) alone, never from the machine, the
replica or the time. The reference runner uses the same function, so a distributed run and
a single-process one start from identical weights.

Checkpoint bytes are an uncompressed .npz: "param/<name>" and "optim/<slot>" arrays plus
"meta/step" — plain numpy, readable without this code, and loaded without pickle, since a
blob store is only as trustworthy as whoever else can write to it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import zipfile
from collections.abc import Mapping
from typing import Any

import numpy as np

from agent.runtime import errors, optim

PARAM, OPTIM, STEP = "param/", "optim/", "meta/step"


@dataclasses.dataclass
class VNodeState:
    params: dict[str, np.ndarray]
    optimizer: optim.Optimizer


def initial_rng(network: str, vnode: str, seed: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{network}/{vnode}/{seed}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def to_bytes(
    params: Mapping[str, np.ndarray], optimizer_state: Mapping[str, np.ndarray], *, step: int
) -> bytes:
    arrays: dict[str, Any] = {PARAM + k: np.asarray(v) for k, v in params.items()}
    arrays.update({OPTIM + k: np.asarray(v) for k, v in optimizer_state.items()})
    arrays[STEP] = np.asarray(step, dtype=np.int64)
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def from_bytes(blob: bytes) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], int]:
    """(params, optimizer state, step); StateError for anything that is not such a state."""
    params: dict[str, np.ndarray] = {}
    optimizer_state: dict[str, np.ndarray] = {}
    if not blob.startswith(b"PK"):
        raise errors.StateError(f"checkpoint: not a VNode state (.npz): starts {blob[:8]!r}")
    try:
        # A zip (checked above) always loads as an NpzFile, never as a single array.
        with np.load(io.BytesIO(blob), allow_pickle=False) as archive:
            names = list(archive.files)
            if STEP not in names:
                raise errors.StateError(f"checkpoint: no {STEP!r} entry; entries: {names}")
            step = archive[STEP]
            for name in names:
                if name.startswith(PARAM):
                    params[name[len(PARAM) :]] = np.array(archive[name])
                elif name.startswith(OPTIM):
                    optimizer_state[name[len(OPTIM) :]] = np.array(archive[name])
                elif name != STEP:
                    raise errors.StateError(
                        f"checkpoint: unexpected entry {name!r}; entries are {PARAM}*, "
                        f"{OPTIM}* and {STEP}"
                    )
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        if isinstance(exc, errors.StateError):
            raise
        raise errors.StateError(f"checkpoint: not a VNode state (.npz): {exc}") from exc
    if step.shape != () or not np.issubdtype(step.dtype, np.integer):
        raise errors.StateError(f"checkpoint: {STEP} must be one integer, got {step!r}")
    return params, optimizer_state, int(step)
