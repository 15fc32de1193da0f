"""The checkpoint blob store: a directory (`file://`) in embedded mode, S3 (`s3://`) in a cluster.

One boundary with two methods, `put` and `get`; boto3 and filesystem errors become
`BlobError` here so the data plane maps one exception to one gRPC status. Every blob is
addressed by the SHA-256 the writer computed, and `get` refuses content that does not
match it: a checkpoint store is shared, and a restored VNode must start from exactly the
state that was checkpointed, not from whatever a bucket now holds.

Blocking I/O (boto3, file writes) runs in a worker thread. The S3 endpoint comes from
boto3's own configuration (AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, profiles), or
`s3_endpoint` for an explicit one.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any
from urllib import parse

from api.dcnr.v1 import common_pb2


class BlobError(Exception):
    """`kind` "io": the store could not be written or read (may pass); "integrity": the
    content is not what was written; "invalid": the URL or a name cannot be used."""

    def __init__(self, message: str, *, kind: str = "io") -> None:
        super().__init__(message)
        self.kind = kind


def checkpoint_key(job: str, vnode: str, replica: int, step: int) -> str:
    """`{job}/{vnode}-{replica}/step-{step}.npz`, refusing names that could escape the
    destination (they come over the network)."""
    for what, name in (("job", job), ("vnode", vnode)):
        if not name or "/" in name or "\\" in name or name in (".", "..") or "\0" in name:
            raise BlobError(
                f"{what}: {name!r} cannot name a checkpoint path component", kind="invalid"
            )
    return f"{job}/{vnode}-{replica}/step-{step}.npz"


class BlobStore:
    def __init__(self, *, workdir: Path, s3_endpoint: str | None = None) -> None:
        """`workdir` anchors relative `file://` URLs ("file://checkpoints/" is
        <workdir>/checkpoints/), as for data references."""
        self._workdir = workdir
        self._s3_endpoint = s3_endpoint
        self._s3: Any = None
        self._s3_lock = threading.Lock()

    async def put(self, destination: str, key: str, data: bytes) -> common_pb2.BlobRef:
        if not destination.endswith("/"):
            destination += "/"
        url = destination + key
        scheme = parse.urlsplit(url).scheme
        if scheme == "file":
            await asyncio.to_thread(self._put_file, self._path(url), data)
        elif scheme == "s3":
            bucket, object_key = _bucket_key(url)
            await asyncio.to_thread(self._put_s3, bucket, object_key, data)
        else:
            raise BlobError(
                f"destination: {destination!r} must start with file:// or s3://", kind="invalid"
            )
        return common_pb2.BlobRef(
            url=url, sha256=hashlib.sha256(data).digest(), size_bytes=len(data)
        )

    async def get(self, blob: common_pb2.BlobRef, *, max_bytes: int) -> bytes:
        """The blob's content, verified against its size and SHA-256."""
        if blob.size_bytes > max_bytes:
            raise BlobError(
                f"blob.size_bytes: {blob.size_bytes} exceeds the limit {max_bytes}", kind="invalid"
            )
        if len(blob.sha256) != 32:
            raise BlobError(
                f"blob.sha256: {len(blob.sha256)} bytes, a SHA-256 digest has 32", kind="invalid"
            )
        scheme = parse.urlsplit(blob.url).scheme
        if scheme == "file":
            data = await asyncio.to_thread(self._get_file, self._path(blob.url), max_bytes)
        elif scheme == "s3":
            bucket, key = _bucket_key(blob.url)
            data = await asyncio.to_thread(self._get_s3, bucket, key, max_bytes)
        else:
            raise BlobError(
                f"blob.url: {blob.url!r} must start with file:// or s3://", kind="invalid"
            )
        if len(data) != blob.size_bytes or hashlib.sha256(data).digest() != blob.sha256:
            raise BlobError(
                f"blob {blob.url}: content ({len(data)} bytes) does not match its sha256 "
                f"{blob.sha256.hex()} ({blob.size_bytes} bytes): modified or truncated",
                kind="integrity",
            )
        return data

    # -- files ------------------------------------------------------------------------------

    def _path(self, url: str) -> Path:
        rest = url.removeprefix("file://")
        path = Path(parse.unquote(rest))
        return path if path.is_absolute() else self._workdir / path

    @staticmethod
    def _put_file(path: Path, data: bytes) -> None:
        """Write-then-rename with fsync, so a reader never sees half a checkpoint and a
        crash leaves either the old blob or the new one."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            raise BlobError(f"writing {path}: {exc.strerror or exc}") from None

    @staticmethod
    def _get_file(path: Path, max_bytes: int) -> bytes:
        try:
            with path.open("rb") as blob:
                return blob.read(max_bytes + 1)
        except OSError as exc:
            raise BlobError(f"reading {path}: {exc.strerror or exc}") from None

    # -- s3 ---------------------------------------------------------------------------------

    def _client(self) -> Any:
        with self._s3_lock:
            if self._s3 is None:
                import boto3  # only agents that checkpoint to S3 pay for importing boto3

                self._s3 = boto3.client("s3", endpoint_url=self._s3_endpoint)
            return self._s3

    def _put_s3(self, bucket: str, key: str, data: bytes) -> None:
        try:
            self._client().put_object(Bucket=bucket, Key=key, Body=data)
        except Exception as exc:  # botocore's errors share no useful base with OSError
            raise BlobError(f"writing s3://{bucket}/{key}: {exc}") from None

    def _get_s3(self, bucket: str, key: str, max_bytes: int) -> bytes:
        try:
            body = self._client().get_object(Bucket=bucket, Key=key)["Body"]
            data: bytes = body.read(max_bytes + 1)
            return data
        except Exception as exc:
            raise BlobError(f"reading s3://{bucket}/{key}: {exc}") from None


def _bucket_key(url: str) -> tuple[str, str]:
    parts = parse.urlsplit(url)
    key = parts.path.lstrip("/")
    if not parts.netloc or not key:
        raise BlobError(f"{url!r}: an S3 URL is s3://BUCKET/KEY", kind="invalid")
    return parts.netloc, key
