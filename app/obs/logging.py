"""structlog set-up. STUB: owned by the observability helper."""

from __future__ import annotations

from typing import Any


def configure_logging(settings: Any) -> None:
    pass
