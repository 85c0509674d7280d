"""Prompts and their argument completions through the official MCP SDK client, on both surfaces and every
protocol version that has them (prompts since 2024-11-05; the 2026-07-28 envelope included)."""

from __future__ import annotations

from typing import Any

import mcp.client.session as sdk_session
import pytest
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp.types import PromptReference

PREFIXES = ["", "/chatgpt"]
MODES = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28"]
PROMPTS = ["explore_database", "write_query", "explain_table", "review_query"]


def _client(url: str, mode: str, monkeypatch: pytest.MonkeyPatch) -> Client:
    if mode == "2026-07-28":
        return Client(url, mode="2026-07-28")
    monkeypatch.setattr(sdk_session, "LATEST_HANDSHAKE_VERSION", mode)
    return Client(url, mode="legacy")


def _embedded_uris(result: Any) -> list[str]:
    return [str(m.content.resource.uri) for m in result.messages if m.content.type == "resource"]


@pytest.mark.parametrize("prefix", PREFIXES)
@pytest.mark.parametrize("mode", MODES)
async def test_list_get_and_complete(live_server: Any, monkeypatch: pytest.MonkeyPatch, mode: str, prefix: str) -> None:
    async with _client(live_server.url + prefix + "/mcp", mode, monkeypatch) as client:
        listed = (await client.list_prompts()).prompts
        assert [prompt.name for prompt in listed] == PROMPTS
        explain = listed[2]
        assert explain.title == "Explain a table" and explain.arguments is not None
        assert [(a.name, a.required) for a in explain.arguments] == [("table", True), ("column", False)]

        table = await client.get_prompt("explain_table", {"table": "Customers"})  # any case, like the tools
        assert _embedded_uris(table) == ["mssql://tables/main/customers"]
        assert "# Table customers" in table.messages[0].content.resource.text
        assert "one row represents" in table.messages[-1].content.text

        query = await client.get_prompt(
            "write_query", {"question": "Which city has the most customers?", "tables": "customers, orders"}
        )
        assert _embedded_uris(query) == ["mssql://tables/main/customers", "mssql://tables/main/orders"]
        assert "Which city has the most customers?" in query.messages[-1].content.text
        assert "LIMIT n" in query.messages[-1].content.text  # the dialect's row-limit syntax (SQLite)
        # Each surface's prompts name the tools that surface has.
        run_with = "execute_sql" if prefix == "" else "search (a read query is a search query)"
        assert f"Run it with {run_with}" in query.messages[-1].content.text

        review = await client.get_prompt(
            "review_query",
            {
                "query": "WITH big AS (SELECT * FROM orders) SELECT * FROM big JOIN customers c "
                "ON c.customer_id = big.customer_id WHERE lower(c.email) LIKE '%x'"
            },
        )
        assert sorted(_embedded_uris(review)) == ["mssql://tables/main/customers", "mssql://tables/main/orders"]
        assert "ix_orders_customer" in str(review.messages)  # the indexes to judge the query by

        explore = await client.get_prompt("explore_database", {})
        assert _embedded_uris(explore) == ["mssql://overview"]

        ref = PromptReference(type="ref/prompt", name="explain_table")
        tables = await client.complete(ref, {"name": "table", "value": "ORD"})
        assert tables.completion.values == ["order_lines", "order_totals", "orders"]
        columns = await client.complete(ref, {"name": "column", "value": "c"}, {"table": "customers"})
        assert columns.completion.values == ["city", "country", "customer_id"]
        no_table = await client.complete(ref, {"name": "column", "value": ""}, {"table": "nowhere"})
        assert no_table.completion.values == []
        focused = await client.get_prompt("explain_table", {"table": "orders", "column": "status"})
        assert "column status" in focused.messages[-1].content.text
        many = await client.complete(
            PromptReference(type="ref/prompt", name="write_query"), {"name": "tables", "value": "customers, o"}
        )
        assert many.completion.values == ["customers, order_lines", "customers, order_totals", "customers, orders"]
        nothing = await client.complete(
            PromptReference(type="ref/prompt", name="review_query"), {"name": "query", "value": "SEL"}
        )
        assert nothing.completion.values == []


@pytest.mark.parametrize("mode", ["2025-11-25", "2026-07-28"])
async def test_bad_prompt_requests_are_clear_invalid_params(
    live_server: Any, monkeypatch: pytest.MonkeyPatch, mode: str
) -> None:
    async with _client(live_server.url + "/mcp", mode, monkeypatch) as client:
        cases = [
            ("explain_table", {}, "prompt explain_table needs table"),
            ("explain_table", {"table": "custmers"}, "Did you mean: customers"),
            ("review_query", {"query": "SELECT FROM WHERE ("}, "could not be parsed"),
            ("no_such_prompt", {}, "Unknown prompt: 'no_such_prompt'. Available prompts: explore_database"),
        ]
        for name, arguments, text in cases:
            with pytest.raises(MCPError) as raised:
                await client.get_prompt(name, arguments)
            assert raised.value.code == -32602 and text in raised.value.error.message, raised.value.error.message


async def test_completions_are_capped_at_100_with_has_more(
    writable_demo_db: Any, make_settings: Any, start_live_server: Any
) -> None:
    import sqlite3

    with sqlite3.connect(writable_demo_db) as connection:
        for n in range(120):
            connection.execute(f"CREATE TABLE t_{n:03d} (id INTEGER PRIMARY KEY)")
    server = await start_live_server(make_settings(sqlite_path=str(writable_demo_db)))
    async with Client(server.url + "/mcp") as client:
        result = await client.complete(
            PromptReference(type="ref/prompt", name="explain_table"), {"name": "table", "value": "T_"}
        )
    assert len(result.completion.values) == 100 and result.completion.values[0] == "t_000"
    assert result.completion.total == 120 and result.completion.has_more is True
