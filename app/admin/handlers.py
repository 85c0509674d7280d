"""The console's pages and actions: users, clients, grants, audit lines, policy, database state.

Every handler runs behind `_console` (signed-in admin, or the sign-in form / a 403 page) and every POST
behind the CSRF check, before it reads or changes anything. An action that works sends the browser back
to its page with a one-line result (post/redirect/get); one that cannot be done renders the page again
with the reason and a 4xx status. Store and hashing errors never reach the page as a traceback: the
error middleware turns anything unexpected into a plain 500.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import structlog
from aiohttp import web

from .. import keys
from ..auth.browser import session_user
from ..auth.cli import ROLES, username_problem
from ..auth.common import client_address, read_limited_body
from ..auth.pages import PAGE_HEADERS
from ..auth.params import OAuthError, parse_form
from ..auth.passwords import hash_password, password_problem
from ..auth.signin import check_password
from ..auth.state import AuthState
from ..auth.store import UserExists
from ..core import TOOL_OUTCOMES
from ..obs.audit import recent_audit
from ..state.redisstate import RedisUnavailable
from . import html
from .html import section, table, text
from .policy import policy_in_force, policy_sections
from .session import (
    ADMIN_ROLE,
    AdminSession,
    auth_state,
    current_session,
    end_session,
    notice_of,
    session_token_matches,
    set_notice,
    set_signin_token,
    signin_token,
    signin_token_matches,
    start_session,
    take_notice,
)

log = structlog.get_logger(__name__)

FORM_LIMIT = 16 * 1024
AUDIT_SHOWN = 200  # lines on the audit page (of the last RECENT_AUDIT_SIZE kept)
_SAFE_NEXT = frozenset(href for href, _ in html.NAV)


@dataclass(frozen=True, slots=True)
class Console:
    """What an admin's request carries into a page: the session, the auth state, the parsed form."""

    request: web.Request
    session: AdminSession
    state: AuthState
    form: dict[str, Any]

    def field(self, name: str) -> str:
        value = self.form.get(name, "")
        return value.strip() if isinstance(value, str) else ""


