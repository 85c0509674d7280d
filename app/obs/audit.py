"""One audit line per tool call. STUB: owned by the observability helper."""

from __future__ import annotations

from typing import Any

from ..auth.principal import Principal


def audit_tool_call(*, principal: Principal, tool: str, outcome: str, duration_seconds: float,
                    audit: dict[str, Any], settings: Any) -> None:
    pass
