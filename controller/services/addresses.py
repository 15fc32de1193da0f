"""HOST:PORT as the command line gives it, and the address agents are told to reach."""

from __future__ import annotations

import socket


def split(address: str, flag: str) -> tuple[str, int]:
    """(host, port) of `address`; an empty host (":7070") listens everywhere. OSError naming
    `flag` when it is not HOST:PORT, as a bind failure would be."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise OSError(f"{flag} {address}: expected HOST:PORT")
    return host.strip("[]") or "0.0.0.0", int(port)


def advertised(listen: str, port: int) -> str:
    """Where agents reach this replica: the listen host (the host name for a wildcard)."""
    host, _ = split(listen, "--listen")
    if host in ("0.0.0.0", "::", ""):
        host = socket.gethostname()
    return f"{host}:{port}"