class Refused(Exception):
    """An action that cannot be done: the page is shown again with this message and status."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


Page = Callable[[Console], Awaitable[list[str]]]
Action = Callable[[Console], Awaitable[str]]


# -- sign-in -----------------------------------------------------------------------------------


def _signin_page(
    request: web.Request, *, error: str | None = None, username: str = "", status: int = 200
) -> web.Response:
    token = signin_token(request)
    next_path = request.path if request.path in _SAFE_NEXT else "/admin"
    err = f"<p class=error role=alert>{text(error)}</p>" if error else ""
    body = (
        "<main class=signin><section><h1>Operator console</h1>"
        f"<p class=muted>Sign in with an account whose role is {ADMIN_ROLE}.</p>{err}"
        f"<form method=post action='/admin/signin'>{html.csrf_field(token)}{html.hidden('next', next_path)}"
        "<label for=username>Username</label>"
        "<input id=username name=username type=text autocomplete=username required autofocus "
        f"value='{text(username)}'>"
        "<label for=password>Password</label>"
        "<input id=password name=password type=password autocomplete=current-password required>"
        "<button type=submit>Sign in</button></form></section></main>"
    )
    response = html.document("Sign in", body, status)
    set_signin_token(request, response, token)
    return response


def _no_access(username: str, role: str) -> web.Response:
    body = (
        "<main class=signin><section><h1>No access</h1>"
        f"<p class=error role=alert>You are signed in as {text(username)} ({text(role)}). Only users whose role "
        f"is {ADMIN_ROLE} may use the operator console.</p></section></main>"
    )
    return html.document("No access", body, 403)


def _unavailable() -> web.Response:
    body = (
        "<main class=signin><section><h1>Console unavailable</h1><p class=error>This server has no user "
        "accounts, so nobody can sign in to the console.</p></section></main>"
    )
    return html.document("Console unavailable", body, 404)


def _see_other(path: str) -> web.Response:
    return web.Response(status=303, headers={"Location": path, **PAGE_HEADERS})


async def _read_form(request: web.Request) -> dict[str, Any] | None:
    try:
        return parse_form(await read_limited_body(request, FORM_LIMIT))
    except OAuthError:
        return None


def _forged(request: web.Request) -> web.Response:
    log.warning("admin.csrf_refused", path=request.path, address=client_address(request))
    body = (
        "<main class=signin><section><h1>Form refused</h1><p class=error role=alert>The form could not be "
        "verified (it has no valid CSRF token). Nothing was changed. Open the page again and retry.</p>"
        "<p><a href='/admin'>Back to the console</a></p></section></main>"
    )
    return html.document("Form refused", body, 403)


async def signin_post(request: web.Request) -> web.StreamResponse:
    state = auth_state(request)
    if state is None:
        return _unavailable()
    form = await _read_form(request)
    if form is None or not signin_token_matches(request, str(form.get("csrf_token", ""))):
        return _forged(request)
    username = str(form.get("username", "")).strip()[:200]
    password = str(form.get("password", ""))
    if not username or not password:
        return _signin_page(request, error="Enter your username and password.", username=username, status=400)
    try:
        checked = await check_password(state, username, password, client_address(request), event_prefix="admin")
    except RedisUnavailable:  # the throttle counters live in Redis (REDIS_URL), away for a moment
        response = _signin_page(
            request,
            error="Sign-in is unavailable for a moment. Try again in a few seconds.",
            username=username,
            status=503,
        )
        response.headers["Retry-After"] = "2"
        return response
    if checked.throttled:
        wait = max(1, round(checked.until - time.time()))
        response = _signin_page(
            request, error=f"Too many failed sign-ins. Try again in {wait} s.", username=username, status=429
        )
        response.headers["Retry-After"] = str(wait)
        return response
    user = checked.user
    if user is None:
        return _signin_page(request, error="Wrong username or password.", username=username, status=401)
    if user.role != ADMIN_ROLE:
        log.info("admin.no_access", username=user.username, role=user.role)
        return _no_access(user.username, user.role)
    next_path = str(form.get("next", ""))
    response = _see_other(next_path if next_path in _SAFE_NEXT else "/admin")
    start_session(request, response, state, user.id)
    log.info("admin.login", username=user.username)
    return response


async def signout_post(request: web.Request) -> web.StreamResponse:
    session = await current_session(request)
    form = await _read_form(request)
    if session is None or form is None or not session_token_matches(session, str(form.get("csrf_token", ""))):
        return _forged(request)
    response = _see_other("/admin")
    end_session(response)
    log.info("admin.logout", username=session.username)
    return response


async def _gate(request: web.Request) -> tuple[AdminSession, AuthState] | web.Response:
    """The signed-in admin, or the response for everyone else: the sign-in form (no session) or 403."""
    state = auth_state(request)
    if state is None:
        return _unavailable()
    session = await current_session(request)
    if session is None:
        other = await session_user(request)  # signed in on the record pages, as someone who is not an admin
        if other is not None and other.role != ADMIN_ROLE:
            return _no_access(other.username, other.role)
        return _signin_page(request)
    if session.role != ADMIN_ROLE:  # demoted (or signed in before the role changed): refused, cookie dropped
        response = _no_access(session.username, session.role)
        end_session(response)
        return response
    return session, state


def _render(
    console: Console, title: str, sections: list[str], *, error: str | None = None, status: int = 200
) -> web.Response:
    response = html.console_page(
        title,
        sections,
        username=console.session.username,
        csrf=console.session.csrf,
        notice=None if error else notice_of(console.request),
        error=error,
        status=status,
    )
    take_notice(console.request, response)
    return response


def page(title: str, build: Page) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handler(request: web.Request) -> web.StreamResponse:
        gate = await _gate(request)
        if isinstance(gate, web.Response):
            return gate
        console = Console(request, gate[0], gate[1], {})
        return _render(console, title, await build(console))

    return handler


def action(title: str, build: Page, run: Action, back: str) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """A POST: CSRF first, then the action; success → 303 to `back` with a notice, refusal → the page again."""

    async def handler(request: web.Request) -> web.StreamResponse:
        gate = await _gate(request)
        if isinstance(gate, web.Response):
            return gate if gate.status != 200 else _forged(request)  # no session: a POST is never a sign-in
        session, state = gate
        form = await _read_form(request)
        if form is None or not session_token_matches(session, str(form.get("csrf_token", ""))):
            return _forged(request)
        console = Console(request, session, state, form)
        try:
            notice = await run(console)
        except Refused as refused:
            return _render(console, title, await build(console), error=str(refused), status=refused.status)
        log.info("admin.action", action=request.path.removeprefix("/admin/"), by=session.username)
        response = _see_other(back)
        set_notice(request, response, notice)
        return response

    return handler


# -- overview and database ---------------------------------------------------------------------


async def overview(console: Console) -> list[str]:
    app = console.request.app
    status = app[keys.DATABASE].status()
    pool = status.get("pool") or {}
    pool_rows = [(text(name), text(value)) for name, value in sorted(pool.items())]
    state_rows = [
        ("Status", f"<strong id=db-status>{text(status.get('status'))}</strong>"),
        ("Dialect", text(status.get("dialect"))),
        ("Last error", text(status.get("last_error")) or "<span class=muted>none</span>"),
    ]
    users = await console.state.store.call(lambda s: s.list_users())
    clients = await console.state.store.call(lambda s: s.list_clients())
    grants = await console.state.store.call(lambda s: s.active_grants())
    counts = (
        f"<p><a href='/admin/users'>{len(users)} users</a> · <a href='/admin/clients'>{len(clients)} clients</a>"
        f" · <a href='/admin/grants'>{len(grants)} active grants</a> · policy: "
        f"<a href='/admin/policy'>{'configured' if policy_in_force(app) else 'none'}</a></p>"
    )
    return [
        section("At a glance", counts),
        section("Database", table(("", ""), state_rows, empty="", css_id="database")),
        section("Connection pool", table(("Measure", "Value"), pool_rows, empty="No pool figures.", css_id="pool")),
    ]


# -- users -------------------------------------------------------------------------------------


def _roles(console: Console) -> tuple[str, ...]:
    policy = policy_in_force(console.request.app)
    named = tuple(sorted(set(policy.roles) - set(ROLES))) if policy else ()
    return ROLES + named


async def users_page(console: Console) -> list[str]:
    users = await console.state.store.call(lambda s: s.list_users())
    roles = _roles(console)
    csrf = html.csrf_field(console.session.csrf)
    rows = []
    for user in users:
        name = html.hidden("username", user.username)
        rows.append(
            (
                f"<strong>{text(user.username)}</strong>"
                + (f"<br><span class=muted>{text(user.email)}</span>" if user.email else ""),
                text(user.source),
                f"<form method=post action='/admin/users/role'>{csrf}{name}"
                f"<select name=role aria-label='Role of {text(user.username)}'>"
                f"{html.options(roles, user.role)}</select>"
                "<button class=secondary type=submit>Set role</button></form>",
                f"<form method=post action='/admin/users/password'>{csrf}{name}"
                f"<input type=password name=password autocomplete=new-password required placeholder='new password' "
                f"aria-label='New password for {text(user.username)}'>"
                "<button class=secondary type=submit>Reset</button></form>",
                f"<form method=post action='/admin/users/remove'>{csrf}{name}"
                "<button class=danger type=submit>Remove</button></form>",
            )
        )
    add = (
        f"<form method=post action='/admin/users/add' class=inline>{csrf}"
        "<div><label for=new-username>Username</label><input id=new-username name=username required></div>"
        "<div><label for=new-role>Role</label>"
        f"<select id=new-role name=role>{html.options(roles, 'reader')}</select></div>"
        "<div><label for=new-password>Password</label>"
        "<input id=new-password name=password type=password autocomplete=new-password required></div>"
        "<button type=submit>Add user</button></form>"
        "<p class=muted>Passwords: at least the length the CLI asks for. A new password or removing a user "
        "signs that user out of every client at once.</p>"
    )
    return [
        section("Add a user", add),
        section(
            "Users", table(("User", "Source", "Role", "Password", ""), rows, empty="No users yet.", css_id="users")
        ),
    ]


def _new_password(console: Console) -> str:
    password = str(console.form.get("password", ""))
    problem = password_problem(password)
    if problem:
        raise Refused(f"Password not accepted: {problem}.")
    return password


def _role(console: Console) -> str:
    role = console.field("role")
    if role not in _roles(console):
        raise Refused(f"Unknown role {role!r}: choose one of {', '.join(_roles(console))}.")
    return role


def _not_yourself(console: Console, username: str, what: str) -> None:
    if username.casefold() == console.session.username.casefold():
        raise Refused(f"You cannot {what} your own account here (you would lock yourself out); use the CLI.", 409)


async def add_user(console: Console) -> str:
    username = console.field("username")
    problem = username_problem(username)
    if problem:
        raise Refused(f"Username not accepted: {problem}.")
    role = _role(console)
    password_hash = await asyncio.to_thread(hash_password, _new_password(console))
    try:
        await console.state.store.call(lambda s: s.add_user(username, password_hash, role))
    except UserExists:
        raise Refused(f"A user named {username} already exists.", 409) from None
    return f"User {username} added as {role}."


async def remove_user(console: Console) -> str:
    username = console.field("username")
    _not_yourself(console, username, "remove")
    if not await console.state.store.call(lambda s: s.remove_user(username)):
        raise Refused(f"No user named {username}.", 404)
    return f"User {username} removed; their tokens stopped working."


async def set_role(console: Console) -> str:
    username = console.field("username")
    role = _role(console)
    _not_yourself(console, username, "change the role of")
    if not await console.state.store.call(lambda s: s.set_role(username, role)):
        raise Refused(f"No user named {username}.", 404)
    return f"{username} is now {role}."


async def reset_password(console: Console) -> str:
    username = console.field("username")
    password = _new_password(console)
    if await console.state.store.call(lambda s: s.get_user_by_name(username)) is None:
        raise Refused(f"No user named {username}.", 404)
    password_hash = await asyncio.to_thread(hash_password, password)
    if not await console.state.store.call(lambda s: s.set_password(username, password_hash)):
        raise Refused(f"No user named {username}.", 404)
    return f"Password of {username} reset; they are signed out of every client."


# -- clients and grants ------------------------------------------------------------------------


def _hosts(uris: tuple[str, ...]) -> str:
    hosts = sorted({urlsplit(uri).hostname or uri for uri in uris})
    return "<br>".join(text(h) for h in hosts) or "<span class=muted>none</span>"


async def clients_page(console: Console) -> list[str]:
    clients = await console.state.store.call(lambda s: s.list_clients())
    csrf = html.csrf_field(console.session.csrf)
    rows = [
        (
            f"<strong class=client-name>{text(client.client_name or 'unnamed')}</strong>"
            f"<br><code>{text(client.client_id)}</code>",
            _hosts(client.redirect_uris),
            text("registered" if client.kind == "dcr" else "metadata document"),
            text(html.when(client.created_at)),
            text(html.when(client.last_used_at)),
            text(client.active_grants),
            f"<form method=post action='/admin/clients/revoke'>{csrf}{html.hidden('client_id', client.client_id)}"
            "<button class=danger type=submit>Revoke</button></form>",
        )
        for client in clients
    ]
    return [
        section(
            "Registered clients",
            "<p class=muted>Revoking a client ends every token it holds at once (its next call gets 401) and "
            "forgets its registration: it must register and be signed in again.</p>"
            + table(
                ("Client", "Redirect hosts", "Kind", "Registered", "Last used", "Active grants", ""),
                rows,
                empty="No clients have registered.",
                css_id="clients",
            ),
        )
    ]


async def revoke_client(console: Console) -> str:
    client_id = console.field("client_id")
    revoked = await console.state.store.call(
        lambda s: s.revoke_client(client_id, f"revoked by {console.session.username}")
    )
    if revoked < 0:
        raise Refused("No such client (it may have been revoked already).", 404)
    return f"Client revoked: {revoked} grant{'s' if revoked != 1 else ''} ended."


async def grants_page(console: Console) -> list[str]:
    grants = await console.state.store.call(lambda s: s.active_grants())
    csrf = html.csrf_field(console.session.csrf)
    rows = [
        (
            f"<strong>{text(grant.username)}</strong>",
            f"{text(grant.client_name or 'unnamed')}<br><code>{text(grant.client_id)}</code>",
            text(html.when(grant.created_at)),
            text(html.when(grant.expires_at)),
            f"<form method=post action='/admin/grants/revoke'>{csrf}{html.hidden('family_id', grant.family_id)}"
            "<button class=danger type=submit>Revoke</button></form>",
        )
        for grant in grants
    ]
    return [
        section(
            "Active grants",
            "<p class=muted>One row per sign-in of a user in a client (a token family and its refreshes).</p>"
            + table(("User", "Client", "Signed in", "Expires", ""), rows, empty="No active grants.", css_id="grants"),
        )
    ]


async def revoke_grant(console: Console) -> str:
    family_id = console.field("family_id")
    grants = await console.state.store.call(lambda s: s.active_grants())
    grant = next((g for g in grants if g.family_id == family_id), None)
    if grant is None:
        raise Refused("No such active grant (it may have ended already).", 404)
    await console.state.store.call(lambda s: s.revoke_family(family_id, f"revoked by {console.session.username}"))
    return f"Grant of {grant.username} in {grant.client_name or grant.client_id} revoked."


# -- audit and policy --------------------------------------------------------------------------


async def audit_page(console: Console) -> list[str]:
    query = console.request.query
    user, tool, outcome = (query.get(k, "").strip()[:200] for k in ("user", "tool", "outcome"))
    lines = [
        line
        for line in recent_audit()
        if (not user or str(line.get("user", "")).casefold() == user.casefold())
        and (not tool or line.get("tool") == tool)
        and (not outcome or line.get("outcome") == outcome)
    ]
    rows = [
        (
            text(html.when(line.get("at"))),
            text(line.get("user")),
            text(line.get("client")),
            f"<code>{text(line.get('tool'))}</code>",
            f"<span class=outcome>{text(line.get('outcome'))}</span>",
            text(line.get("duration_ms")),
            text(line.get("rows")),
            f"<code>{text(line.get('fingerprint'))}</code>"
            + (f"<br><code>{text(line.get('sql'))}</code>" if line.get("sql") else ""),
        )
        for line in lines[:AUDIT_SHOWN]
    ]
    filters = (
        "<form method=get action='/admin/audit' class=inline>"
        f"<div><label for=f-user>User</label><input id=f-user name=user value='{text(user)}'></div>"
        f"<div><label for=f-tool>Tool</label><input id=f-tool name=tool value='{text(tool)}'></div>"
        f"<div><label for=f-outcome>Outcome</label><select id=f-outcome name=outcome><option value=''>any</option>"
        f"{html.options(sorted(TOOL_OUTCOMES), outcome)}</select></div>"
        "<button type=submit>Filter</button></form>"
    )
    shown = f"<p class=muted>{len(rows)} of {len(lines)} matching lines (newest first; kept in memory since start).</p>"
    return [
        section("Filter", filters),
        section(
            "Recent tool calls",
            shown
            + table(
                ("When", "User", "Client", "Tool", "Outcome", "ms", "Rows", "Statement"),
                rows,
                empty="No tool calls match.",
                css_id="audit",
            ),
        ),
    ]


async def policy_page(console: Console) -> list[str]:
    return policy_sections(console.request.app, console.request.app[keys.SETTINGS], _roles(console))
