"""The digits example ships inside the wheel (package `dcnr_examples`), so someone who
installed DCNR instead of cloning it has the manifest, the data and the sample the README's
tour uses, and `python -m dcnr_examples DIR` writes them where the tour expects them."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dcnr_examples

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


def _wheel(tmp_path: Path) -> Path:
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


def test_the_wheel_carries_the_digits_example(tmp_path: Path) -> None:
    wheel = _wheel(tmp_path)
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        for name in dcnr_examples.EXAMPLES["digits"]:
            assert archive.read(f"dcnr_examples/digits/{name}") == (DIGITS / name).read_bytes()
        archive.extractall(installed)
    # From the unpacked wheel (first on the path), in an empty directory: what an installed
    # package gives a user who has no clone.
    here = tmp_path / "elsewhere"
    here.mkdir()
    result = subprocess.run(
        [sys.executable, "-c",
         "import runpy, sys, dcnr_examples; print(dcnr_examples.__file__, file=sys.stderr); "
         "runpy.run_module('dcnr_examples', run_name='__main__')"],
        cwd=here, capture_output=True, text=True, check=True, timeout=60,
        env={"PYTHONPATH": str(installed), "PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert result.stderr.startswith(str(installed)), result.stderr
    assert result.stdout.splitlines() == [
        f"examples/digits/{name}: written" for name in dcnr_examples.EXAMPLES["digits"]
    ]
    for name in dcnr_examples.EXAMPLES["digits"]:
        assert (here / "examples" / "digits" / name).read_bytes() == (DIGITS / name).read_bytes()


def test_writing_again_keeps_what_is_there(tmp_path: Path) -> None:
    assert all(line.endswith(": written") for line in dcnr_examples.write(tmp_path))
    (tmp_path / "examples" / "digits" / "network.yaml").write_text("mine\n")
    said = dcnr_examples.write(tmp_path)
    assert f"{tmp_path}/examples/digits/network.yaml: exists and differs, kept" in said
    assert f"{tmp_path}/examples/digits/data.npz: already there" in said
    assert (tmp_path / "examples" / "digits" / "network.yaml").read_text() == "mine\n"
    with pytest.raises(KeyError, match="no example 'mnist'"):
        dcnr_examples.files("mnist")
