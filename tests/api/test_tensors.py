"""Tensor wire encoding: round trips, and every malformed tensor refused with its field."""

from __future__ import annotations

import numpy as np
import pytest

from api import tensors


@pytest.mark.parametrize(
    "array",
    [
        np.arange(12, dtype=np.float32).reshape(3, 4),
        np.array([1.5, -2.25], dtype=np.float64),
        np.array([[1, 2], [3, 4]], dtype=np.int64),
        np.array(7, dtype=np.int32),
        np.zeros((0,), dtype=np.float32),
        np.array([True, False]),
        np.arange(6, dtype=np.uint8).reshape(1, 2, 3),
        np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
    ],
    ids=lambda a: f"{a.dtype}{list(a.shape)}",
)
def test_round_trip(array: np.ndarray) -> None:
    wire = tensors.encode(array, with_sha256=True)
    back = tensors.decode(wire)
    assert back.dtype == array.dtype
    assert back.shape == array.shape
    np.testing.assert_array_equal(back, array)
    back_writable = tensors.decode(tensors.encode(array))
    assert back_writable.flags.writeable
    # A view (the agent's data plane): the same values over the message's own bytes, which
    # nobody can write into.
    message = tensors.encode(array)
    viewed = tensors.decode(message, view=True)
    assert (viewed.dtype, viewed.shape) == (array.dtype, array.shape)
    np.testing.assert_array_equal(viewed, array)
    assert not viewed.flags.writeable
    assert viewed.base is not None


def test_empty_marker() -> None:
    assert tensors.is_empty(tensors.empty())
    assert not tensors.is_empty(tensors.encode(np.zeros((1,), dtype=np.float32)))
    assert tensors.decode(tensors.empty()).shape == (0,)


def _corrupt(**changes: object):
    wire = tensors.encode(np.arange(4, dtype=np.float32))
    for field, value in changes.items():
        if field == "shape":
            del wire.shape[:]
            wire.shape.extend(value)  # type: ignore[arg-type]
        else:
            setattr(wire, field, value)
    return wire


@pytest.mark.parametrize(
    ("changes", "fragment", "reason"),
    [
        ({"dtype": "complex128"}, "tensor.dtype", "invalid"),
        ({"dtype": ""}, "tensor.dtype", "invalid"),
        ({"shape": [5]}, "tensor.data: 16 bytes", "invalid"),
        ({"shape": [-1, 4]}, "tensor.shape", "invalid"),
        ({"shape": [1] * 9}, "tensor.shape", "invalid"),
        ({"data": b"\x00" * 15}, "tensor.data: 15 bytes", "invalid"),
        ({"crc32": 12345}, "tensor.crc32: checksum mismatch", "checksum"),
        ({"sha256": b"\x00" * 32}, "tensor.sha256", "checksum"),
    ],
)
def test_malformed_tensors_are_refused(changes, fragment, reason) -> None:
    with pytest.raises(tensors.TensorError) as caught:
        tensors.decode(_corrupt(**changes))
    assert fragment in str(caught.value)
    assert caught.value.reason == reason


def test_flipped_byte_is_caught_by_the_checksum() -> None:
    wire = tensors.encode(np.arange(4, dtype=np.float32))
    data = bytearray(wire.data)
    data[3] ^= 0x01
    wire.data = bytes(data)
    with pytest.raises(tensors.TensorError, match="checksum"):
        tensors.decode(wire)


def test_size_limit() -> None:
    wire = tensors.encode(np.zeros(1000, dtype=np.float64))
    with pytest.raises(tensors.TensorError, match="exceeds the limit of 100"):
        tensors.decode(wire, max_bytes=100)


def test_unsupported_dtype_cannot_be_encoded() -> None:
    with pytest.raises(tensors.TensorError, match="dtype"):
        tensors.encode(np.zeros(2, dtype=np.complex64))
