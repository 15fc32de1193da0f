"""The digits example ships inside the wheel (package `dcnr_examples`), so someone who
installed DCNR instead of cloning it has the manifest, the data and the sample the README's
tour uses, and `python -m dcnr_examples DIR` writes them where the tour expects them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import dcnr_examples
from tests.support import wheel as wheel_mod

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DIGITS = REPO / "examples" / "digits"


def test_the_wheel_carries_the_digits_example(tmp_path: Path) -> None:
    wheel = wheel_mod.build(tmp_path)
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
