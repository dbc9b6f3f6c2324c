"""Whether the compiled request path (`modeltap._speedups`, built on Linux at install time) is
here, and the switch that turns it off: `MODELTAP_PURE_PYTHON=1` runs the pure-Python forms,
which behave the same (the tests run both)."""

from __future__ import annotations

import os

try:
    from modeltap import _speedups
except ImportError:  # not built here (another platform, or no C compiler at install time)
    AVAILABLE = False
else:
    AVAILABLE = True

PURE_PYTHON_ENV = "MODELTAP_PURE_PYTHON"


def wanted() -> bool:
    """True when the compiled forms are built and not turned off by the environment."""
    return AVAILABLE and os.environ.get(PURE_PYTHON_ENV, "").strip() in ("", "0")


__all__ = ["AVAILABLE", "PURE_PYTHON_ENV", "_speedups", "wanted"]
