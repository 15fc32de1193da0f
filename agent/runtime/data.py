"""Arrays behind a data reference: `.npz` (one array per key) or `.npy`, from `file://` or `s3://`.

Data sets are treated as immutable: an array is read once per (url, field) and kept in
memory, and an S3 object is downloaded once into the cache directory (named by a digest of
its url, so no key can escape the directory) and read from there afterwards. To pick up a
changed object, publish it under a new url or clear the cache.

The format is told by content, not by name (np.load sees a zip or an .npy header), but a url
ending in ".npy" holds a single array, so its `field` is not needed and is ignored.
Pickled object arrays are refused: a data file is untrusted input.

The agents hold the data; the orchestrator never opens it. What the driver needs to cut
epochs into batches (how many samples a source's array has) it asks the agent hosting the
source (VNodeService.DescribeData, answered from `DataSource.describe`), and a job's own data
(`train --data`) reaches the sources in their Restore, so `Sources` resolves every data ref
the same way: `--dataset` mapping first, then relative file:// urls against `--workdir`.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import io
import os
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from agent.runtime import errors

SCHEMES = ("file://", "s3://")


def needs_field(url: str) -> bool:
    """Whether an array must be named within the file (an .npz) or the file is one array."""
    return not url.lower().endswith(".npy")


@dataclasses.dataclass(frozen=True, slots=True)
class Description:
    """What a source's data holds, as DescribeData answers it."""

    #: The shape of the array the VNode reads; None when the data does not hold it.
    shape: tuple[int, ...] | None
    dtype: str
    #: Every array the data holds ("" for a .npy's one array).
    fields: tuple[str, ...]
    #: Where it was read: the local path of a file:// url, else the url.
    where: str


