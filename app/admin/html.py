"""The console's HTML: one layout, small helpers, every value escaped, no scripts, no CDN.

Pages send the same security headers as the sign-in and record pages (app.auth.pages.PAGE_HEADERS: a CSP
without scripts, no framing, no referrer, no caching). Tables scroll sideways on a phone instead of
squeezing; forms are plain POSTs carrying the session's CSRF token.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from html import escape

from aiohttp import web

from ..auth.pages import PAGE_HEADERS

_STYLE = """
*{box-sizing:border-box}body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;background:#f4f5f7;
margin:0;color:#1d2330;font-size:15px}header{background:#1d2330;color:#fff;padding:.7rem 1rem;display:flex;
flex-wrap:wrap;gap:.4rem 1rem;align-items:center}header strong{margin-right:auto}header a{color:#cfd8ff}
header form{display:inline;margin:0}header .muted{color:#c4c9d4}
header button{margin:0;padding:.3rem .7rem;font-size:.85rem}
main{max-width:64rem;margin:1rem auto;padding:0 .8rem}section{background:#fff;border-radius:8px;padding:1rem;
margin-bottom:1rem;box-shadow:0 1px 6px #0001}h1{font-size:1.3rem;margin:.2rem 0 1rem}h2{font-size:1.05rem;
margin:0 0 .6rem}.scroll{overflow-x:auto}table{border-collapse:collapse;width:100%}th,td{text-align:left;
padding:.4rem .5rem;border-bottom:1px solid #e4e6eb;vertical-align:top}th{font-size:.8rem;color:#5b6270}
td form{display:flex;flex-wrap:wrap;gap:.3rem;margin:0}label{display:block;margin:.5rem 0 .2rem;font-weight:600}
input,select{padding:.45rem;border:1px solid #bbb;border-radius:6px;font-size:.95rem;max-width:100%}
button{padding:.45rem .9rem;border:0;border-radius:6px;font-size:.95rem;cursor:pointer;background:#2457d6;
color:#fff}button.danger{background:#b3261e}button.secondary{background:#e4e6eb;color:#1d2330}
.error{background:#fdecea;color:#8a1c12;padding:.6rem .8rem;border-radius:6px}.notice{background:#e7f5ea;
color:#1b5e20;padding:.6rem .8rem;border-radius:6px}.muted{color:#5b6270;font-size:.88rem}code{font-size:.85rem;
word-break:break-all}.inline{display:flex;flex-wrap:wrap;gap:.5rem;align-items:end}.inline label{margin:0}
.signin{max-width:24rem;margin:8vh auto}.signin input{width:100%}.signin button{margin-top:1rem}
"""

NAV = (
    ("/admin", "Overview"),
    ("/admin/users", "Users"),
    ("/admin/clients", "Clients"),
    ("/admin/grants", "Grants"),
    ("/admin/audit", "Audit"),
    ("/admin/policy", "Policy"),
)


def document(title: str, body: str, status: int = 200) -> web.Response:
    html = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width,initial-scale=1'>"
        f"<title>{escape(title)} · MSSQL MCP console</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )
    return web.Response(text=html, status=status, content_type="text/html", charset="utf-8", headers=PAGE_HEADERS)


def console_page(
    title: str,
    sections: Iterable[str],
    *,
    username: str,
    csrf: str,
    notice: str | None = None,
    error: str | None = None,
    status: int = 200,
) -> web.Response:
    """A signed-in page: the navigation bar (with sign-out), a heading, the result line, the sections."""
    links = "".join(f"<a href='{href}'>{escape(label)}</a>" for href, label in NAV)
    header = (
        f"<header><strong>MSSQL MCP console</strong><nav class=inline>{links}</nav>"
        f"<span class=muted>{escape(username)}</span>"
        f"<form method=post action='/admin/signout'>{csrf_field(csrf)}"
        f"<button class=secondary type=submit>Sign out</button></form></header>"
    )
    messages = ""
    if error:
        messages += f"<p class=error role=alert>{escape(error)}</p>"
    if notice:
        messages += f"<p class=notice role=status>{escape(notice)}</p>"
    body = f"{header}<main><h1>{escape(title)}</h1>{messages}{''.join(sections)}</main>"
    return document(title, body, status)


def section(heading: str, content: str) -> str:
    return f"<section><h2>{escape(heading)}</h2>{content}</section>"


def table(headings: Sequence[str], rows: Iterable[Sequence[str]], *, empty: str, css_id: str = "") -> str:
    """Cells are HTML already (escape values with `text`)."""
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    if not body:
        return f"<p class=muted>{escape(empty)}</p>"
    head = "".join(f"<th scope=col>{escape(h)}</th>" for h in headings)
    thead = f"<thead><tr>{head}</tr></thead>" if any(headings) else ""  # a key/value table needs none
    ident = f" id={css_id}" if css_id else ""
    return f"<div class=scroll><table{ident}>{thead}<tbody>{body}</tbody></table></div>"


def text(value: object) -> str:
    return "" if value is None else escape(str(value))


def csrf_field(csrf: str) -> str:
    return f"<input type=hidden name=csrf_token value='{escape(csrf, quote=True)}'>"


def hidden(name: str, value: str) -> str:
    return f"<input type=hidden name={name} value='{escape(value, quote=True)}'>"


def options(choices: Iterable[str], selected: str = "") -> str:
    return "".join(
        f"<option value='{escape(c, quote=True)}'{' selected' if c == selected else ''}>{escape(c)}</option>"
        for c in choices
    )


def when(timestamp: float | None) -> str:
    if timestamp is None:
        return "never"
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC")
