"""Resource models: arithmetic on parsed quantities stays in their internal units."""

from __future__ import annotations

from api.resources import pnode


def test_cpu_arithmetic_after_parsing_is_in_millicores() -> None:
    capacity = pnode.Capacity.model_validate({"cpu": "500m", "memory": "1Gi"})
    capacity.cpu += 500
    capacity.memory += 1024
    assert capacity.cpu == 1000
    assert capacity.memory == 2**30 + 1024
    assert capacity.model_dump(mode="json") == {"cpu": 1, "memory": "1048577Ki", "accelerators": []}


def test_user_units_are_parsed_on_input() -> None:
    capacity = pnode.Capacity.model_validate({"cpu": 2, "memory": "512Mi"})
    assert (capacity.cpu, capacity.memory) == (2000, 512 * 2**20)
    again = pnode.Capacity.model_validate(capacity.model_dump(mode="json"))
    assert again == capacity