class DataSource:
    def __init__(
        self,
        url: str,
        *,
        workdir: Path,
        cache_dir: Path | None = None,
        endpoint_url: str | None = None,
    ) -> None:
        if not url.startswith(SCHEMES) or url in SCHEMES:
            raise errors.DataError(f"data.url: {url!r} must start with file:// or s3://")
        if url.startswith("s3://"):
            bucket, _, key = url[len("s3://") :].partition("/")
            if not bucket or not key:
                raise errors.DataError(f"data.url: {url!r} must be s3://BUCKET/KEY")
        self.url = url
        self._workdir = workdir
        self._cache_dir = cache_dir
        self._endpoint_url = endpoint_url
        self._arrays: dict[str, np.ndarray] = {}
        self._raw: bytes | None = None
        self._fields: list[str] | None = None
        # The agent may serve two batches of one VNode from worker threads at once.
        self._lock = threading.Lock()

    def path(self) -> Path:
        """The local file for a file:// url: absolute, or relative to the working directory."""
        rest = self.url[len("file://") :]
        return Path(rest) if rest.startswith("/") else self._workdir / rest

    def fields(self) -> list[str]:
        """The names of the arrays the data holds ("" for a .npy's one array)."""
        if not needs_field(self.url):
            return [""]
        with self._lock:
            if self._fields is None:
                self._fields = self._names()
            return list(self._fields)

    def describe(self, field: str) -> Description:
        """What the driver needs to cut batches: the array `field` (a .npy's one array) if
        the data holds it, and every array it holds, so an error can name them."""
        names = self.fields()
        key = field if needs_field(self.url) else ""
        where = str(self.path()) if self.url.startswith("file://") else self.url
        if key not in names:
            return Description(None, "", tuple(names), where)
        array = self.array(field)
        if not array.shape:
            raise errors.DataError(
                f"params.field: {field!r} in {self.url!r} is a scalar; a source needs an "
                "array whose first dimension counts the samples"
            )
        return Description(tuple(array.shape), array.dtype.name, tuple(names), where)

    def loaded(self) -> bool:
        """Whether an array of it is in memory: the file was read (and S3 data downloaded)
        once, so reading another field costs no download."""
        return bool(self._arrays)

    def array(self, field: str) -> np.ndarray:
        key = field if needs_field(self.url) else ""
        with self._lock:
            if key not in self._arrays:
                self._arrays[key] = self._load(key)
            return self._arrays[key]

    def _open(self) -> Any:
        """np.load of the data: an array for a .npy, a lazy archive for a .npz."""
        source = self._source()
        try:
            return np.load(source, allow_pickle=False)
        except FileNotFoundError:
            raise errors.DataError(
                f"data.url: {self.url!r}: no such file {str(source)!r} "
                f"(relative file:// urls resolve against {str(self._workdir)!r})"
            ) from None
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
            raise errors.DataError(
                f"data.url: {self.url!r} is not an .npz or .npy file: {exc}"
            ) from None

    def _names(self) -> list[str]:
        loaded = self._open()
        if isinstance(loaded, np.ndarray):
            return [""]
        with loaded as archive:
            return list(archive.files)

    def _load(self, field: str) -> np.ndarray:
        loaded = self._open()
        if isinstance(loaded, np.ndarray):
            return loaded
        with loaded as archive:
            if field not in archive.files:
                present = ", ".join(sorted(archive.files)) or "none"
                raise errors.DataError(
                    f"params.field: {field!r} is not an array in {self.url!r}; "
                    f"arrays present: {present}"
                )
            try:
                return np.asarray(archive[field])
            except (ValueError, OSError, zipfile.BadZipFile) as exc:
                raise errors.DataError(
                    f"params.field: {field!r} in {self.url!r} cannot be read: {exc}"
                ) from None

    def _source(self) -> Path | io.BytesIO:
        """A local file when there is one, so that only the arrays asked for stay in memory;
        the downloaded bytes themselves only when S3 data has no cache directory."""
        if self.url.startswith("file://"):
            return self.path()
        cached = self._cache_path()
        if cached is not None:
            if not cached.is_file():
                self._store(cached, self._download())
            return cached
        if self._raw is None:
            self._raw = self._download()
        return io.BytesIO(self._raw)

    def _cache_path(self) -> Path | None:
        if self._cache_dir is None:
            return None
        digest = hashlib.sha256(self.url.encode()).hexdigest()
        return self._cache_dir / "s3" / digest

    def _store(self, cached: Path, data: bytes) -> None:
        """Write-then-rename, so a crash or a concurrent agent never leaves half a file."""
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            partial = cached.with_name(f"{cached.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_bytes(data)
            os.replace(partial, cached)
        except OSError as exc:
            raise errors.DataError(
                f"data.url: {self.url!r}: cannot cache it under {str(cached.parent)!r}: {exc}"
            ) from None

    def _download(self) -> bytes:
        # boto3 is heavy to import and only S3 data needs it.
        import boto3
        import botocore.exceptions

        bucket, _, key = self.url[len("s3://") :].partition("/")
        client = boto3.client("s3", endpoint_url=self._endpoint_url)
        try:
            body = client.get_object(Bucket=bucket, Key=key)["Body"]
            return bytes(body.read())
        except botocore.exceptions.ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "error")
            raise errors.DataError(f"data.url: {self.url!r}: S3 said {code}: {exc}") from None
        except botocore.exceptions.BotoCoreError as exc:
            raise errors.DataError(f"data.url: {self.url!r}: cannot reach S3: {exc}") from None


class Sources:
    """This agent's data sources, one per data it reads, shared by every VNode, job and
    description that names the same data: a data set is read once however many attempts,
    jobs and DescribeData calls ask for it. A data ref naming a data set this machine
    declared (`--dataset NAME=URL`) reads the local copy instead of the ref's url. At most
    `limit` sources are kept (least recently used out first); one still in use by a VNode
    goes on working, it is only no longer shared."""

    def __init__(
        self,
        *,
        workdir: Path,
        cache_dir: Path | None = None,
        datasets: dict[str, str] | None = None,
        limit: int = 16,
    ) -> None:
        self._workdir = workdir
        self._cache_dir = cache_dir
        self._datasets = dict(datasets or {})
        self._limit = limit
        self._sources: collections.OrderedDict[str, DataSource] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, url: str, dataset: str = "") -> DataSource:
        """The source for a data ref; DataError when its url is not file:// or s3://."""
        chosen = self._datasets.get(dataset, url) if dataset else url
        with self._lock:
            found = self._sources.get(chosen)
            if found is None:
                found = DataSource(chosen, workdir=self._workdir, cache_dir=self._cache_dir)
                self._sources[chosen] = found
                while len(self._sources) > self._limit:
                    self._sources.popitem(last=False)
            self._sources.move_to_end(chosen)
            return found
