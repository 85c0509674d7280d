"""Resource-server check in front of the MCP endpoints. STUB: owned by the auth helper.

Contract: transports call `await authenticator.authenticate(request, methods)` after parsing the
JSON-RPC body (methods = the JSON-RPC method names in it; empty for a GET stream). It returns
the Principal, or raises web.HTTPUnauthorized / web.HTTPForbidden carrying WWW-Authenticate.
"""

from __future__ import annotations

from collections.abc import Sequence

from aiohttp import web

from .principal import ANONYMOUS, Principal


class Authenticator:
    async def authenticate(self, request: web.Request, methods: Sequence[str]) -> Principal:
        return ANONYMOUS
