"""Client authentication at the token and revocation endpoints (RFC 6749 §2.3): `client_secret_basic`,
`client_secret_post`, or `none` for public clients (which send only their client_id). The checks are
app/auth/validate.py's; this reads the header and finds the client."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from .records import Client
from .state import AuthState
from .validate import check_client_authentication, client_credentials


async def authenticate_client(request: web.Request, state: AuthState, params: dict[str, Any]) -> Client:
    credentials = client_credentials(request.headers.get("Authorization"), params)
    client = await state.find_client(credentials.client_id)
    return check_client_authentication(client, credentials)
