"""The one capacity arithmetic: charges add, releases never go below zero, accelerators are
counted by type in one canonical form."""

from __future__ import annotations

import pytest

from api.resources import amounts, network, pnode

Amounts = amounts.Amounts


def test_a_charge_adds_and_a_release_subtracts() -> None:
    allocated = Amounts(cpu=500, memory=1024, accelerators=(("a100", 1),))
    change = Amounts(cpu=250, memory=24, accelerators=(("a100", 2), ("t4", 1)))
    charged = amounts.charged(allocated, change, +1)
    assert charged == Amounts(cpu=750, memory=1048, accelerators=(("a100", 3), ("t4", 1)))
    assert amounts.charged(charged, change, -1) == allocated


def test_a_release_never_goes_below_zero_and_drops_emptied_accelerators() -> None:
    allocated = Amounts(cpu=100, memory=10, accelerators=(("a100", 1), ("t4", 2)))
    change = Amounts(cpu=300, memory=30, accelerators=(("a100", 4),))
    assert amounts.charged(allocated, change, -1) == Amounts(accelerators=(("t4", 2),))
    assert amounts.charged(Amounts(), change, -1) == Amounts()


def test_accelerators_are_merged_by_type_sorted_and_never_zero() -> None:
    merged = amounts.accelerators([("t4", 1), ("a100", 2), ("v100", 0), ("a100", 1)])
    assert merged == (("a100", 3), ("t4", 1))
    assert amounts.accelerators([]) == ()


@pytest.mark.parametrize("sign", [0, 2, -2])
def test_the_sign_is_a_charge_or_a_release(sign: int) -> None:
    with pytest.raises(
        ValueError, match=f"sign must be \\+1 \\(charge\\) or -1 \\(release\\), got {sign}"
    ):
        amounts.charged(Amounts(), Amounts(cpu=1), sign)


def test_requests_and_capacities_convert_in_internal_units() -> None:
    request = network.ResourceRequest.model_validate(
        {"cpu": "250m", "memory": "1Mi", "accelerator": {"type": "a100", "count": 2}}
    )
    assert amounts.of_request(request) == Amounts(250, 2**20, (("a100", 2),))
    plain = network.ResourceRequest.model_validate({"cpu": "100m", "memory": "64Ki"})
    assert amounts.of_request(plain) == Amounts(100, 64 * 2**10)
    capacity = pnode.Capacity.model_validate(
        {
            "cpu": 2,
            "memory": "1Gi",
            "accelerators": [
                {"type": "t4", "count": 1},
                {"type": "a100", "count": 1},
                {"type": "a100", "count": 2},
                {"type": "v100", "count": 0},
            ],
        }
    )
    assert amounts.of_capacity(capacity) == Amounts(2000, 2**30, (("a100", 3), ("t4", 1)))


def test_named_amounts_are_what_messages_call_them() -> None:
    named = Amounts(cpu=1, memory=2, accelerators=(("a100", 3),)).named()
    assert named == {"cpu": 1, "memory": 2, "accelerator a100": 3}
