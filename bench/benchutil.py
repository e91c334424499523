"""Small helpers shared by the bench scripts (run as ``python bench/NAME.py``, so this folder is on the path)."""

from __future__ import annotations

import sys
from importlib import metadata


def log(msg: str) -> None:
    """A progress line on stderr, after whatever stdout holds so far (so the two interleave right)."""
    sys.stdout.flush()
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def version(dist: str) -> str:
    """An installed distribution's version, or 'not installed'."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"
