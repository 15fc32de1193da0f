"""HOST:PORT from the command line, and the address agents are told to reach."""

from __future__ import annotations

import socket

import pytest

from controller.services import addresses


@pytest.mark.parametrize(
    ("address", "expected"),
    [
        ("127.0.0.1:7070", ("127.0.0.1", 7070)),
        (":9100", ("0.0.0.0", 9100)),
        ("[::1]:7070", ("::1", 7070)),
        ("node-a.example:0", ("node-a.example", 0)),
    ],
)
def test_split(address: str, expected: tuple[str, int]) -> None:
    assert addresses.split(address, "--listen") == expected


@pytest.mark.parametrize("address", ["7070", "host:", "host:http"])
def test_split_names_the_flag_when_it_is_not_host_port(address: str) -> None:
    with pytest.raises(OSError, match=f"--metrics-listen {address}: expected HOST:PORT"):
        addresses.split(address, "--metrics-listen")


def test_agents_are_told_the_host_name_for_a_wildcard_and_the_bound_port() -> None:
    assert addresses.advertised("10.0.0.5:0", 41234) == "10.0.0.5:41234"
    assert addresses.advertised("0.0.0.0:7070", 7070) == f"{socket.gethostname()}:7070"
    assert addresses.advertised("[::]:0", 5000) == f"{socket.gethostname()}:5000"
