"""`mssql-mcp users ...` and the demo user. STUB: owned by the auth helper."""

from __future__ import annotations

from typing import Any


def users_main(settings: Any, argv: list[str]) -> int:
    print("user management is not available yet")
    return 2


def ensure_demo_user(settings: Any) -> str:
    """Create the demo sign-in user when auth is on; return a line to print (its credentials), or ''."""
    return ""
