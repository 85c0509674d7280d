"""Metrics, structured logs, audit. STUB: owned by the observability helper."""

from aiohttp import web


def setup_observability(app: web.Application) -> None:
    pass
