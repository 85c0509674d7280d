#!/usr/bin/env python3
"""The official `mcp` SDK client through the scale_out scenario's load balancer.

Run with the repository's venv (it has the `mcp` package), on the Molecule controller:

    sdk_client.py --url http://127.0.0.1:18038/mcp --username scaleuser --calls 12 < password

The SDK's OAuthClientProvider does the whole sign-in: 401 -> protected-resource metadata -> dynamic
registration -> authorize (a scripted browser signs in and consents on the server's pages) -> PKCE token
exchange. Then one MCP session: initialize, tools/list, and `--calls` tools/call requests, every one of
them through the round-robin balancer, so consecutive requests of the session land on different apps.
Prints one JSON line with what it did; exit status 1 (and the error) when anything failed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from html.parser import HTMLParser
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2
from mcp import Client
from mcp.client.auth import OAuthClientProvider
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.auth import AuthorizationCodeResult, OAuthClientMetadata

REDIRECT_URI = "http://127.0.0.1:33419/callback"  # loopback: allowed by the server, never contacted


class _HiddenFields(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if tag == "input" and found.get("type") == "hidden" and found.get("name"):
            self.fields[str(found["name"])] = found.get("value") or ""


def hidden_fields(page: str) -> dict[str, str]:
    """The hidden inputs of a form page (request_id, csrf_token, ...)."""
    parser = _HiddenFields()
    parser.feed(page)
    return parser.fields


class Storage:
    """The SDK's TokenStorage protocol, in memory."""

    def __init__(self) -> None:
        self.tokens: Any = None
        self.client_info: Any = None

    async def get_tokens(self) -> Any:
        return self.tokens

    async def set_tokens(self, tokens: Any) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> Any:
        return self.client_info

    async def set_client_info(self, client_info: Any) -> None:
        self.client_info = client_info


class Browser:
    """Plays the user on the sign-in and consent pages (each request may reach another app)."""

    def __init__(self, username: str, password: str) -> None:
        self.username, self.password = username, password
        self.location: str | None = None

    async def authorize(self, url: str) -> None:
        form_url = urlsplit(url)._replace(query="", fragment="").geturl()
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
            async with session.get(url, allow_redirects=False) as resp:
                page = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"authorize page: HTTP {resp.status}: {page[:300]}")
            fields = hidden_fields(page)
            login = {**fields, "action": "login", "username": self.username, "password": self.password}
            async with session.post(form_url, data=login, allow_redirects=False) as resp:
                page = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"sign-in: HTTP {resp.status}: {page[:300]}")
            consent = {**hidden_fields(page), "action": "consent", "decision": "allow"}
            async with session.post(form_url, data=consent, allow_redirects=False) as resp:
                if resp.status != 303:
                    raise RuntimeError(f"consent: HTTP {resp.status}: {(await resp.text())[:300]}")
                self.location = resp.headers["Location"]

    async def callback(self) -> AuthorizationCodeResult:
        if self.location is None:
            raise RuntimeError("no authorization response")
        params = {k: v[0] for k, v in parse_qs(urlsplit(self.location).query).items()}
        if "code" not in params:
            raise RuntimeError(f"authorization refused: {params}")
        return AuthorizationCodeResult(code=params["code"], state=params.get("state"), iss=params.get("iss"))


async def run(url: str, username: str, password: str, calls: int) -> dict[str, Any]:
    browser, storage = Browser(username, password), Storage()
    metadata = OAuthClientMetadata(
        redirect_uris=[REDIRECT_URI],  # type: ignore[list-item]
        client_name="scale_out Molecule verify",
        grant_types=["authorization_code", "refresh_token"],
    )
    provider = OAuthClientProvider(url, metadata, storage, browser.authorize, browser.callback)
    started = time.monotonic()
    report: dict[str, Any] = {"tool_calls": 0}
    async with (
        httpx2.AsyncClient(auth=provider, timeout=30) as http,
        Client(streamable_http_client(url, http_client=http)) as client,
    ):
        report["signed_in"] = storage.tokens is not None
        report["scope"] = getattr(storage.tokens, "scope", None)
        tools = sorted(t.name for t in (await client.list_tools()).tools)
        report["tools"] = tools
        table = None
        for n in range(calls):
            step = n % 4
            if step == 0:
                result = await client.call_tool("list_tables", {})
                names = [t.get("name") for t in (result.structured_content or {}).get("tables", [])]
                table = table or next((name for name in names if name), None)
            elif step == 1 and table:
                result = await client.call_tool("describe_table", {"table_name": table})
            elif step == 2 and table:
                result = await client.call_tool("get_table_sample", {"table_name": table, "limit": 3})
            else:
                result = await client.call_tool("execute_sql", {"query": f"SELECT {n} AS n"})
            if result.is_error:
                raise RuntimeError(f"tools/call {n} failed: {result.content}")
            report["tool_calls"] += 1
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--username", required=True)
    parser.add_argument("--calls", type=int, default=12)
    args = parser.parse_args()
    password = sys.stdin.readline().rstrip("\n")
    try:
        report = asyncio.run(run(args.url, args.username, password, args.calls))
    except BaseException as exc:  # one line for the playbook, whatever went wrong
        leaf = exc
        while isinstance(leaf, BaseExceptionGroup) and leaf.exceptions:
            leaf = leaf.exceptions[0]
        print(json.dumps({"error": f"{type(leaf).__name__}: {leaf}"}))
        return 1
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
