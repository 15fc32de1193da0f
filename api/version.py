"""The release every DCNR process reports: `--version`, `dcnctl version`, response headers
and the agent's user agent all read it here, from the installed package's metadata."""

from __future__ import annotations

import importlib.metadata


def current() -> str:
    try:
        return importlib.metadata.version("dcnr")
    except importlib.metadata.PackageNotFoundError:  # running from a bare source tree
        return "0.0.0+unknown"
