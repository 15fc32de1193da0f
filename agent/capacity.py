"""What this machine can give to VNodes, and the parsers of the flags that override it.

A volunteer starts an agent without reading a manual, so every capability has a default
taken from the machine itself; the flags exist to give *less* than the machine has (a
laptop owner keeping half the cores) or to declare what cannot be detected portably
(accelerators, labels, data sets held locally). Parsers raise ValueError with a message
that names the value and what would be valid; `agent.main` prefixes the flag.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from api.dcnr.v1 import common_pb2
from api.resources import meta, quantity

T = TypeVar("T")
_ACCELERATOR = re.compile(r"^(?P<type>[a-z0-9]([a-z0-9-]*[a-z0-9])?):(?P<count>[0-9]+)\Z")


@dataclass(frozen=True)
class Capabilities:
    cpu_millis: int
    memory_bytes: int
    accelerators: tuple[tuple[str, int], ...] = ()
    labels: dict[str, str] = field(default_factory=dict)
    #: Data set name → URL of this machine's local copy.
    datasets: dict[str, str] = field(default_factory=dict)

    def capacity(self) -> common_pb2.Capacity:
        return common_pb2.Capacity(
            cpu_millis=self.cpu_millis,
            memory_bytes=self.memory_bytes,
            accelerators=[common_pb2.Accelerator(type=t, count=c) for t, c in self.accelerators],
        )


def machine_cpu_millis() -> int:
    """The cores this process may run on (the affinity mask, which containers narrow),
    falling back to the machine's count."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, cores) * 1000


def machine_memory_bytes(meminfo: str = "/proc/meminfo") -> int:
    """Total physical memory: /proc/meminfo's MemTotal on Linux, sysconf elsewhere."""
    try:
        with open(meminfo, encoding="ascii") as lines:
            for line in lines:
                if line.startswith("MemTotal:"):
                    parts = line.split()
                    return int(parts[1]) * (1024 if parts[2:3] == ["kB"] else 1)
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 30  # unknown: claim a modest 1 GiB rather than nothing


def parse_cpu(value: str) -> int:
    millis = quantity.parse_cpu(value)
    if millis <= 0:
        raise ValueError(f"{value!r}: must be more than 0 (cores such as 2 or 0.5, or 500m)")
    return millis


def parse_memory(value: str) -> int:
    amount = quantity.parse_memory(value)
    if amount <= 0:
        raise ValueError(f"{value!r}: must be more than 0 (such as 8Gi or 512Mi)")
    return amount


def parse_accelerator(value: str) -> tuple[str, int]:
    match = _ACCELERATOR.match(value)
    if match is None or int(match["count"]) < 1:
        raise ValueError(f"{value!r}: must be TYPE:COUNT with a lowercase type, e.g. a100:2")
    return match["type"], int(match["count"])


def parse_pair(value: str, what: str) -> tuple[str, str]:
    key, sep, rest = value.partition("=")
    if not sep or not key or not rest:
        raise ValueError(f"{value!r}: must be {what}")
    return key, rest


def parse_dataset(value: str) -> tuple[str, str]:
    name, url = parse_pair(value, "NAME=URL, e.g. digits=file:///data/digits.npz")
    try:
        meta.check_dns1123_label(name)
    except ValueError:
        raise ValueError(f"{value!r}: the name {name!r} must be a DNS-1123 label") from None
    if not url.startswith(("file://", "s3://")):
        raise ValueError(f"{value!r}: the URL must start with file:// or s3://")
    return name, url


def detect(
    *,
    cpu: str | None = None,
    memory: str | None = None,
    accelerators: Sequence[str] = (),
    labels: Sequence[str] = (),
    datasets: Sequence[str] = (),
) -> Capabilities:
    """Capabilities from flags, the machine's where a flag is absent. Raises
    `FlagError` naming the offending flag."""

    def parsed(flag: str, parse: Callable[[str], T], value: str) -> T:
        try:
            return parse(value)
        except ValueError as exc:
            raise FlagError(flag, str(exc)) from None

    return Capabilities(
        cpu_millis=parsed("--cpu", parse_cpu, cpu) if cpu else machine_cpu_millis(),
        memory_bytes=parsed("--memory", parse_memory, memory) if memory else machine_memory_bytes(),
        accelerators=tuple(parsed("--accelerator", parse_accelerator, v) for v in accelerators),
        labels=dict(parsed("--label", lambda v: parse_pair(v, "K=V"), v) for v in labels),
        datasets=dict(parsed("--dataset", parse_dataset, v) for v in datasets),
    )


class FlagError(ValueError):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")
        self.flag = flag
