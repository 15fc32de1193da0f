"""Tensors on the wire: numpy arrays to and from `dcnr.v1.Tensor`, checked on the way in.

Both ends of the data plane use this: agents, and the orchestrator's job driver, which
moves inputs and outputs without computing on them. Decoding refuses anything malformed
with a `TensorError` naming the field, so a corrupted or forged tensor never reaches math.
"""

from __future__ import annotations

import hashlib
import zlib
from math import prod

import numpy as np

from api.dcnr.v1 import common_pb2

#: dtypes the wire carries (bfloat16 has no numpy type of its own here).
DTYPES = ("float64", "float32", "float16", "int64", "int32", "uint8", "bool")
MAX_DIMS = 8


class TensorError(ValueError):
    """A tensor that must be refused; `reason` is "checksum" for a CRC mismatch (DATA_LOSS)
    and "invalid" for anything else malformed (INVALID_ARGUMENT)."""

    def __init__(self, message: str, *, reason: str = "invalid") -> None:
        super().__init__(message)
        self.reason = reason


def encode(array: np.ndarray, *, with_sha256: bool = False) -> common_pb2.Tensor:
    array = np.asarray(array)
    if array.dtype.name not in DTYPES:
        raise TensorError(f"dtype: {array.dtype.name!r} is not one of {', '.join(DTYPES)}")
    data = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return common_pb2.Tensor(
        dtype=array.dtype.name,
        shape=list(array.shape),
        data=data,
        crc32=zlib.crc32(data),
        sha256=hashlib.sha256(data).digest() if with_sha256 else b"",
    )


def empty() -> common_pb2.Tensor:
    """The "no gradient on this edge" / "no input given" marker: shape [0], float32."""
    return encode(np.zeros((0,), dtype=np.float32))


def is_empty(tensor: common_pb2.Tensor) -> bool:
    return len(tensor.shape) == 1 and tensor.shape[0] == 0


def decode(
    tensor: common_pb2.Tensor, *, max_bytes: int | None = None, view: bool = False
) -> np.ndarray:
    """The array a Tensor holds, after checking dtype, shape, size and checksums. `view`: a
    read-only array over the message's bytes instead of a copy of them (little-endian
    machines; a big-endian one still converts), for a receiver that never writes into what
    it received (the agent's data plane: its co-located messages are read-only too)."""
    if tensor.dtype not in DTYPES:
        raise TensorError(f"tensor.dtype: {tensor.dtype!r} is not one of {', '.join(DTYPES)}")
    shape = list(tensor.shape)
    if len(shape) > MAX_DIMS or any(d < 0 for d in shape):
        raise TensorError(f"tensor.shape: {shape} must have at most {MAX_DIMS} non-negative dims")
    dtype = np.dtype(tensor.dtype).newbyteorder("<")
    expected = prod(shape) * dtype.itemsize
    if max_bytes is not None and max(expected, len(tensor.data)) > max_bytes:
        raise TensorError(
            f"tensor.data: {max(expected, len(tensor.data))} bytes exceeds the limit of {max_bytes}"
        )
    if len(tensor.data) != expected:
        raise TensorError(
            f"tensor.data: {len(tensor.data)} bytes, but dtype {tensor.dtype} and shape {shape} "
            f"need {expected}"
        )
    if zlib.crc32(tensor.data) != tensor.crc32:
        raise TensorError(
            "tensor.crc32: checksum mismatch (corrupted in transit)", reason="checksum"
        )
    if tensor.sha256 and hashlib.sha256(tensor.data).digest() != tensor.sha256:
        raise TensorError("tensor.sha256: digest mismatch", reason="checksum")
    array = np.frombuffer(tensor.data, dtype=dtype).reshape(shape)
    if view and dtype.isnative:
        return array  # frombuffer over bytes: read-only already
    return array.astype(dtype.newbyteorder("="), copy=True)
