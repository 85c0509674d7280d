"""One CORS mechanism for the whole service: a policy per route, one response hook, one preflight handler.

Browser-based clients (MCP Inspector, claude.ai, chatgpt.com) call two kinds of endpoint cross-origin:

- `PUBLIC`: discovery documents, JWKS, /register, /token, /revoke. They use no cookies, so any origin may
  read them (`Access-Control-Allow-Origin: *`).
- `credentialed(allowed)`: the MCP endpoints. Only origins `allowed` accepts (the DNS-rebinding policy)
  get CORS headers, with the origin echoed and credentials allowed.

`allow_cors(app, path, policy, methods=...)` puts a route path under a policy and answers OPTIONS preflights on
its path. The headers are added in `on_response_prepare`, so every answer gets them: errors, 401s and
event streams (which are prepared before their body exists) included.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import hdrs, web

from . import keys

OriginCheck = Callable[[web.Request], bool]


@dataclass(frozen=True)
class CorsPolicy:
    """The CORS headers one kind of endpoint sends."""

    allow_headers: str  # Access-Control-Allow-Headers on a preflight
    expose_headers: str  # Access-Control-Expose-Headers on every answer
    # None: any origin ("*", no credentials). Otherwise only origins it accepts, echoed, with credentials.
    origin_allowed: OriginCheck | None = None
    preflight_status: int = 204
    max_age_seconds: int = 86400
    # Access-Control-Allow-Methods on a preflight; None: the methods of the route's path.
    allow_methods: str | None = None
    # Whether a preflight also carries `Allow` (the MCP endpoints always did).
    preflight_allow: bool = False

    def response_headers(self, request: web.Request) -> dict[str, str]:
        """The headers an answer to `request` carries (none for a non-browser call to a credentialed route)."""
        if self.origin_allowed is None:
            return {"Access-Control-Allow-Origin": "*", "Access-Control-Expose-Headers": self.expose_headers}
        origin = request.headers.get(hdrs.ORIGIN)
        if not origin or not self.origin_allowed(request):
            return {}
        return {
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Credentials": "true",
            "Access-Control-Expose-Headers": self.expose_headers,
            "Vary": "Origin",
        }

    def preflight(self, request: web.Request, methods: str) -> web.Response:
        headers: dict[str, str] = {}
        if self.preflight_allow:
            headers["Allow"] = methods
        if self.origin_allowed is None or self.origin_allowed(request):
            headers["Access-Control-Allow-Methods"] = self.allow_methods or methods
            headers["Access-Control-Allow-Headers"] = self.allow_headers
        headers["Access-Control-Max-Age"] = str(self.max_age_seconds)
        return web.Response(status=self.preflight_status, headers=headers)


PUBLIC = CorsPolicy(
    allow_headers="Authorization, Content-Type, MCP-Protocol-Version",
    expose_headers="WWW-Authenticate",
    allow_methods="GET, POST, OPTIONS",
)

MCP_ALLOW_HEADERS = (
    "Authorization, Content-Type, Accept, Mcp-Session-Id, MCP-Protocol-Version, Mcp-Method, Mcp-Name, Last-Event-ID"
)
MCP_EXPOSE_HEADERS = "Mcp-Session-Id, MCP-Protocol-Version, WWW-Authenticate"


def credentialed(origin_allowed: OriginCheck) -> CorsPolicy:
    """The MCP endpoints' policy: only `origin_allowed` origins, echoed, with credentials."""
    return CorsPolicy(
        allow_headers=MCP_ALLOW_HEADERS,
        expose_headers=MCP_EXPOSE_HEADERS,
        origin_allowed=origin_allowed,
        preflight_status=200,
        preflight_allow=True,
    )


class CorsRoutes:
    """The policy of each route path of one app (by the resource's canonical path, so `{tail}` routes count)."""

    def __init__(self) -> None:
        self._policies: dict[str, CorsPolicy] = {}

    def add(self, path: str, policy: CorsPolicy) -> None:
        known = self._policies.setdefault(path, policy)
        if known is not policy:
            raise ValueError(f"two CORS policies for {path}")

    def policy_for(self, request: web.Request) -> CorsPolicy | None:
        route = request.match_info.route
        resource = route.resource if route is not None else None
        return self._policies.get(resource.canonical) if resource is not None else None

    async def on_response_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        policy = self.policy_for(request)
        if policy is None:
            return
        if policy.origin_allowed is not None and hdrs.ORIGIN not in request.headers:
            return  # a non-browser call to a credentialed route (every MCP call from a program): nothing to add
        for name, value in policy.response_headers(request).items():
            response.headers.setdefault(name, value)


def cors_routes(app: web.Application) -> CorsRoutes:
    """The app's CORS table; the first call installs the response hook (once per app)."""
    routes = app.get(keys.CORS_ROUTES)
    if routes is None:
        routes = app[keys.CORS_ROUTES] = CorsRoutes()
        app.on_response_prepare.append(routes.on_response_prepare)
    return routes


def allow_cors(app: web.Application, path: str, policy: CorsPolicy, *, methods: str) -> None:
    """Put the routes of `path` (as given to the router) under `policy`, and answer OPTIONS on it with the
    policy's preflight. `methods` is what the path allows (the preflight's Allow-Methods unless the policy
    names its own). Call it once per path.
    """

    async def preflight(request: web.Request) -> web.Response:
        return policy.preflight(request, methods)

    options = app.router.add_route("OPTIONS", path, preflight)
    assert options.resource is not None  # add_route always gives a route its resource
    cors_routes(app).add(options.resource.canonical, policy)
