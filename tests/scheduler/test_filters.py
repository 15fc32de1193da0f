"""Each feasibility check on its own: the cases that pass, and the reason for those that fail."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler import filters, model
from tests.scheduler import helpers

A100 = (("a100", 2),)


@pytest.mark.parametrize(
    ("check", "node", "req", "expected"),
    [
        (filters.ready, helpers.node(), helpers.request(), None),
        (filters.ready, helpers.node(ready=False), helpers.request(), "not ready"),
        (filters.not_bugged, helpers.node(), helpers.request(), None),
        (filters.not_bugged, helpers.node(bugged=True), helpers.request(), "bugged"),
        (filters.schedulable, helpers.node(), helpers.request(), None),
        (filters.schedulable, helpers.node(schedulable=False), helpers.request(), "cordoned"),
        (filters.not_draining, helpers.node(), helpers.request(), None),
        (filters.not_draining, helpers.node(draining=True), helpers.request(), "draining"),
        # cpu: exactly full fits, one millicore more does not; allocated counts.
        (filters.cpu_fits, helpers.node(cpu_capacity=1000), helpers.request(cpu=1000), None),
        (
            filters.cpu_fits,
            helpers.node(cpu_capacity=1000),
            helpers.request(cpu=1001),
            "insufficient cpu",
        ),
        (
            filters.cpu_fits,
            helpers.node(cpu_capacity=1000, cpu_allocated=600),
            helpers.request(cpu=500),
            "insufficient cpu",
        ),
        (filters.cpu_fits, helpers.node(cpu_capacity=0), helpers.request(cpu=0), None),
        (filters.memory_fits, helpers.node(memory_capacity=100), helpers.request(memory=100), None),
        (
            filters.memory_fits,
            helpers.node(memory_capacity=100, memory_allocated=1),
            helpers.request(memory=100),
            "insufficient memory",
        ),
        # accelerators: none wanted always fits; wrong type "lacks"; too few is "insufficient".
        (filters.accelerator_fits, helpers.node(), helpers.request(), None),
        (
            filters.accelerator_fits,
            helpers.node(accelerators=A100),
            helpers.request(accelerator="a100", accelerator_count=2),
            None,
        ),
        (
            filters.accelerator_fits,
            helpers.node(),
            helpers.request(accelerator="a100", accelerator_count=1),
            "lack accelerator a100",
        ),
        (
            filters.accelerator_fits,
            helpers.node(accelerators=(("t4", 4),)),
            helpers.request(accelerator="a100", accelerator_count=1),
            "lack accelerator a100",
        ),
        (
            filters.accelerator_fits,
            helpers.node(accelerators=A100),
            helpers.request(accelerator="a100", accelerator_count=3),
            "insufficient accelerator a100",
        ),
        (
            filters.accelerator_fits,
            helpers.node(accelerators=A100, accelerators_allocated=(("a100", 1),)),
            helpers.request(accelerator="a100", accelerator_count=2),
            "insufficient accelerator a100",
        ),
        (filters.anti_affinity, helpers.node("p1"), helpers.request(avoid={"p2"}), None),
        (
            filters.anti_affinity,
            helpers.node("p1"),
            helpers.request(avoid={"p1"}),
            "host another replica",
        ),
    ],
)
def test_each_filter(
    check: filters.Filter, node: model.NodeView, req: model.Request, expected: str | None
) -> None:
    assert check(req, node) == expected


@pytest.mark.parametrize(
    ("trust", "floor", "expected"),
    [(0.9, 0.5, None), (0.5, 0.5, None), (0.49, 0.5, "below trust floor"), (0.0, 0.0, None)],
)
def test_trust_floor(trust: float, floor: float, expected: str | None) -> None:
    assert filters.below_trust_floor(helpers.node(trust=trust), floor) == expected


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({}, None),
        # State is reported before resources: a PNode that is not ready has no free memory
        # worth talking about.
        ({"ready": False, "memory_capacity": 0}, "not ready"),
        ({"bugged": True, "schedulable": False}, "bugged"),
        ({"schedulable": False, "draining": True}, "cordoned"),
        ({"draining": True, "cpu_capacity": 0}, "draining"),
        ({"cpu_capacity": 0, "memory_capacity": 0}, "insufficient cpu"),
        ({"memory_capacity": 0}, "insufficient memory"),
    ],
)
def test_first_failing_check_is_reported(fields: dict[str, Any], expected: str | None) -> None:
    assert filters.hard(helpers.request(), helpers.node(**fields)) == expected


def test_anti_affinity_is_reported_after_capability() -> None:
    req = helpers.request(cpu=10**6, avoid={"p1"})
    assert filters.hard(req, helpers.node("p1")) == "insufficient cpu"
    assert filters.hard(helpers.request(avoid={"p1"}), helpers.node("p1")) == (
        "host another replica"
    )


def test_capability_checks_read_only_shape_and_signature() -> None:
    """The cache is keyed by (shape, signature): nodes equal in both get equal verdicts."""
    twins = [helpers.node(f"p{i}", cpu_allocated=3900, trust=i / 10) for i in range(3)]
    assert len({n.signature for n in twins}) == 1
    req = helpers.request(cpu=200)
    assert {filters.capability(req, n) for n in twins} == {"insufficient cpu"}
    assert helpers.node(cpu_allocated=1).signature != helpers.node().signature
    assert helpers.node(draining=True).signature != helpers.node().signature
