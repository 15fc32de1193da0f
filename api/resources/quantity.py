"""Kubernetes-style resource quantities: cpu as "500m" or 2, memory as "512Mi" or "1G".

Parsed into integers (millicores, bytes) so that capacity accounting is exact integer
arithmetic; serialized back into the canonical short form so that a manifest round-trips
the way a user wrote it in spirit ("512Mi" stays "512Mi", not 536870912).
"""

from __future__ import annotations

import re
from decimal import Context, Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import BeforeValidator, PlainSerializer, WithJsonSchema

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {"k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
#: As Kubernetes: a suffix, or a decimal exponent ("1e3", "5E-1"); "1E" alone is the exa suffix.
_NUMBER = re.compile(
    r"^(?P<num>[0-9]+(?:\.[0-9]+)?|\.[0-9]+)"
    r"(?:[eE](?P<exp>[+-]?[0-9]{1,3})|(?P<suffix>[A-Za-z]*))\Z"
)
#: Exponents beyond this cannot give a valid quantity either way (see the MAX_* bounds).
_MAX_EXPONENT = 30

#: Upper bounds that keep a typo ("2000000Ti") from turning into an absurd request.
MAX_CPU_MILLIS = 10**9
MAX_MEMORY_BYTES = 2**60

#: Longer quantity strings are rejected before any arithmetic, so that the exact context
#: below really is exact (64 digits times a 19-digit scale fits in 100 digits) and a
#: megabyte of digits costs nothing. The default decimal context rounds to 28 digits,
#: which would accept "1.0000000000000000000000000000001" as a whole 1.
_MAX_CHARS = 64
_EXACT = Context(prec=100)


def _number(value: Any, what: str) -> tuple[Decimal, str]:
    if isinstance(value, bool):
        raise ValueError(f"{what} must be a number or a quantity string, not a boolean")
    if isinstance(value, int) and abs(value) >= 10**_MAX_CHARS:
        raise ValueError(f"{what} quantity is too large: more than {_MAX_CHARS} digits")
    if isinstance(value, int | float):
        text = repr(value) if isinstance(value, float) else str(value)
    elif isinstance(value, str):
        text = value.strip()
    else:
        kind = type(value).__name__
        raise ValueError(f"{what} must be a number or a quantity string, got {kind}")
    if len(text) > _MAX_CHARS:
        raise ValueError(
            f"invalid {what} quantity {text[:20]!r}...: longer than {_MAX_CHARS} characters"
        )
    match = _NUMBER.match(text)
    if match is None:
        raise ValueError(f"invalid {what} quantity {value!r}")
    try:
        number = Decimal(match["num"])
    except InvalidOperation as exc:  # pragma: no cover - the regex admits only decimals
        raise ValueError(f"invalid {what} quantity {value!r}") from exc
    if match["exp"] is not None:
        exponent = int(match["exp"])
        if abs(exponent) > _MAX_EXPONENT:
            raise ValueError(
                f"invalid {what} quantity {value!r}: exponent beyond ±{_MAX_EXPONENT}"
            )
        return number.scaleb(exponent, _EXACT), ""
    return number, match["suffix"]


def parse_cpu(value: Any) -> int:
    """Millicores from 2, 0.5, "1.5", "500m"."""
    number, suffix = _number(value, "cpu")
    if suffix == "m":
        millis = number
    elif suffix == "":
        millis = _EXACT.multiply(number, Decimal(1000))
    else:
        raise ValueError(f"invalid cpu quantity {value!r}: use cores (2, 0.5) or millicores (500m)")
    if millis != millis.to_integral_value():
        raise ValueError(f"invalid cpu quantity {value!r}: finer than 1m")
    if millis > MAX_CPU_MILLIS:
        raise ValueError(f"cpu quantity {value!r} is larger than {MAX_CPU_MILLIS // 1000} cores")
    return int(millis)


def format_cpu(millis: int) -> str | int:
    if millis % 1000 == 0:
        return millis // 1000
    return f"{millis}m"


def parse_memory(value: Any) -> int:
    """Bytes from 1024, "512Mi", "1G", "1.5Gi"."""
    number, suffix = _number(value, "memory")
    if suffix == "":
        scale = 1
    elif suffix in _BINARY:
        scale = _BINARY[suffix]
    elif suffix in _DECIMAL:
        scale = _DECIMAL[suffix]
    else:
        known = ", ".join([*_BINARY, *_DECIMAL])
        raise ValueError(
            f"invalid memory quantity {value!r}: unknown suffix {suffix!r} (known: {known})"
        )
    amount = _EXACT.multiply(number, Decimal(scale))
    if amount != amount.to_integral_value():
        raise ValueError(f"invalid memory quantity {value!r}: not a whole number of bytes")
    if amount > MAX_MEMORY_BYTES:
        raise ValueError(f"memory quantity {value!r} is larger than 1Ei")
    return int(amount)


def format_memory(amount: int) -> str | int:
    for suffix, scale in reversed(_BINARY.items()):
        if amount and amount % scale == 0:
            return f"{amount // scale}{suffix}"
    return amount


CpuMillis = Annotated[
    int,
    BeforeValidator(parse_cpu),
    PlainSerializer(format_cpu, return_type=str | int),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "number"}]}),
]
MemoryBytes = Annotated[
    int,
    BeforeValidator(parse_memory),
    PlainSerializer(format_memory, return_type=str | int),
    WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "integer"}]}),
]
