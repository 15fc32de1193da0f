"""What the driver reads itself: checkpoint blobs, never training data.

With replicas, a VNode's canonical checkpoint is elected among the blobs its replicas wrote
(controller.jobs.driver_checkpoint), which may mean hashing a blob to catch a forged digest
or reading its arrays to compare values. Those blobs live in the blob store the orchestrator
names (`serve --blob-store`), so it can read them. Training and inference data it never
opens: the agents hosting the sources hold it (controller.jobs.driver_data).

URLs: `file:///absolute/path` or `s3://bucket/key` through boto3. Blocking reads run in a
thread, off the event loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import zipfile
from pathlib import Path
from typing import IO, Any

import numpy as np


class BlobError(ValueError):
    """The blob cannot be read; the message names the URL."""


def _local_path(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def _open(url: str) -> IO[bytes]:
    if url.startswith("file://"):
        try:
            return _local_path(url).open("rb")
        except OSError as exc:
            raise BlobError(f"blob {url!r}: cannot open ({exc.strerror})") from None
    if url.startswith("s3://"):
        import boto3

        bucket, _, key = url.removeprefix("s3://").partition("/")
        try:
            body = boto3.client("s3").get_object(Bucket=bucket, Key=key)["Body"].read()
        except Exception as exc:
            raise BlobError(f"blob {url!r}: cannot read from S3 ({exc})") from None
        return io.BytesIO(body)
    raise BlobError(f"blob {url!r}: must start with file:// or s3://")


def arrays_sync(url: str) -> dict[str, np.ndarray[Any, Any]]:
    """Every array of a .npz by name; a .npy as the single array named ""."""
    with _open(url) as handle:
        try:
            if url.endswith(".npy"):
                return {"": np.load(handle, allow_pickle=False)}
            with np.load(handle, allow_pickle=False) as archive:
                return {name: archive[name] for name in archive.files}
        except (ValueError, OSError, zipfile.BadZipFile) as exc:
            raise BlobError(f"blob {url!r}: not a readable .npz/.npy ({exc})") from None


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
