"""Every syntax check anchors at the very end: Python's `$` also matches before a trailing
newline, so `re.match(r"^[a-z]+$", "digits\\n")` succeeds and "digits\\n" would live beside
"digits" (and break every table that prints it)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agent import capacity
from api.resources import meta
from controller.services import pnode_wire
from store import dynamodb, errors

CHECKS: dict[str, Callable[[str], object]] = {
    "dns1123 label": meta.check_dns1123_label,
    "dns1123 subdomain": meta.check_dns1123_subdomain,
    "label key": lambda text: meta.check_labels({text: "v"}),
    "label value": lambda text: meta.check_labels({"k": text}),
    "agent accelerator": lambda text: capacity.parse_accelerator(f"a100:{text}"),
}
VALID = {
    "dns1123 label": "digits",
    "dns1123 subdomain": "dcnr.io",
    "label key": "team",
    "label value": "vision",
    "agent accelerator": "1",
}


@pytest.mark.parametrize("check", sorted(CHECKS))
def test_a_trailing_newline_is_refused(check: str) -> None:
    CHECKS[check](VALID[check])  # the same text without the newline is fine
    with pytest.raises(ValueError, match=r"invalid|must"):
        CHECKS[check](VALID[check] + "\n")


async def test_a_dynamodb_prefix_with_a_trailing_newline_is_refused() -> None:
    with pytest.raises(errors.InvalidRequest, match="prefix"):
        await dynamodb.DynamoStore.open(prefix="dcnr\n", region="us-east-1", endpoint=None)


def test_a_pnode_address_with_a_trailing_newline_is_refused() -> None:
    assert pnode_wire.check_address("10.0.0.1:7070", "spec.address") == "10.0.0.1:7070"
    # Whatever the boundary raises, it names the field (the error type is the rpc layer's).
    with pytest.raises(Exception, match=r"spec\.address") as caught:
        pnode_wire.check_address("10.0.0.1:7070\n", "spec.address")
    assert not isinstance(caught.value, AssertionError)
