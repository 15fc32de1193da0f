"""Measured comparisons: every figure beside a baseline measured in the same run.

`python -m benchmarks [--scenario NAME ...] [--smoke] [--results-dir DIR]` runs the
scenarios of issue 6 against the real components (store, reconcilers, orchestrator and agent
processes), writes one JSON file per scenario and regenerates `benchmarks/README.md`.
The machines these run on are shared and noisy, so a number is only ever reported as a ratio
to a baseline taken moments before or after it, with the absolute values beside it.

Not part of the product: nothing under `api`, `store`, ... imports this package.
"""
