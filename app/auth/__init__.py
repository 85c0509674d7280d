"""OAuth 2.1 authorization server and bearer check. STUB: owned by the auth helper."""

from aiohttp import web


def setup_auth(app: web.Application) -> None:
    pass
