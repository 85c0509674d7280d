"""STUB: owned by the database helper."""

from __future__ import annotations

from typing import Any


class Database:
    def __init__(self, settings: Any, metrics: Any) -> None:
        self.settings, self.metrics = settings, metrics

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
