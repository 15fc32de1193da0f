"""The checkpoint blob store: a directory and S3 (a real moto server over HTTP)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import boto3
import pytest

from agent import blobs
from api.dcnr.v1 import common_pb2

CONTENT = b"PK\x03\x04 not really a zip, but bytes are bytes" * 100


async def round_trip(store: blobs.BlobStore, destination: str) -> common_pb2.BlobRef:
    key = blobs.checkpoint_key("job-1", "fc1", 0, 40)
    ref = await store.put(destination, key, CONTENT)
    assert ref.url == destination.rstrip("/") + "/job-1/fc1-0/step-40.npz"
    assert ref.sha256 == hashlib.sha256(CONTENT).digest()
    assert ref.size_bytes == len(CONTENT)
    assert await store.get(ref, max_bytes=1 << 20) == CONTENT
    return ref


@pytest.mark.parametrize("relative", [False, True])
async def test_a_directory_round_trip_and_tampering_is_detected(tmp_path: Path, relative):
    store = blobs.BlobStore(workdir=tmp_path)
    destination = "file://ckpt/" if relative else f"file://{tmp_path}/ckpt/"
    ref = await round_trip(store, destination)
    path = tmp_path / "ckpt" / "job-1" / "fc1-0" / "step-40.npz"
    assert path.read_bytes() == CONTENT
    path.write_bytes(CONTENT[:-1] + b"!")
    with pytest.raises(blobs.BlobError) as exc:
        await store.get(ref, max_bytes=1 << 20)
    assert exc.value.kind == "integrity"
    path.unlink()
    with pytest.raises(blobs.BlobError) as exc:
        await store.get(ref, max_bytes=1 << 20)
    assert exc.value.kind == "io"


@pytest.mark.parametrize("name", ["..", "a/b", ""])
def test_names_that_could_escape_the_destination_are_refused(name):
    with pytest.raises(blobs.BlobError, match="path component"):
        blobs.checkpoint_key(name, "fc1", 0, 1)


async def test_unknown_schemes_and_oversized_blobs_are_refused(tmp_path: Path):
    store = blobs.BlobStore(workdir=tmp_path)
    with pytest.raises(blobs.BlobError, match="destination"):
        await store.put("http://example.com/", "k", b"x")
    ref = await store.put(f"file://{tmp_path}/", "k", b"xyz")
    with pytest.raises(blobs.BlobError, match="limit"):
        await store.get(ref, max_bytes=2)


async def test_s3_round_trip_and_tampering_is_detected(moto_endpoint: str, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    s3 = boto3.client("s3", endpoint_url=moto_endpoint)
    s3.create_bucket(Bucket="dcnr-blobs-test")
    store = blobs.BlobStore(workdir=Path("/nonexistent"))
    ref = await round_trip(store, "s3://dcnr-blobs-test/checkpoints/")
    s3.put_object(
        Bucket="dcnr-blobs-test", Key="checkpoints/job-1/fc1-0/step-40.npz", Body=b"forged"
    )
    with pytest.raises(blobs.BlobError) as exc:
        await store.get(ref, max_bytes=1 << 20)
    assert exc.value.kind == "integrity"
    missing = common_pb2.BlobRef(
        url="s3://dcnr-blobs-test/nope", sha256=ref.sha256, size_bytes=ref.size_bytes
    )
    with pytest.raises(blobs.BlobError) as exc:
        await store.get(missing, max_bytes=1 << 20)
    assert exc.value.kind == "io"
