"""`python -m dcnctl`, until the console script is installed."""

from __future__ import annotations

from dcnctl import main

raise SystemExit(main.main())
