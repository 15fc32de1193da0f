"""Build DCNR's wheel as `pip install .` would, for tests of what an installed copy (or the
container image, which installs this wheel) carries."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def build(tmp_path: Path) -> Path:
    """A wheel built from the files git would commit (not from this working tree's build
    leftovers), with setuptools itself, as `pip install .` builds it."""
    source = tmp_path / "source"
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, listed):
        origin = REPO / name
        if not origin.exists() and not origin.is_symlink():
            continue  # deleted in the working tree, not yet committed
        target = source / name
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_symlink():
            target.symlink_to(origin.readlink())
        else:
            shutil.copy2(origin, target)
    out = tmp_path / "dist"
    subprocess.run(
        [sys.executable, "-c",
         f"from setuptools import build_meta; build_meta.build_wheel({str(out)!r})"],
        cwd=source, capture_output=True, check=True, timeout=300,
    )  # fmt: skip
    (wheel,) = out.glob("dcnr-*.whl")
    return wheel
