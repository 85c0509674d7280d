"""GET /chatgpt/records/{id} (and /records/{id}): the page behind each search/fetch `url`.

ChatGPT cites a result by its `url`, so every id needs a real page. The page shows what fetch
returns: HTML for a browser, JSON with `Accept: application/json` (or `?format=json`).

Records are data from the database, so the page is guarded like MCP itself: the same bearer token,
checked by the app's Authenticator as if the request were a `tools/call` (under /chatgpt a token
for the ChatGPT endpoint is accepted, under / one for the Claude endpoint). A browser without a token
is sent to the record sign-in page and back (app.auth.browser: a short-lived session cookie for the
same users and roles); a row is shown as a table whose foreign keys link to the related records.
"""

from __future__ import annotations

import html
import json
from typing import Any

import structlog
from aiohttp import web

from .. import keys
from ..auth import browser
from ..core import SURFACES, Principal, surface_of, unauthenticated_allowed
from ..db.types import DatabaseBusy, DatabaseError, DatabaseUnavailable, QueryRefused, QueryTimeout
from ..mcp.tools import ToolError
from ..urls import base_url
from .chatgpt import record_url
from .doccache import FetchCacheUnavailable

log = structlog.get_logger(__name__)

PAGE_HEADERS = {
    "Cache-Control": "private, no-store",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "Referrer-Policy": "no-referrer",
    "Vary": "Accept, Authorization, Cookie",
}
_STYLE = (
    "body{font:15px/1.45 system-ui,sans-serif;margin:2rem auto;max-width:70rem;padding:0 1rem;color:#1b1f24}"
    "pre{background:#f4f5f7;padding:1rem;overflow:auto;white-space:pre-wrap}"
    "table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:.2rem .5rem;text-align:left}"
    "small{color:#555}"
)


# A record page reads data as fetch does, so it is authorized as a tools/call.
_RECORD_METHODS = ("tools/call",)


def _wants_json(request: web.Request) -> bool:
    if request.query.get("format") == "json":
        return True
    accept = request.headers.get("Accept", "").lower()
    if "application/json" not in accept:
        return False
    return "text/html" not in accept or accept.index("application/json") < accept.index("text/html")


async def _authenticate(request: web.Request) -> web.Response | Principal:
    """Who reads (the page shows what that role may read), or the answer to send (sign-in redirect, No access).

    A bearer token (or none) is checked by the app's Authenticator as a `tools/call`, so the pages follow
    the one rule for unauthenticated calls (app.core.unauthenticated_allowed)."""
    if "Authorization" not in request.headers:
        user = await browser.session_user(request)
        if user is not None:
            if user.role in browser.allowed_roles(request):
                return Principal(subject=user.user_id, username=user.username, role=user.role)
            return browser.no_access_page(
                f"You are signed in as {user.username} ({user.role}), and that role may "
                "not open record pages on this server. Ask an administrator for access."
            )
        settings = request.app[keys.SETTINGS]
        open_to_all = unauthenticated_allowed(
            _RECORD_METHODS,
            allow_methods=settings.allow_unauth_methods,
            allow_tools_call=settings.allow_unauth_tools_call,
        )
        if browser.wants_page(request) and not open_to_all:
            return web.Response(status=303, headers={"Location": browser.signin_location(request), **PAGE_HEADERS})
    return await request.app[keys.AUTHENTICATOR].authenticate(request, _RECORD_METHODS)


def _render_html(document: dict[str, Any], link: Any) -> str:
    """`link(id)` -> the URL of another record page on this same prefix."""
    e = html.escape
    meta = document.get("metadata") or {}
    source = meta.get("table")
    head = (
        f"<h1>{e(document['title'])}</h1><p><small>id <code id=record-id>{e(document['id'])}</code>"
        + (f" · source table <code id=source-table>{e(str(source))}</code>" if source else "")
        + "</small></p>"
    )
    values = document.get("_row")
    if values is not None:  # a row: the record as a table, foreign keys as links
        links = document.get("_links") or {}
        cells = "".join(
            f"<tr><th>{e(column)}</th><td>"
            + (f'<a class=related href="{e(link(links[column]))}">{e(value)}</a>' if column in links else e(value))
            + "</td></tr>"
            for column, value in values.items()
        )
        body = f"<table class=record>{cells}</table>"
        children = document.get("_children") or []
        if children:
            items = "".join(
                f'<li><a class=related href="{e(link(child_id))}">{e(label)}</a></li>' for child_id, label in children
            )
            body += f"<h2>Related records</h2><ul>{items}</ul>"
    else:
        rows = "".join(
            f"<tr><th>{e(str(k))}</th><td>{e(v if isinstance(v, str) else json.dumps(v, ensure_ascii=False))}</td></tr>"
            for k, v in meta.items()
        )
        body = f"<pre>{e(document['text'])}</pre>" + (f"<h2>Metadata</h2><table>{rows}</table>" if rows else "")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width"><title>{e(document["title"])}</title>'
        f"<style>{_STYLE}</style></head><body>{head}{body}</body></html>"
    )


def _error(request: web.Request, status: int, message: str) -> web.Response:
    if _wants_json(request):
        return web.json_response({"error": message}, status=status, headers=PAGE_HEADERS)
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{status}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{status}</h1><p>{html.escape(message)}</p></body></html>"
    )
    return web.Response(text=page, status=status, content_type="text/html", headers=PAGE_HEADERS)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, FetchCacheUnavailable):  # Redis is away for a moment: "search again in a moment"
        return 503
    if isinstance(exc, ToolError):
        return 400 if exc.outcome == "invalid" else 404
    if isinstance(exc, QueryRefused):
        return 400
    if isinstance(exc, QueryTimeout):
        return 504
    if isinstance(exc, DatabaseBusy | DatabaseUnavailable):
        return 503
    return 500 if not isinstance(exc, DatabaseError) else 502


async def record_page(request: web.Request) -> web.StreamResponse:
    caller = await _authenticate(request)
    if isinstance(caller, web.Response):
        return caller
    tools = request.app[keys.CHATGPT_TOOLS]
    record_id = request.match_info["id"]
    try:
        document = await tools.document(record_id, caller)  # only what the caller's role may read
    except (ToolError, DatabaseError) as exc:
        return _error(request, _status_of(exc), str(exc))
    prefix = surface_of(request.path).prefix
    document = {**document, "url": record_url(base_url(request), document["id"], prefix)}
    if _wants_json(request):
        body = {k: document[k] for k in ("id", "title", "text", "url", "metadata")}
        return web.json_response(body, headers=PAGE_HEADERS, dumps=lambda v: json.dumps(v, ensure_ascii=False))
    page = _render_html(document, lambda other: record_url(base_url(request), other, prefix))
    return web.Response(text=page, content_type="text/html", headers=PAGE_HEADERS)


def add_record_routes(app: web.Application) -> None:
    """The pages read app[keys.CHATGPT_TOOLS] (the app's one ChatGptTools) and app[keys.AUTHENTICATOR]."""
    for surface in SURFACES:  # record links work under every surface (older links used the root)
        # the sign-in routes first: 'signin' would otherwise be read as a record id
        app.router.add_get(surface.records_path + "/signin", browser.signin_get)
        app.router.add_post(surface.records_path + "/signin", browser.signin_post)
        app.router.add_get(surface.records_path + "/{id}", record_page, name=f"records_{surface.name}")
