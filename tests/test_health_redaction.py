"""/health never tells an anonymous caller where the database is or how it failed.

The real app on a loopback port serves PostgreSQL through psqlODBC, pointed at a closed port on
127.0.0.2 (so the database host differs from the service's own 127.0.0.1): the driver's connect error
names that host and port. Without credentials /health shows status, dialect, database name and pool
counts only; with the METRICS_TOKEN bearer or a valid access token it shows `last_error` too.
"""

from __future__ import annotations

import asyncio
import json
import socket
from typing import Any

import aiohttp
import pytest

DB_HOST = "127.0.0.2"
DB_USER = "health_probe_user"
DB_NAME = "salesdb"
METRICS_TOKEN = "metrics-token-for-health-test-0123456789"


def _closed_port() -> int:
    with socket.socket() as probe:  # bound then closed: nothing listens there afterwards
        probe.bind((DB_HOST, 0))
        return probe.getsockname()[1]


@pytest.fixture
async def down(start_live_server: Any, make_settings: Any) -> Any:
    port = _closed_port()
    settings = make_settings(
        db_backend="postgres",
        pg_host=DB_HOST,
        pg_port=port,
        pg_user=DB_USER,
        pg_password="not-the-password",
        pg_database=DB_NAME,
        metrics_token=METRICS_TOKEN,
        db_connect_timeout_seconds=2,
    )
    server = await start_live_server(settings, signed_in_as=None)
    server.settings, server.db_port = settings, port
    async with aiohttp.ClientSession() as http:
        for _ in range(100):  # until the pool has tried (and failed) to connect
            async with http.get(server.url + "/health", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as r:
                if (await r.json())["database"].get("last_error"):
                    break
            await asyncio.sleep(0.05)
    return server


def _leaks(text: str, port: int) -> list[str]:
    lowered = text.lower()
    found = [
        word
        for word in (DB_HOST, DB_USER, "not-the-password", "refused", "could not connect", "08001", "psqlodbc", "odbc")
        if word in lowered
    ]
    return found + ([str(port)] if str(port) in text else [])


async def test_anonymous_health_shows_no_host_port_user_or_driver_text(down: Any) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(down.url + "/health") as resp:
            assert resp.status == 200
            text = await resp.text()
        async with http.get(down.url + "/health", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}) as resp:
            detailed = await resp.json()
    body = json.loads(text)
    assert _leaks(text, down.db_port) == [], text
    assert body["status"] == "degraded" and "last_error" not in body["database"]
    assert body["database"]["status"] == "degraded" and body["database"]["dialect"] == "postgres"
    assert body["database"]["name"] == DB_NAME
    pool = body["database"]["pool"]  # a worker may be mid-attempt (in_use 1): only the shape is fixed
    assert set(pool) == {"size", "in_use", "idle", "waiting", "healthy"} and (pool["size"], pool["healthy"]) == (2, 0)
    assert body["tools"] and body["protocolVersions"] and body["version"]
    # The metrics token sees what went wrong, host and port included.
    assert str(down.db_port) in detailed["database"]["last_error"], detailed


async def test_signed_in_caller_sees_details_and_a_bad_token_does_not(down: Any, mint_access_token: Any) -> None:
    token = mint_access_token(down.settings, down.url, username="operator", role="reader", scope="mcp:read")
    async with aiohttp.ClientSession() as http:
        async with http.get(down.url + "/health", headers={"Authorization": f"Bearer {token}"}) as resp:
            signed_in = await resp.json()
        for header in (f"Bearer {token}x", "Bearer not-a-token", f"Basic {METRICS_TOKEN}", "Bearer "):
            async with http.get(down.url + "/health", headers={"Authorization": header}) as resp:
                assert resp.status == 200
                text = await resp.text()
                assert _leaks(text, down.db_port) == [] and "last_error" not in text, (header, text)
        # A token for the other surface is not a sign-in at this one.
        chatgpt_token = mint_access_token(
            down.settings,
            down.url,
            username="operator",
            role="reader",
            scope="mcp:read",
            resource=down.url + "/chatgpt/mcp",
        )
        async with http.get(down.url + "/health", headers={"Authorization": f"Bearer {chatgpt_token}"}) as resp:
            assert "last_error" not in await resp.text()
        async with http.get(down.url + "/chatgpt/health", headers={"Authorization": f"Bearer {chatgpt_token}"}) as resp:
            assert (await resp.json())["database"]["last_error"]
    assert str(down.db_port) in signed_in["database"]["last_error"]


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("GET", "/chatgpt/health", None),
        (
            "POST",
            "/mcp",
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "execute_sql", "arguments": {"query": "SELECT 1"}},
            },
        ),
        ("POST", "/mcp", b"{not json"),
        ("GET", "/sse", None),
        ("POST", "/messages?session_id=nope", {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}),
        ("GET", "/metrics", None),
        ("GET", "/no/such/page", None),
        ("GET", "/.well-known/oauth-protected-resource/mcp", None),
        ("GET", "/chatgpt/records/table:public.customers", None),
    ],
)
async def test_no_unauthenticated_answer_names_the_database_server(
    down: Any, method: str, path: str, body: Any
) -> None:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    async with (
        aiohttp.ClientSession() as http,
        http.request(method, down.url + path, data=data, headers=headers) as resp,
    ):
        assert resp.status < 500
        text = await resp.text()
        shown = text + json.dumps(dict(resp.headers))
    assert [leak for leak in _leaks(shown, down.db_port) if leak != str(down.db_port)] == [], shown
    assert f":{down.db_port}" not in shown and f"port {down.db_port}" not in shown


@pytest.mark.parametrize(
    ("values", "name"),
    [
        ({"db_backend": "sqlite", "sqlite_path": "/srv/secret/dir/shop.db"}, "shop.db"),
        ({"db_backend": "sqlite", "sqlite_path": "file:/srv/x/shop.db?mode=ro"}, "shop.db"),
        ({"db_backend": "postgres", "pg_database": "sales"}, "sales"),
        ({"db_backend": "mssql", "mssql_database": "Orders", "mssql_host": "sql.internal"}, "Orders"),
        ({"db_backend": "mssql", "mssql_database": "", "mssql_host": "sql.internal"}, None),
        (
            {
                "db_backend": "mssql",
                "odbc_connection_string": (
                    "Driver={ODBC Driver 18};Server=tcp:sql.internal,1433;UID=sa;PWD=hunter2;Database={Ledger}"
                ),
            },
            "Ledger",
        ),
        (
            {"db_backend": "sqlite", "odbc_connection_string": "Driver={SQLite3};Database=/var/lib/app/data.db"},
            "data.db",
        ),
    ],
)
def test_database_name_is_only_a_name(values: dict[str, Any], name: str | None) -> None:
    from types import SimpleNamespace

    from app.health import database_name

    settings = SimpleNamespace(
        **{"odbc_connection_string": "", "sqlite_path": "", "pg_database": "", "mssql_database": "", **values}
    )
    assert database_name(settings) == name
