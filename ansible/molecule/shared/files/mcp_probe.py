#!/usr/bin/env python3
"""Probe a deployed MSSQL MCP Server from outside, the way ChatGPT and Claude reach it.

Used by the Molecule verify playbooks; standard library only, so it runs with any Python 3.11.

    mcp_probe.py --base https://mcp.molecule.test:18443 --http-base http://mcp.molecule.test:18080 \
        --cafile root.pem --resolve mcp.molecule.test=127.0.0.1 --username molecule < password

Checks (each prints PASS/FAIL with the evidence; exit status 1 if any failed):
  health and /chatgpt/health over TLS; the HTTP->HTTPS redirect; security headers; OAuth discovery at the
  root and under /chatgpt with the public issuer; HEAD /chatgpt/sse; TLS below 1.2 refused; unknown host
  names refused; then, like a connector: 401 -> protected-resource metadata -> dynamic registration ->
  sign-in and consent pages -> PKCE token, and with that token a legacy SSE stream whose events arrive
  while the stream stays open (nothing buffered by the proxy) and a Streamable HTTP tools/list on
  /chatgpt/mcp.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import http.client
import json
import re
import secrets
import socket
import ssl
import sys
import time
import urllib.parse
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

PROTOCOL_VERSION = "2025-06-18"
REDIRECT_URI = "http://127.0.0.1:9/callback"  # loopback: allowed by the server, never contacted


@dataclass
class Response:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str:
        return self.headers.get(name, "")

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Probe:
    base: str
    http_base: str
    context: ssl.SSLContext
    cafile: str
    timeout: float = 10.0
    cookies: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)

    # --- plumbing ---------------------------------------------------------------------------
    def connect(self, url: str, context: ssl.SSLContext | None = None) -> tuple[http.client.HTTPConnection, str]:
        parts = urllib.parse.urlsplit(url)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        if parts.scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                parts.hostname, parts.port or 443, context=context or self.context, timeout=self.timeout)
        else:
            conn = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=self.timeout)
        return conn, path

    def request(self, method: str, url: str, *, body: bytes | None = None,
                headers: dict[str, str] | None = None) -> Response:
        conn, path = self.connect(url)
        all_headers = {"User-Agent": "mcp-probe/1", **(headers or {})}
        if self.cookies:
            all_headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=all_headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        for raw in resp.headers.get_all("Set-Cookie") or []:
            name, _, rest = raw.partition("=")
            self.cookies[name.strip()] = rest.split(";", 1)[0]
        return Response(resp.status, resp.headers, data)

    def form(self, url: str, fields: dict[str, str]) -> Response:
        return self.request("POST", url, body=urllib.parse.urlencode(fields).encode(),
                            headers={"Content-Type": "application/x-www-form-urlencoded"})

    def check(self, name: str, func: Callable[[], str], *, secret: bool = False) -> Any:
        try:
            evidence = func()
        except Exception as exc:  # a failed check must not stop the others
            self.failures.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
            return None
        print(f"PASS {name}: {'obtained' if secret else evidence}", flush=True)
        return evidence

    # --- checks without a token ---------------------------------------------------------------
    def health(self, path: str) -> str:
        resp = self.request("GET", self.base + path)
        assert resp.status == 200, f"status {resp.status}: {resp.body[:200]!r}"
        doc = resp.json()
        assert doc.get("status") == "healthy", f"status field {doc.get('status')!r}"  # the seed's value
        return f"200 {json.dumps(doc)[:120]}"

    def redirect(self) -> str:
        resp = self.request("GET", self.http_base + "/health?x=1")
        assert resp.status == 301, f"status {resp.status}"
        assert resp.header("Location") == self.base + "/health?x=1", f"Location {resp.header('Location')}"
        return f"301 -> {resp.header('Location')}"

    def security_headers(self) -> str:
        resp = self.request("GET", self.base + "/health")
        expected = {"Strict-Transport-Security": "max-age=", "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer"}
        for name, value in expected.items():
            assert value in resp.header(name), f"{name}: {resp.header(name)!r}"
        assert resp.header("Server") == "nginx", f"Server: {resp.header('Server')!r} (version leaked?)"
        assert resp.header("X-Request-ID"), "no X-Request-ID"
        return ", ".join(expected)

    def discovery(self, prefix: str) -> str:
        shown = []
        for doc in ("oauth-authorization-server", "openid-configuration"):
            resp = self.request("GET", f"{self.base}{prefix}/.well-known/{doc}")
            assert resp.status == 200, f"{doc}: status {resp.status}"
            meta = resp.json()
            assert meta["issuer"].startswith(self.base), f"issuer {meta['issuer']} (expected under {self.base})"
            assert meta["token_endpoint"].startswith(self.base), f"token_endpoint {meta['token_endpoint']}"
            cors = resp.headers.get_all("Access-Control-Allow-Origin") or []
            assert cors == ["*"], f"Access-Control-Allow-Origin {cors} (want exactly one '*')"
            shown.append(f"{doc} issuer={meta['issuer']}")
        if prefix:  # the seed's quirk: discovery appended to the endpoint path redirects to the document
            quirk = self.request("GET", f"{self.base}{prefix}/sse/.well-known/oauth-authorization-server")
            assert quirk.status in (301, 302, 307, 308), f"quirk path: status {quirk.status}"
            assert quirk.header("Location") == f"{self.base}{prefix}/.well-known/oauth-authorization-server", \
                f"quirk redirect to {quirk.header('Location')}"
            shown.append(f"quirk {quirk.status} -> {quirk.header('Location')}")
        resp = self.request("GET", f"{self.base}/.well-known/oauth-protected-resource{prefix}/sse")
        assert resp.status == 200, f"protected resource metadata: status {resp.status}"
        shown.append(f"resource={resp.json()['resource']}")
        return "; ".join(shown)

    def head_sse(self) -> str:
        resp = self.request("HEAD", self.base + "/chatgpt/sse")
        assert resp.status in (200, 401), f"status {resp.status}"
        if resp.status == 401:
            assert "resource_metadata=" in resp.header("WWW-Authenticate"), "401 without resource_metadata"
        return f"{resp.status} {resp.header('Content-Type')}"

    def old_tls_refused(self) -> str:
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=self.cafile)
        old.set_ciphers("DEFAULT:@SECLEVEL=0")
        with warnings.catch_warnings():  # the point is to try the deprecated versions
            warnings.simplefilter("ignore", DeprecationWarning)
            old.minimum_version = ssl.TLSVersion.TLSv1
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        conn, path = self.connect(self.base + "/health", context=old)
        try:
            conn.request("GET", path)
            conn.getresponse().read()
        except (ssl.SSLError, ConnectionError) as exc:
            return f"TLS 1.0/1.1 handshake refused ({exc.__class__.__name__})"
        finally:
            conn.close()
        raise AssertionError("a TLS 1.1 connection was accepted")

    def unknown_host_refused(self) -> str:
        parts = urllib.parse.urlsplit(self.base)
        raw = socket.create_connection((parts.hostname, parts.port or 443), timeout=self.timeout)
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with context.wrap_socket(raw, server_hostname="not-this-service.example"):
                pass
        except ssl.SSLError as exc:
            return f"handshake for another name refused ({exc.reason})"
        raise AssertionError("a TLS connection for an unknown host name was accepted")

    # --- the connector flow -------------------------------------------------------------------
    def token_for(self, endpoint_path: str, username: str, password: str) -> str:
        """Discover, register, sign in, consent and exchange the code: a bearer token for the endpoint."""
        url = self.base + endpoint_path
        challenge = self.request("POST", url, body=b"{}", headers={
            "Content-Type": "application/json", "Accept": "application/json, text/event-stream"})
        assert challenge.status == 401, f"unauthenticated call: status {challenge.status}"
        www = challenge.header("WWW-Authenticate")
        match = re.search(r'resource_metadata="([^"]+)"', www)
        assert match, f"WWW-Authenticate without resource_metadata: {www!r}"
        prm = self.request("GET", match.group(1)).json()
        resource, issuer = prm["resource"], prm["authorization_servers"][0]
        assert resource.startswith(self.base), f"resource {resource}"
        meta = self.request("GET", _metadata_url(issuer)).json()

        reg = self.request("POST", meta["registration_endpoint"], headers={"Content-Type": "application/json"},
                           body=json.dumps({"client_name": "molecule probe", "redirect_uris": [REDIRECT_URI],
                                            "token_endpoint_auth_method": "none",
                                            "grant_types": ["authorization_code", "refresh_token"],
                                            "response_types": ["code"]}).encode())
        assert reg.status == 201, f"registration: status {reg.status} {reg.body[:200]!r}"
        client_id = reg.json()["client_id"]

        verifier = secrets.token_urlsafe(48)
        state = secrets.token_urlsafe(16)
        params = {"response_type": "code", "client_id": client_id, "redirect_uri": REDIRECT_URI,
                  "code_challenge": _s256(verifier), "code_challenge_method": "S256", "state": state,
                  "resource": resource, "scope": " ".join(prm.get("scopes_supported", []))}
        authorize = meta["authorization_endpoint"]
        page = self.request("GET", authorize + "?" + urllib.parse.urlencode(params))
        assert page.status == 200, f"authorize: status {page.status}"
        reply = self.submit(authorize, page, {"username": username, "password": password})
        if reply.status == 200:  # the consent page
            reply = self.submit(authorize, reply, {"decision": "allow"})
        assert reply.status in (302, 303), f"after sign-in: status {reply.status} {reply.body[:300]!r}"
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(reply.header("Location")).query)
        assert query.get("state") == [state], "state not returned"
        assert query.get("iss") == [meta["issuer"]], f"iss {query.get('iss')} (RFC 9207)"

        token = self.form(meta["token_endpoint"], {
            "grant_type": "authorization_code", "code": query["code"][0], "redirect_uri": REDIRECT_URI,
            "client_id": client_id, "code_verifier": verifier, "resource": resource})
        assert token.status == 200, f"token: status {token.status} {token.body[:200]!r}"
        return token.json()["access_token"]

    def submit(self, action_url: str, page: Response, fields: dict[str, str]) -> Response:
        form = _FormReader()
        form.feed(page.body.decode())
        assert form.hidden, f"no form on the page: {page.body[:300]!r}"
        return self.form(urllib.parse.urljoin(action_url, form.action or action_url), {**form.hidden, **fields})

    def sse_stream(self, token: str) -> str:
        """Legacy SSE: the endpoint event, then the answer to a POST, both while the stream stays open."""
        conn, path = self.connect(self.base + "/sse")
        conn.timeout = 5.0  # a buffering proxy would hold the events back past this
        started = time.monotonic()
        try:
            conn.request("GET", path, headers={"Accept": "text/event-stream", "Authorization": f"Bearer {token}"})
            resp = conn.getresponse()
            assert resp.status == 200, f"status {resp.status}"
            assert resp.getheader("Content-Type", "").startswith("text/event-stream"), resp.getheader("Content-Type")
            event, data = _next_event(resp)
            first = time.monotonic() - started
            assert event == "endpoint", f"first event {event!r}"
            post_url = urllib.parse.urljoin(self.base + "/sse", data)
            posted = self.request("POST", post_url, headers={
                "Content-Type": "application/json", "Authorization": f"Bearer {token}"},
                body=json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                    "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                    "clientInfo": {"name": "mcp-probe", "version": "1"}}}).encode())
            assert posted.status in (200, 202), f"POST {post_url}: status {posted.status}"
            sent = time.monotonic()
            event, data = _next_event(resp)
            second = time.monotonic() - sent
            assert event == "message" and json.loads(data)["id"] == 1, f"second event {event!r} {data[:100]!r}"
            assert not resp.isclosed(), "stream closed"
        finally:
            conn.close()
        return f"endpoint event after {first * 1000:.0f} ms, initialize result {second * 1000:.0f} ms after the POST"

    def streamable_tools(self, token: str) -> str:
        headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream",
                   "Authorization": f"Bearer {token}"}
        init = self.request("POST", self.base + "/chatgpt/mcp", headers=headers, body=json.dumps({
            "jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                "protocolVersion": PROTOCOL_VERSION, "capabilities": {},
                "clientInfo": {"name": "mcp-probe", "version": "1"}}}).encode())
        assert init.status == 200, f"initialize: status {init.status} {init.body[:200]!r}"
        session = init.header("Mcp-Session-Id")
        if session:
            headers["Mcp-Session-Id"] = session
        headers["MCP-Protocol-Version"] = PROTOCOL_VERSION
        self.request("POST", self.base + "/chatgpt/mcp", headers=headers, body=json.dumps(
            {"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())
        listed = self.request("POST", self.base + "/chatgpt/mcp", headers=headers, body=json.dumps(
            {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}).encode())
        assert listed.status == 200, f"tools/list: status {listed.status}"
        names = sorted(tool["name"] for tool in _jsonrpc_result(listed)["tools"])
        assert {"search", "fetch"} <= set(names), f"tools {names}"
        return f"tools {names}"


class _FormReader(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.hidden: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = {k: v or "" for k, v in attrs}
        if tag == "form" and not self.hidden:
            self.action = attr.get("action", "")
        if tag == "input" and attr.get("type") == "hidden" and attr.get("name") not in self.hidden:
            self.hidden[attr["name"]] = attr.get("value", "")


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()


def _metadata_url(issuer: str) -> str:
    parts = urllib.parse.urlsplit(issuer)
    return f"{parts.scheme}://{parts.netloc}/.well-known/oauth-authorization-server{parts.path.rstrip('/')}"


def _next_event(resp: http.client.HTTPResponse) -> tuple[str, str]:
    event, data = "message", []
    while True:
        line = resp.readline().decode()
        if not line:
            raise AssertionError("stream ended")
        line = line.rstrip("\r\n")
        if not line:
            if data:
                return event, "\n".join(data)
            continue
        if line.startswith("event:"):
            event = line[6:].strip()
        elif line.startswith("data:"):
            data.append(line[5:].lstrip())


def _jsonrpc_result(resp: Response) -> dict[str, Any]:
    text = resp.body.decode()
    if resp.header("Content-Type").startswith("text/event-stream"):
        text = next(line[5:].strip() for line in text.splitlines() if line.startswith("data:"))
    message = json.loads(text)
    assert "result" in message, f"error {message.get('error')}"
    return message["result"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", required=True, help="public https base URL")
    parser.add_argument("--http-base", required=True, help="the same host over plain http")
    parser.add_argument("--cafile", required=True, help="CA that signed the served certificate")
    parser.add_argument("--resolve", action="append", default=[], help="NAME=ADDRESS, like curl --resolve")
    parser.add_argument("--username", required=True)
    parser.add_argument("--no-token-checks", action="store_true", help="only the checks that need no sign-in")
    args = parser.parse_args(argv)
    password = sys.stdin.readline().rstrip("\n")

    overrides = dict(item.split("=", 1) for item in args.resolve)
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host: Any, *rest: Any, **kwargs: Any) -> Any:
        return real_getaddrinfo(overrides.get(host, host), *rest, **kwargs)

    socket.getaddrinfo = getaddrinfo  # type: ignore[assignment]

    context = ssl.create_default_context(cafile=args.cafile)
    probe = Probe(base=args.base.rstrip("/"), http_base=args.http_base.rstrip("/"), context=context,
                  cafile=args.cafile)
    probe.check("health over TLS", lambda: probe.health("/health"))
    probe.check("/chatgpt/health over TLS", lambda: probe.health("/chatgpt/health"))
    probe.check("HTTP redirects to HTTPS", probe.redirect)
    probe.check("security headers", probe.security_headers)
    probe.check("discovery at the root", lambda: probe.discovery(""))
    probe.check("discovery under /chatgpt", lambda: probe.discovery("/chatgpt"))
    probe.check("HEAD /chatgpt/sse", probe.head_sse)
    probe.check("TLS below 1.2 refused", probe.old_tls_refused)
    probe.check("unknown host name refused", probe.unknown_host_refused)
    if not args.no_token_checks:
        sse_token = probe.check("connector sign-in for /sse",
                                lambda: probe.token_for("/sse", args.username, password), secret=True)
        if sse_token:
            probe.check("SSE events arrive unbuffered", lambda: probe.sse_stream(sse_token))
        chatgpt_token = probe.check("connector sign-in for /chatgpt/mcp",
                                    lambda: probe.token_for("/chatgpt/mcp", args.username, password), secret=True)
        if chatgpt_token:
            probe.check("Streamable HTTP tools/list on /chatgpt/mcp", lambda: probe.streamable_tools(chatgpt_token))
    if probe.failures:
        print(f"{len(probe.failures)} check(s) failed: {', '.join(probe.failures)}")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
