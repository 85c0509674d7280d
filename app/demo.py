"""Embedded demo database. STUB: owned by the tools helper."""

from __future__ import annotations

from pathlib import Path


def build_demo_database(path: Path) -> bool:
    """Build the demo SQLite file once; True when it was created now."""
    raise NotImplementedError

