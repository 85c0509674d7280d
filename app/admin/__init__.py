"""The operator console at /admin (issue 14): users, clients, grants, audit lines, policy, database state.

For users whose role is `admin` (`mssql-mcp users add NAME --role admin`), signed in with the same throttled
password check as every other sign-in form (app.auth.signin), in a session cookie of its own on /admin
(app.admin.session). Plain server-rendered HTML with the record pages' security headers (app.admin.html);
every form is a POST with a CSRF token. docs/admin.md describes it for operators.

`add_admin_routes(app)` is called by create_app after auth is set up (the console reads app[keys.AUTH_STORE]).
"""

from __future__ import annotations

from aiohttp import web

from . import handlers as h

__all__ = ["add_admin_routes"]


def add_admin_routes(app: web.Application) -> None:
    router = app.router
    for path, title, build in (
        ("/admin", "Overview", h.overview),
        ("/admin/users", "Users", h.users_page),
        ("/admin/clients", "Clients", h.clients_page),
        ("/admin/grants", "Grants", h.grants_page),
        ("/admin/audit", "Audit", h.audit_page),
        ("/admin/policy", "Policy", h.policy_page),
    ):
        router.add_get(path, h.page(title, build))
    router.add_post("/admin/signin", h.signin_post)
    router.add_post("/admin/signout", h.signout_post)
    for path, title, build, run, back in (
        ("/admin/users/add", "Users", h.users_page, h.add_user, "/admin/users"),
        ("/admin/users/remove", "Users", h.users_page, h.remove_user, "/admin/users"),
        ("/admin/users/role", "Users", h.users_page, h.set_role, "/admin/users"),
        ("/admin/users/password", "Users", h.users_page, h.reset_password, "/admin/users"),
        ("/admin/clients/revoke", "Clients", h.clients_page, h.revoke_client, "/admin/clients"),
        ("/admin/grants/revoke", "Grants", h.grants_page, h.revoke_grant, "/admin/grants"),
    ):
        router.add_post(path, h.action(title, build, run, back))
