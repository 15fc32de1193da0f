"""The simulator end to end, short: reproducible from its seed, every invariant holding, and
the churn it claims to simulate actually happening."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys

import pytest

from sim import invariants, regression, report, world

#: A few hundred PNode-hours with churn turned up, so every fault kind occurs, liars
#: included: many, lying often, on a busy data plane.
SHORT = world.Params(
    seed=7,
    pnode_hours=300.0,
    pnodes=16,
    replicas=3,
    networks=3,
    vnodes_per_network=4,
    # A one-hour lease, so the run spans ~19 leases and the time-bound invariants (Pending
    # and convergence, bounded in leases) can break within it.
    lease=3600.0,
    heartbeat=1200.0,
    view_refresh=1800.0,
    lost_grace=1200.0,
    check_every=1200.0,
    mean_life_hours=40.0,
    pause_every_hours=30.0,
    replica_death_every_hours=4.0,
    liars=0.3,
    lie_share=0.7,
    false_accusations=0.5,
    results_every_hours=0.05,
)


@pytest.fixture(scope="module")
def short() -> report.Outcome:
    """One SHORT run, shared by the tests that only read its outcome."""
    return asyncio.run(report.simulate(SHORT))


async def test_the_same_seed_gives_the_same_trace_and_another_seed_does_not(
    short: report.Outcome,
) -> None:
    first = short
    again = await report.simulate(SHORT)
    assert first.digest == again.digest
    assert first.events == again.events > 100
    other = await report.simulate(dataclasses.replace(SHORT, seed=8, pnode_hours=60.0))
    assert other.digest != first.digest


def test_the_digest_does_not_depend_on_string_hashing() -> None:
    """A subprocess with another PYTHONHASHSEED: set and dict order of strings differ."""
    args = [sys.executable, "-m", "sim", "--seed", "5", "--pnode-hours", "150", "--pnodes", "12",
            "--networks", "2", "--liars", "0.5"]  # fmt: skip
    digests = []
    for hash_seed in ("1", "2"):
        done = subprocess.run(
            args,
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        [line] = [x for x in done.stdout.splitlines() if x.startswith("digest ")]
        digests.append(line)
    assert digests[0] == digests[1]


def test_a_short_run_with_every_fault_holds_every_invariant(short: report.Outcome) -> None:
    outcome = short
    assert [v.line() for v in outcome.violations] == []
    assert outcome.pnode_hours >= SHORT.pnode_hours
    for kind in ("joins", "deaths", "pauses", "fenced", "replica-deaths", "heartbeats"):
        assert outcome.counts.get(kind, 0) > 0, (kind, outcome.counts)
    assert outcome.counts["endpoints-resolved"] > 0, "nothing was ever placed and resolved"
    # Liars lied and were struck on real evidence, and accused falsely and paid for it.
    for kind in ("lies", "accused-struck", "false-accusations", "accusers-charged"):
        assert outcome.counts.get(kind, 0) > 0, (kind, outcome.counts)
    assert outcome.counts["pnodes-bugged"] > 0, outcome.counts
    assert outcome.counts.get("honest-accused-struck", 0) == 0
    assert outcome.counts.get("honest-accusers-charged", 0) == 0
    for name in invariants.NAMES:
        assert outcome.checked.get(name, 0) > 0, f"{name} was never checked"


async def test_a_crash_is_a_violation_and_the_run_goes_on(tmp_path) -> None:
    sim = world.Simulation(dataclasses.replace(SHORT, pnode_hours=20.0))
    sim.at(0.0, "no-such-event")
    await sim.run()
    [found] = sim.violations
    assert found.invariant == "no-crash"
    assert "no-such-event" in found.detail
    assert sim.pnode_hours >= 20.0


async def test_a_broken_seed_is_saved_as_a_test_replaying_it(tmp_path) -> None:
    outcome = await report.simulate(dataclasses.replace(SHORT, pnode_hours=20.0))
    broken = dataclasses.replace(
        outcome,
        violations=(invariants.Violation("capacity", 1.0, "pnode x over"),),
        first_violation_pnode_hours=12.0,
    )
    path = regression.write(broken, tmp_path)
    text = path.read_text()
    assert path.name == "test_regression_seed_7.py"
    assert "'pnode_hours': 13.0" in text
    assert "'seed': 7" in text
    assert "capacity" in text
    compile(text, str(path), "exec")


def test_bad_arguments_name_the_flag_and_value(capsys) -> None:
    from sim import __main__ as cli

    with pytest.raises(SystemExit) as exited:
        cli.parse(["--pnode-hours", "0"])
    assert exited.value.code == 2
    assert "--pnode-hours 0.0: must be at least 1.0" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        cli.parse(["--liars", "1.5"])
    assert exited.value.code == 2
    assert "--liars 1.5: must be a share between 0 and 1" in capsys.readouterr().err
