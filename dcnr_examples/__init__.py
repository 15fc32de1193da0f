"""The examples that ship with DCNR, installed with it: the digits network (its manifest,
its data, a few held-out images to infer on).

The files live in the repository's `examples/digits/` (this package's `digits` is a link to
it, so there is one copy); a wheel carries them as package data. Someone who installed DCNR
rather than cloning it writes them out with `python -m dcnr_examples [DIR]`, and then runs
the README's tour in DIR exactly as from a clone: the manifest names its data relative to
the agents' working directory, so the tree is written as `DIR/examples/digits/`.
"""

from __future__ import annotations

import importlib.resources
from importlib.resources.abc import Traversable
from pathlib import Path

#: Each example and the files it is made of.
EXAMPLES: dict[str, tuple[str, ...]] = {
    "digits": ("network.yaml", "data.npz", "sample.npy", "README.md"),
}


def files(example: str) -> Traversable:
    """The example's directory inside the installed package."""
    if example not in EXAMPLES:
        raise KeyError(f"no example {example!r} (examples: {', '.join(EXAMPLES)})")
    return importlib.resources.files(__name__) / example


def write(directory: Path) -> list[str]:
    """Copy every example to `directory/examples/NAME/`; one line per file saying what was
    done. A file already there with the same bytes is left alone (a clone has them all);
    a different one is not overwritten."""
    said = []
    for example, names in EXAMPLES.items():
        target = directory / "examples" / example
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            data = (files(example) / name).read_bytes()
            path = target / name
            if path.exists():
                same = path.read_bytes() == data
                said.append(f"{path}: {'already there' if same else 'exists and differs, kept'}")
                continue
            path.write_bytes(data)
            said.append(f"{path}: written")
    return said
