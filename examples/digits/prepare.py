"""Make data.npz from the UCI optical-digits data as scikit-learn bundles it.

    python examples/digits/prepare.py path/to/sklearn/datasets/data/digits.csv.gz
    python examples/digits/prepare.py --sample    # only sample.npy, from data.npz

Each row of digits.csv.gz is 64 pixel values (0..16) and the digit. The split is seeded, so
the committed data.npz is reproducible: 1438 training and 359 held-out samples.
"""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import numpy as np

SEED = 20261127
TEST_FRACTION = 0.2
#: Images in sample.npy.
SAMPLE = 8


def main(source: str) -> None:
    with gzip.open(source, "rt") as rows:
        data = np.loadtxt(rows, delimiter=",", dtype=np.float64)
    pixels = (data[:, :64] / 16.0).astype(np.float32)
    labels = data[:, 64].astype(np.int64)
    order = np.random.default_rng(SEED).permutation(len(labels))
    cut = round(len(labels) * (1 - TEST_FRACTION))
    train, test = order[:cut], order[cut:]
    np.savez_compressed(
        Path(__file__).with_name("data.npz"),
        x_train=pixels[train],
        y_train=labels[train],
        x_test=pixels[test],
        y_test=labels[test],
    )
    write_sample()


def write_sample() -> None:
    """sample.npy: the first SAMPLE held-out images, what the README's `dcnctl infer` sends."""
    with np.load(Path(__file__).with_name("data.npz")) as data:
        np.save(Path(__file__).with_name("sample.npy"), data["x_test"][:SAMPLE])


if __name__ == "__main__":
    if sys.argv[1] == "--sample":
        write_sample()
    else:
        main(sys.argv[1])
