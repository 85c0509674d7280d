"""Embedded demo database. STUB: owned by the tools helper."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def build_demo_database(path: Path) -> bool:
    """Build the demo SQLite file once; True when it was created now."""
    raise NotImplementedError


def ensure_demo_user(settings: Any) -> str:
    """Create the demo sign-in user if auth is on; return a line to print (credentials), or ''."""
    return ""
