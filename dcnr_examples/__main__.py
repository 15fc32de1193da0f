"""`python -m dcnr_examples [DIR]`: write the examples under DIR/examples/ (default: here)."""

from __future__ import annotations

import sys
from pathlib import Path

import dcnr_examples


def main(argv: list[str]) -> int:
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python -m dcnr_examples [DIR]   (writes DIR/examples/digits/...)",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        for line in dcnr_examples.write(Path(argv[0] if argv else ".")):
            print(line)
    except OSError as exc:
        print(f"dcnr_examples: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
