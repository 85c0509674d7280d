"""The sign-in, consent and error pages: plain HTML, every value escaped, no scripts."""

from __future__ import annotations

from html import escape

from aiohttp import web

_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f5f7;margin:0;color:#1d2330}
main{max-width:26rem;margin:8vh auto;background:#fff;border-radius:10px;padding:2rem;box-shadow:0 2px 12px #0002}
h1{font-size:1.3rem;margin:0 0 1rem}label{display:block;margin:.8rem 0 .3rem;font-weight:600}
input[type=text],input[type=password]{width:100%;box-sizing:border-box;padding:.6rem;border:1px solid #bbb;
border-radius:6px;font-size:1rem}button{margin-top:1.2rem;padding:.6rem 1.2rem;border:0;border-radius:6px;
font-size:1rem;cursor:pointer;background:#2457d6;color:#fff}button.secondary{background:#e4e6eb;color:#1d2330}
.error{background:#fdecea;color:#8a1c12;padding:.6rem .8rem;border-radius:6px}.muted{color:#5b6270;font-size:.9rem}
ul{padding-left:1.2rem}.row{display:flex;gap:.6rem}hr{border:0;border-top:1px solid #e4e6eb;margin:1.4rem 0}
"""

# No scripts, no framing (clickjacking on the consent button), no referrer leaking the request id.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
}

SCOPE_TEXT = {
    "mcp:read": "read the database (list tables, describe them, run read-only queries)",
    "mcp:write": "change data (run INSERT, UPDATE and DELETE statements, when the server allows writes)",
}


def _page(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body><main>{body}</main></body></html>"
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


def _hidden(request_id: str, csrf: str, action: str) -> str:
    return (
        f"<input type=hidden name=request_id value='{escape(request_id, quote=True)}'>"
        f"<input type=hidden name=csrf_token value='{escape(csrf, quote=True)}'>"
        f"<input type=hidden name=action value='{escape(action, quote=True)}'>"
    )


def login_page(
    *,
    request_id: str,
    csrf: str,
    client_name: str,
    error: str | None = None,
    username: str = "",
    status: int = 200,
    upstream_label: str | None = None,
) -> web.Response:
    err = f"<p class=error role=alert>{escape(error)}</p>" if error else ""
    upstream = ""
    if upstream_label:
        upstream = (
            f"<hr><form method=post action=authorize>{_hidden(request_id, csrf, 'upstream')}"
            f"<button class=secondary type=submit>Sign in with {escape(upstream_label)}</button></form>"
        )
    body = (
        f"<h1>Sign in to MSSQL MCP Server</h1>"
        f"<p class=muted>{escape(client_name)} is asking to connect to this server.</p>{err}"
        f"<form method=post action=authorize>{_hidden(request_id, csrf, 'login')}"
        f"<label for=username>Username</label>"
        f"<input id=username name=username type=text autocomplete=username required autofocus "
        f"value='{escape(username, quote=True)}'>"
        f"<label for=password>Password</label>"
        f"<input id=password name=password type=password autocomplete=current-password required>"
        f"<button type=submit>Sign in</button></form>{upstream}"
    )
    return _page("Sign in", body, status)


def consent_page(
    *,
    request_id: str,
    csrf: str,
    client_name: str,
    client_note: str,
    redirect_host: str,
    username: str,
    scopes: list[str],
    read_only_server: bool,
    action: str = "authorize",
) -> web.Response:
    items = "".join(f"<li>{escape(SCOPE_TEXT.get(s, s))}</li>" for s in scopes)
    ro = (
        "<p class=muted>This server is in read-only mode: writes are refused regardless.</p>"
        if read_only_server and "mcp:write" in scopes
        else ""
    )
    body = (
        f"<h1>Allow access?</h1>"
        f"<p><strong>{escape(client_name)}</strong> wants to use this server as "
        f"<strong>{escape(username)}</strong>.</p>"
        f"<p class=muted>{escape(client_note)}</p>"
        f"<p>After you decide, you will be sent back to <strong>{escape(redirect_host)}</strong>.</p>"
        f"<p>It will be able to:</p><ul>{items}</ul>{ro}"
        f"<form method=post action='{escape(action, quote=True)}'>{_hidden(request_id, csrf, 'consent')}"
        f"<div class=row><button type=submit name=decision value=allow>Allow</button>"
        f"<button class=secondary type=submit name=decision value=deny>Deny</button></div></form>"
    )
    return _page("Allow access", body)


def error_page(title: str, message: str, status: int = 400) -> web.Response:
    body = (
        f"<h1>{escape(title)}</h1><p class=error role=alert>{escape(message)}</p>"
        f"<p class=muted>Go back to the app you were connecting and try again.</p>"
    )
    return _page(title, body, status)
