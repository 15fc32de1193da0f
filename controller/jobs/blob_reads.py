"""What the driver needs to know about data without computing on it.

Training: the number of rows of a source's array, to cut epochs into batches of indices.
Only the .npy header is read (for a local .npz, only its member's header), so the
orchestrator never loads a data set to learn its length. Inference on a data reference:
the arrays themselves, because the driver hands them to the sources.

URLs are those of the Network manifest: `file://relative/path` (against the working
directory, as the agents read it), `file:///absolute/path`, `s3://bucket/key` through boto3.
Blocking reads run in a thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np


class DataError(ValueError):
    """The data cannot be read as asked; the message names the URL and field."""


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def _open(url: str) -> IO[bytes]:
    if url.startswith("file://"):
        try:
            return _local_path(url).open("rb")
        except OSError as exc:
            raise DataError(f"data url {url!r}: cannot open ({exc.strerror})") from None
    if url.startswith("s3://"):
        import boto3

        bucket, _, key = url.removeprefix("s3://").partition("/")
        try:
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise DataError(f"data url {url!r}: cannot read from S3 ({exc})") from None
        return io.BytesIO(body)
    raise DataError(f"data url {url!r}: must start with file:// or s3://")


def _header_shape(handle: IO[bytes], where: str) -> tuple[int, ...]:
    try:
        version = np.lib.format.read_magic(handle)
        if version == (1, 0):
            shape, _, _ = np.lib.format.read_array_header_1_0(handle)
        else:
            shape, _, _ = np.lib.format.read_array_header_2_0(handle)
    except ValueError as exc:
        raise DataError(f"{where}: not a .npy array ({exc})") from None
    return tuple(int(d) for d in shape)


def rows_sync(url: str, field: str | None) -> int:
    """Rows (the first dimension) of the array `field` of a .npz, or of a .npy."""
    with _open(url) as handle:
        if url.endswith(".npy"):
            shape = _header_shape(handle, url)
        else:
            if not field:
                raise DataError(
                    f"data url {url!r}: a .npz holds several arrays; the VNode's "
                    "params.field must name one"
                )
            try:
                with zipfile.ZipFile(handle) as archive:
                    names = [n.removesuffix(".npy") for n in archive.namelist()]
                    if field not in names:
                        raise DataError(
                            f"params.field: {field!r} is not an array of {url!r} "
                            f"(it holds: {', '.join(sorted(names))})"
                        )
                    with archive.open(f"{field}.npy") as member:
                        shape = _header_shape(member, f"{url}[{field}]")
            except zipfile.BadZipFile:
                raise DataError(f"data url {url!r}: not a .npz (zip) file") from None
    if not shape:
        raise DataError(f"{url}[{field}]: a scalar has no rows")
    return shape[0]


async def rows(url: str, field: str | None) -> int:
    return await asyncio.to_thread(rows_sync, url, field)


def arrays_sync(url: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every array of a .npz by name; a .npy as the single array named ""."""
    with _open(url) as handle:
        try:
            if url.endswith(".npy"):
                return {"": np.load(handle, allow_pickle=False)}
            with np.load(handle, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise DataError(f"data url {url!r}: not a readable .npz/.npy ({exc})") from None


async def arrays(url: str) -> dict[str, np.ndarray[Any, Any]]:
    return await asyncio.to_thread(arrays_sync, url)


def sha256_sync(url: str) -> bytes:
    """The SHA-256 of the blob's bytes, read in chunks."""
    digest = hashlib.sha256()
    with _open(url) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.digest()


async def sha256(url: str) -> bytes:
    return await asyncio.to_thread(sha256_sync, url)
