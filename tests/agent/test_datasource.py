"""DataSource: .npz and .npy from file:// and s3:// (a real moto server over HTTP), cached."""

from __future__ import annotations

import uuid
from pathlib import Path

import boto3
import numpy as np
import pytest

from agent.runtime import data, errors

X = np.arange(6, dtype=np.float32).reshape(3, 2)
Y = np.array([0, 1, 2])


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "sets").mkdir()
    np.savez(tmp_path / "sets" / "d.npz", x=X, y=Y)
    np.save(tmp_path / "sets" / "x.npy", X)
    (tmp_path / "sets" / "junk.npz").write_bytes(b"not numpy")
    return tmp_path


def test_relative_file_urls_resolve_against_the_workdir(files: Path) -> None:
    source = data.DataSource("file://sets/d.npz", workdir=files)
    np.testing.assert_array_equal(source.array("x"), X)
    np.testing.assert_array_equal(source.array("y"), Y)


def test_absolute_file_urls_and_npy(files: Path, tmp_path: Path) -> None:
    source = data.DataSource(f"file://{files}/sets/x.npy", workdir=Path("/nonexistent"))
    np.testing.assert_array_equal(source.array("anything"), X)
    assert not data.needs_field(source.url)


def test_arrays_stay_in_memory_once_read(files: Path) -> None:
    source = data.DataSource("file://sets/d.npz", workdir=files)
    first = source.array("x")
    (files / "sets" / "d.npz").unlink()
    assert source.array("x") is first


@pytest.mark.parametrize(
    ("url", "field", "message"),
    [
        ("file://sets/none.npz", "x", r"'file://sets/none.npz': no such file .* resolve against"),
        (
            "file://sets/d.npz",
            "z",
            "params.field: 'z' is not an array in 'file://sets/d.npz'; arrays present: x, y",
        ),
        ("file://sets/junk.npz", "x", "'file://sets/junk.npz' is not an .npz or .npy file"),
        ("file://sets", "x", "'file://sets' is not an .npz or .npy file"),
    ],
)
def test_unreadable_data_is_named(files: Path, url: str, field: str, message: str) -> None:
    with pytest.raises(errors.DataError, match=message):
        data.DataSource(url, workdir=files).array(field)


def test_describe_says_what_the_driver_needs_without_it_opening_anything(files: Path) -> None:
    found = data.DataSource("file://sets/d.npz", workdir=files).describe("x")
    assert found == data.Description((3, 2), "float32", ("x", "y"), str(files / "sets/d.npz"))
    absent = data.DataSource("file://sets/d.npz", workdir=files).describe("z")
    assert (absent.shape, absent.fields) == (None, ("x", "y"))
    one = data.DataSource("file://sets/x.npy", workdir=files).describe("ignored")
    assert (one.shape, one.fields) == ((3, 2), ("",))
    with pytest.raises(errors.DataError, match="no such file"):
        data.DataSource("file://sets/none.npz", workdir=files).describe("x")
    np.savez(files / "sets" / "scalar.npz", s=np.float32(1))
    with pytest.raises(errors.DataError, match="scalar"):
        data.DataSource("file://sets/scalar.npz", workdir=files).describe("s")


def test_sources_share_one_read_and_map_declared_datasets(files: Path) -> None:
    local = f"file://{files}/sets/d.npz"
    sources = data.Sources(workdir=files, datasets={"digits": local}, limit=2)
    first = sources.get("file://sets/d.npz")
    assert sources.get("file://sets/d.npz") is first, "one source per data, shared"
    mapped = sources.get("s3://far/away.npz", "digits")
    assert mapped.url == local, "a declared data set reads the local copy"
    assert sources.get("s3://far/away.npz", "unknown").url == "s3://far/away.npz"
    assert sources.get("file://sets/d.npz") is not first, "the least recently used went out"


@pytest.mark.parametrize("url", ["http://x/d.npz", "file://", "s3://", "s3://bucket", "s3:///key"])
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(errors.DataError, match=r"data\.url: "):
        data.DataSource(url, workdir=Path())


@pytest.fixture
def bucket(moto_endpoint: str) -> str:
    name = f"data-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=moto_endpoint).create_bucket(Bucket=name)
    return name


def upload(endpoint: str, bucket: str, key: str, path: Path) -> None:
    boto3.client("s3", endpoint_url=endpoint).put_object(
        Bucket=bucket, Key=key, Body=path.read_bytes()
    )


def test_s3_is_downloaded_once_into_the_cache(
    files: Path, tmp_path: Path, bucket: str, moto_endpoint: str
) -> None:
    upload(moto_endpoint, bucket, "sets/../d.npz", files / "sets" / "d.npz")
    url = f"s3://{bucket}/sets/../d.npz"
    cache = tmp_path / "cache"
    source = data.DataSource(url, workdir=files, cache_dir=cache, endpoint_url=moto_endpoint)
    np.testing.assert_array_equal(source.array("y"), Y)
    cached = list(cache.rglob("*"))
    assert [p for p in cached if p.is_file()], "the object is kept in the cache directory"
    assert all(p.resolve().is_relative_to(cache.resolve()) for p in cached)

    boto3.client("s3", endpoint_url=moto_endpoint).delete_object(Bucket=bucket, Key="sets/../d.npz")
    again = data.DataSource(url, workdir=files, cache_dir=cache, endpoint_url=moto_endpoint)
    np.testing.assert_array_equal(again.array("x"), X)


def test_s3_without_a_cache_dir(files: Path, bucket: str, moto_endpoint: str) -> None:
    upload(moto_endpoint, bucket, "x.npy", files / "sets" / "x.npy")
    source = data.DataSource(f"s3://{bucket}/x.npy", workdir=files, endpoint_url=moto_endpoint)
    np.testing.assert_array_equal(source.array(""), X)


def test_missing_s3_object_is_named(files: Path, bucket: str, moto_endpoint: str) -> None:
    url = f"s3://{bucket}/missing.npz"
    source = data.DataSource(url, workdir=files, endpoint_url=moto_endpoint)
    with pytest.raises(errors.DataError, match=f"data.url: '{url}': S3 said NoSuchKey"):
        source.array("x")
