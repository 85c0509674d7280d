"""The policy page: the access policy in force and what it lets each role read.

`policy_in_force` is the one place the console asks for the policy: the one `Database` enforces
(ACCESS_POLICY_FILE, replaced whole on SIGHUP, so every page shows the policy as it is now), or None when
no file is configured and the page says "no policy configured".
"""

from __future__ import annotations

from aiohttp import web

from .. import keys
from ..policy import AccessPolicy, RolePolicy
from ..settings import Settings
from .html import section, table, text


def policy_in_force(app: web.Application) -> AccessPolicy | None:
    """The access policy the server enforces now, or None when none is configured."""
    access = app[keys.DATABASE].access
    return access.policy if access.configured else None


def _patterns(patterns: tuple[object, ...]) -> str:
    return ", ".join(f"<code>{text(p)}</code>" for p in patterns) or "<span class=muted>none</span>"


def _caps(role: RolePolicy, settings: Settings) -> str:
    caps = role.caps(settings.max_rows, settings.query_timeout_seconds)
    return f"{caps.max_rows} rows, {caps.timeout_seconds:g} s"


def policy_sections(app: web.Application, settings: Settings, roles: tuple[str, ...]) -> list[str]:
    policy = policy_in_force(app)
    if policy is None:
        return [
            section(
                "Access policy",
                "<p id=policy-none>No policy configured: every role may read every table and column the "
                "database login can see (ACCESS_POLICY_FILE is not set, or not wired into this server yet).</p>",
            )
        ]
    names = sorted(set(roles) | set(policy.roles))
    rows = [
        (
            f"<strong>{text(name)}</strong>" + ("" if name in policy.roles else " <span class=muted>(defaults)</span>"),
            _patterns(tuple(policy.role(name).allow_tables)),
            _patterns(tuple(policy.role(name).deny_tables)),
            _patterns(tuple(policy.role(name).deny_columns)),
            text(_caps(policy.role(name), settings)),
        )
        for name in names
    ]
    return [
        section(
            "Access policy",
            f"<p class=muted>From {text(policy.source)}.</p>"
            + table(
                ("Role", "Tables allowed", "Tables denied", "Columns never shown", "Caps"),
                rows,
                empty="The policy names no roles.",
                css_id="policy",
            ),
        )
    ]
