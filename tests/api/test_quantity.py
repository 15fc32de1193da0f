"""Resource quantities: parsing, limits, canonical formatting and round trips."""

from __future__ import annotations

from typing import Any

import pytest

from api.resources import network, pnode, quantity


@pytest.mark.parametrize(
    ("text", "millis"),
    [
        (2, 2000),
        (0, 0),
        (0.5, 500),
        (1.25, 1250),
        ("2", 2000),
        ("1.5", 1500),
        (".5", 500),
        ("500m", 500),
        ("1m", 1),
        (" 250m ", 250),
        ("0.001", 1),
        ("1000000", 10**9),
        # Kubernetes' decimal exponent form.
        ("1e3", 10**6),
        ("5E-1", 500),
        ("25e-3", 25),
        (1e3, 10**6),
    ],
)
def test_cpu_parses_to_millicores(text: Any, millis: int) -> None:
    assert quantity.parse_cpu(text) == millis


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("-1", "invalid cpu quantity '-1'"),
        ("1.5Gi", "use cores (2, 0.5) or millicores (500m)"),
        ("0.5m", "finer than 1m"),
        ("0.0001", "finer than 1m"),
        ("1.0000000000000000000000000000001", "finer than 1m"),
        ("1000001", "larger than 1000000 cores"),
        ("", "invalid cpu quantity ''"),
        ("1e-4", "finer than 1m"),
        ("1e999", "exponent beyond"),
        ("1e31", "exponent beyond"),
        ("1e", "invalid cpu quantity '1e'"),
        ("m", "invalid cpu quantity 'm'"),
        (True, "not a boolean"),
        (None, "got NoneType"),
        ([1], "got list"),
        (1e-05, "finer than 1m"),
        (float("nan"), "invalid cpu quantity nan"),
        ("9" * 65, "longer than 64 characters"),
        (10**70, "more than 64 digits"),
    ],
)
def test_bad_cpu_is_refused_with_the_value(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="cpu") as info:
        quantity.parse_cpu(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("text", "amount"),
    [
        (1024, 1024),
        (0, 0),
        ("1024", 1024),
        ("1Ki", 2**10),
        ("512Mi", 512 * 2**20),
        ("1.5Gi", 3 * 2**29),
        ("0.5Ki", 512),
        ("2Ti", 2 * 2**40),
        ("1Ei", 2**60),
        ("1k", 1000),
        ("1M", 10**6),
        ("1.5G", 15 * 10**8),
        ("1E", 10**18),
        (2.0, 2),
        ("1e3", 1000),
        ("12E6", 12 * 10**6),
    ],
)
def test_memory_parses_to_bytes(text: Any, amount: int) -> None:
    assert quantity.parse_memory(text) == amount


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("12Qi", "unknown suffix 'Qi' (known: Ki, Mi, Gi, Ti, Pi, Ei, k, M, G, T, P, E)"),
        ("1m", "unknown suffix 'm'"),
        ("1KI", "unknown suffix 'KI'"),
        ("0.3", "not a whole number of bytes"),
        ("1.0000000000000000000000000001Ki", "not a whole number of bytes"),
        ("2Ei", "larger than 1Ei"),
        ("-5Mi", "invalid memory quantity '-5Mi'"),
        ("5 Mi", "invalid memory quantity '5 Mi'"),
        ("1e-1", "not a whole number of bytes"),
        ("1e19", "larger than 1Ei"),
        (False, "not a boolean"),
        ({"a": 1}, "got dict"),
    ],
)
def test_bad_memory_is_refused_with_the_value(text: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="memory") as info:
        quantity.parse_memory(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("millis", "formatted"),
    [(0, 0), (1000, 1), (2000, 2), (500, "500m"), (1500, "1500m"), (1, "1m")],
)
def test_cpu_formats_canonically(millis: int, formatted: str | int) -> None:
    assert quantity.format_cpu(millis) == formatted
    assert quantity.parse_cpu(formatted) == millis


@pytest.mark.parametrize(
    ("amount", "formatted"),
    [
        (0, 0),
        (1000, 1000),
        (1024, "1Ki"),
        (1536, 1536),
        (512 * 2**20, "512Mi"),
        (3 * 2**29, "1536Mi"),
        (2**30, "1Gi"),
        (2**60, "1Ei"),
        (10**9, 10**9),
    ],
)
def test_memory_formats_canonically(amount: int, formatted: str | int) -> None:
    assert quantity.format_memory(amount) == formatted
    assert quantity.parse_memory(formatted) == amount


@pytest.mark.parametrize(
    ("cpu", "memory"),
    [("250m", "64Mi"), (2, "1Gi"), ("1.5", "1.5Gi"), (0.1, 4096), ("3", "1G")],
)
def test_requests_round_trip_through_json(cpu: Any, memory: Any) -> None:
    request = network.ResourceRequest(cpu=cpu, memory=memory)
    again = network.ResourceRequest.model_validate_json(request.model_dump_json(by_alias=True))
    assert again == request
    assert (again.cpu, again.memory) == (quantity.parse_cpu(cpu), quantity.parse_memory(memory))


def test_capacity_accepts_the_same_quantities() -> None:
    capacity = pnode.Capacity(cpu="4", memory="16Gi")
    assert (capacity.cpu, capacity.memory) == (4000, 16 * 2**30)
    assert capacity.model_dump(mode="json") == {"cpu": 4, "memory": "16Gi", "accelerators": []}
