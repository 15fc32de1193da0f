"""A seed that broke an invariant becomes a regression test: a short replay of that seed.

The test replays the run up to just past the first violation (in PNode-hours), with the
same parameters, and asserts that no invariant breaks: it fails until the bug is fixed.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from sim import report

TEMPLATE = '''"""Regression: `python -m sim` seed {seed} broke {invariants}.

First violation: {first}
"""

from __future__ import annotations

import pytest

from sim import report, world

PARAMS = world.Params(**{params!r})


@pytest.mark.slow
async def test_seed_{seed}_holds_every_invariant() -> None:
    outcome = await report.simulate(PARAMS)
    assert [v.line() for v in outcome.violations] == []
'''


def write(outcome: report.Outcome, directory: Path) -> Path:
    """Write the regression test for `outcome` (which has violations) into `directory`."""
    assert outcome.violations
    assert outcome.first_violation_pnode_hours is not None
    params = dataclasses.replace(
        outcome.params, pnode_hours=round(outcome.first_violation_pnode_hours + 1.0, 1)
    )
    path = directory / f"test_regression_seed_{params.seed}.py"
    path.write_text(
        TEMPLATE.format(
            seed=params.seed,
            invariants=", ".join(sorted({v.invariant for v in outcome.violations})),
            first=outcome.violations[0].line().replace('"""', "'''"),
            params=dataclasses.asdict(params),
        )
    )
    return path
