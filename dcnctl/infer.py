"""`infer NETWORK --input FILE`: send tensors to the network's sources, print its outputs.

Inputs: a .npy (one array: for the single source, or the one --source names), a .npz
(arrays named by source), JSON (`{"source": [[...]]}`, or a bare nested list for one
source; numbers become float32, what the VNode kinds compute in), or `-` for any of these
on stdin, told apart by their first bytes.
"""

from __future__ import annotations

import argparse
import io
import json
import pathlib
import sys
from typing import Any

import numpy as np

from api import tensors
from api.dcnr.v1 import job_pb2
from api.resources import network
from dcnctl import client as client_mod
from dcnctl import errors, kinds

Client = client_mod.Client
#: Arrays with at most this many elements are printed in full.
SMALL = 100
#: Inference runs a forward pass through every VNode: give it longer than a plain read.
TIMEOUT = 120.0


def infer(args: argparse.Namespace, c: Client) -> int:
    raw, fmt = _read(args.input)
    net = kinds.get(c, kinds.NETWORK, args.network)
    assert isinstance(net, network.Network)
    sources = [v.name for v in net.spec.vnodes if not v.inputs]
    arrays = _arrays(raw, fmt, args.input, sources, args.source, net.name)
    try:
        encoded = {name: tensors.encode(array) for name, array in arrays.items()}
    except tensors.TensorError as exc:
        raise errors.local(f"--input {args.input}: {exc}") from None
    request = job_pb2.InferRequest(header=c.header(), network=net.name)
    for name, tensor in encoded.items():
        request.tensors.tensors[name].CopyFrom(tensor)
    timeout = c.timeout if c.timeout is None else max(c.timeout, TIMEOUT)
    reply = c.call(c.jobs.Infer, request, timeout=timeout)
    for warning in reply.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    try:
        outputs = {name: tensors.decode(t) for name, t in sorted(reply.outputs.items())}
    except tensors.TensorError as exc:
        raise errors.local(f"the server's output is malformed: {exc}") from None
    if args.output_file:
        _write(args.output_file, outputs)
        return 0
    for name, array in outputs.items():
        print(f"{name}: shape {tuple(array.shape)} {array.dtype.name}")
        if _probabilities(array):
            print(f"  predictions: {np.argmax(array, axis=1).tolist()}")
        if array.size <= SMALL:
            text = np.array2string(array, precision=4, suppress_small=True, separator=", ")
            print("  " + text.replace("\n", "\n  "))
    return 0


def _read(path: str) -> tuple[bytes, str]:
    try:
        raw = sys.stdin.buffer.read() if path == "-" else pathlib.Path(path).read_bytes()
    except OSError as exc:
        raise errors.local(f"--input {path}: {exc.strerror or exc}") from None
    if raw.startswith(b"\x93NUMPY"):
        return raw, "npy"
    if raw.startswith(b"PK"):
        return raw, "npz"
    if path != "-" and not path.endswith(".json"):
        raise errors.local(f"--input {path}: not a .npy, .npz or .json file")
    return raw, "json"


def _arrays(
    raw: bytes, fmt: str, path: str, sources: list[str], source: str | None, net: str
) -> dict[str, np.ndarray]:
    where = f"--input {path}"
    if source is not None and source not in sources:
        raise errors.local(f"--source {source!r}: not a source of network {net!r} "
                           f"(its sources: {', '.join(sources)})")  # fmt: skip
    try:
        if fmt == "npz":
            with np.load(io.BytesIO(raw), allow_pickle=False) as found:
                return {name: found[name] for name in found.files}
        if fmt == "npy":
            return {_single(sources, source, net): np.load(io.BytesIO(raw), allow_pickle=False)}
        body = json.loads(raw)
    except (ValueError, OSError) as exc:
        raise errors.local(f"{where}: cannot read it: {exc}") from None
    if isinstance(body, dict):
        return {str(name): _float_array(value, f"{where}: {name}") for name, value in body.items()}
    return {_single(sources, source, net): _float_array(body, where)}


def _single(sources: list[str], source: str | None, net: str) -> str:
    if source is not None:
        return source
    if len(sources) == 1:
        return sources[0]
    raise errors.local(
        f"network {net!r} has sources {', '.join(sources)}: name the one this input is for "
        "with --source, or give a .npz or a JSON object keyed by source"
    )


def _float_array(value: Any, where: str) -> np.ndarray:
    try:
        array = np.asarray(value, dtype=np.float32)
    except (ValueError, TypeError) as exc:
        raise errors.local(f"{where}: must be a nested list of numbers ({exc})") from None
    return array


def _probabilities(array: np.ndarray) -> bool:
    if array.ndim != 2 or array.shape[1] < 2 or not np.issubdtype(array.dtype, np.floating):
        return False
    return bool(np.all(array >= 0) and np.allclose(array.sum(axis=1), 1.0, atol=1e-3))


def _write(path: str, outputs: dict[str, np.ndarray]) -> None:
    try:
        if path.endswith(".npy"):
            if len(outputs) != 1:
                raise errors.local(f"-o {path}: the network has {len(outputs)} sinks "
                                   f"({', '.join(outputs)}); write a .npz")  # fmt: skip
            np.save(path, next(iter(outputs.values())))
        elif path.endswith(".npz"):
            np.savez(path, **outputs)  # type: ignore[arg-type]
        else:
            raise errors.local(f"-o {path}: must end in .npy or .npz")
    except OSError as exc:
        raise errors.local(f"-o {path}: {exc.strerror or exc}") from None
    print(_wrote(path, outputs))


def _wrote(path: str, outputs: dict[str, np.ndarray]) -> str:
    """What was written, said as what it is: the output of each sink VNode (for the digits
    network, the sink is named `loss`, and its output at inference is the probabilities),
    with its shape, so `wrote loss to probabilities.npy` cannot be misread."""
    described = ", ".join(
        f"{name} {tuple(array.shape)} {array.dtype.name}" for name, array in outputs.items()
    )
    noun = "the output of sink VNode" if len(outputs) == 1 else "the outputs of sink VNodes"
    keyed = "" if path.endswith(".npy") else ", one array per sink, named by it"
    return f"wrote {noun} {described} to {path}{keyed}"
