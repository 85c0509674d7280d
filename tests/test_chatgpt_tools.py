"""ChatGPT's search/fetch against the real Database on the demo file: exact shapes, stable ids, cache."""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from app.db.database import Database
from app.db.types import TableNotFound
from app.mcp.tools import ToolContext, ToolError
from app.obs.metrics import Metrics
from app.settings import Settings
from app.tools.chatgpt import ChatGptTools, build_chatgpt_tools

BASE = "https://db.example.com/env"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Harness:
    """The two tools as the MCP layer calls them (schemas checked both ways)."""

    def __init__(self, database: Database, settings: Settings, metrics: Metrics, clock: Clock) -> None:
        self.tools = ChatGptTools(database, settings, metrics, clock=clock)
        self.definitions = {t.name: t for t in build_chatgpt_tools(self.tools)}
        self.metrics, self.clock = metrics, clock

    async def _call(self, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
        definition = self.definitions[name]
        jsonschema.validate(arguments, definition.input_schema)
        handler = getattr(self.tools, name)
        result = await handler(arguments, ToolContext(base_url=BASE))
        jsonschema.validate(result, definition.output_schema)
        json.dumps(result)  # the text content is this object's JSON
        return result

    async def search(self, query: str) -> list[dict[str, str]]:
        out = await self._call("search", {"query": query})
        assert list(out) in (["results"], ["results", "truncated"])  # truncated only when more results exist
        assert out.get("truncated", True) is True
        for item in out["results"]:
            assert list(item) == ["id", "title", "url"] and all(isinstance(v, str) and v for v in item.values())
            assert item["url"] == f"{BASE}/chatgpt/records/{item['id']}"  # ids are URL-safe as they are
        return out["results"]

    async def fetch(self, record_id: str) -> dict[str, Any]:
        out = await self._call("fetch", {"id": record_id})
        assert list(out) == ["id", "title", "text", "url", "metadata"]
        assert all(isinstance(out[k], str) for k in ("id", "title", "text", "url"))
        assert isinstance(out["metadata"], dict)
        assert out["url"] == f"{BASE}/chatgpt/records/{out['id']}"
        return out

    def counts(self) -> tuple[float, float]:
        registry = self.metrics.registry
        return (
            registry.get_sample_value("mssql_mcp_fetch_cache_hits_total") or 0.0,
            registry.get_sample_value("mssql_mcp_fetch_cache_misses_total") or 0.0,
        )


@pytest.fixture
async def make_harness(demo_settings: Callable[..., Settings]) -> AsyncIterator[Callable[..., Any]]:
    opened: list[Database] = []

    async def make(**overrides: Any) -> Harness:
        settings = demo_settings(**overrides)
        metrics = Metrics()
        database = Database(settings, metrics)
        await database.start()
        opened.append(database)
        return Harness(database, settings, metrics, Clock())

    yield make
    for database in opened:
        await database.close()


@pytest.fixture
async def chat(make_harness: Callable[..., Any]) -> Harness:
    return await make_harness()


def _table_name(record_id: str) -> str:
    return record_id.split(":")[1].split(".")[-1]


# --- search ---------------------------------------------------------------------------------
async def test_search_list_tables(chat: Harness) -> None:
    results = await chat.search("list tables")
    names = {_table_name(r["id"]) for r in results}
    assert {"customers", "orders", "order_lines", "products", "order_totals"} <= names
    assert all(r["id"].startswith("table:") for r in results)
    orders = next(r for r in results if _table_name(r["id"]) == "orders")
    assert orders["title"].startswith("Table ") and "orders" in orders["title"]
    view = next(r for r in results if _table_name(r["id"]) == "order_totals")
    assert view["title"].startswith("View ")
    assert await chat.search("") == results  # an empty query lists tables too


async def test_search_respects_max_results(make_harness: Callable[..., Any]) -> None:
    chat = await make_harness(max_search_results=3)
    assert len(await chat.search("list tables")) == 3
    assert len(await chat.search("SELECT * FROM customers")) == 3


async def test_search_describe(chat: Harness) -> None:
    results = await chat.search("describe CUSTOMERS")
    assert len(results) == 1 and re.fullmatch(r"table:(\w+\.)?customers", results[0]["id"])
    with pytest.raises(TableNotFound, match="customers"):
        await chat.search("describe custmers")  # unknown name: an error naming the close match


async def test_search_sample_gives_row_ids(chat: Harness) -> None:
    results = await chat.search("sample orders limit 3")
    assert results[0]["id"].startswith("sample:") and results[0]["id"].endswith(":3")
    rows = results[1:]
    assert len(rows) == 3 and all(re.fullmatch(r"row:(\w+\.)?orders:\d+", r["id"]) for r in rows)
    no_key = await chat.search("sample price_history limit 4")
    assert len(no_key) == 1 and no_key[0]["id"].startswith("sample:")  # no primary key: no row ids
    document = await chat.fetch(no_key[0]["id"])
    assert document["metadata"]["row_count"] == 4 and "old_price" in document["text"]


async def test_search_sql_single_table_gives_query_and_row_ids(chat: Harness) -> None:
    sql = "SELECT customer_id, first_name, last_name, email FROM customers WHERE country = 'DE' ORDER BY customer_id"
    results = await chat.search(sql)
    assert results[0]["id"].startswith("query:~") and "rows" in results[0]["title"]
    with sqlite3.connect(f"file:{_path(chat)}?mode=ro", uri=True) as conn:
        german = [
            r[0] for r in conn.execute("SELECT customer_id FROM customers WHERE country = 'DE' ORDER BY customer_id")
        ]
    rows = [r for r in results[1:] if r["id"].startswith("row:")]
    assert [int(r["id"].rsplit(":", 1)[1]) for r in rows] == german[: len(rows)]
    # the query result, then its rows; when they do not all fit, the last place says so
    assert len(rows) == (len(german) if len(german) <= 19 else 18)
    assert results[-1]["id"].startswith("more:") == (len(german) > 19)
    # the title names the row by its key and a human label
    assert re.search(r"customer_id=\d+: \S+ \S+", rows[0]["title"])

    whole = await chat.fetch(results[0]["id"])
    assert whole["metadata"]["kind"] == "query" and whole["metadata"]["row_count"] == len(german)
    assert whole["metadata"]["sql"] == sql and "email" in whole["text"]

    row = await chat.fetch(rows[0]["id"])
    assert row["metadata"]["kind"] == "row" and row["metadata"]["primary_key"] == {"customer_id": german[0]}
    assert "signup_date:" in row["text"]  # fetch re-reads the full row, not just the selected columns


async def test_search_sql_derived_results_are_one_query_result(chat: Harness) -> None:
    results = await chat.search(
        "SELECT c.country, COUNT(*) AS orders FROM orders o "
        "JOIN customers c ON c.customer_id = o.customer_id GROUP BY c.country"
    )
    assert len(results) == 1 and results[0]["id"].startswith("query:~")
    document = await chat.fetch(results[0]["id"])
    assert document["text"].count("\n") > document["metadata"]["row_count"]
    assert document["metadata"]["columns"] == ["country", "orders"]


async def test_search_never_writes(make_harness: Callable[..., Any], writable_demo_db: Path) -> None:
    chat = await make_harness(sqlite_path=str(writable_demo_db), read_only_mode=False)
    for statement in ("DELETE FROM orders", "WITH doomed AS (SELECT 1) DELETE FROM orders", "DROP TABLE customers"):
        with pytest.raises(ToolError) as info:
            await chat.search(statement)
        assert info.value.outcome == "refused" and "read" in str(info.value)
    with sqlite3.connect(writable_demo_db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0] == 1500


async def test_search_keywords_rank_tables_and_columns(chat: Harness) -> None:
    results = await chat.search("customer email")
    assert _table_name(results[0]["id"]) == "customers"
    assert "email" in results[0]["title"]
    price = [_table_name(r["id"]) for r in await chat.search("price")]
    assert price[0] == "price_history" and "products" in price and "order_lines" in price
    assert await chat.search("zebra giraffe") == []


# --- fetch ----------------------------------------------------------------------------------
async def test_fetch_table(chat: Harness) -> None:
    [result] = await chat.search("describe order_lines")
    document = await chat.fetch(result["id"])
    assert document["id"] == result["id"] and document["title"] == result["title"]
    assert document["metadata"]["primary_key"] == ["order_id", "line_number"]
    assert "Foreign keys:" in document["text"] and "references" in document["text"]
    assert "First 5 rows:" in document["text"]


async def test_fetch_row_links_related_rows(chat: Harness) -> None:
    results = await chat.search("sample order_lines limit 1")
    line = await chat.fetch(results[1]["id"])
    assert re.fullmatch(r"row:(\w+\.)?order_lines:\d+,1", line["id"])
    related = line["metadata"]["related"]
    assert {_table_name(r) for r in related} == {"orders", "products"}
    order = await chat.fetch(next(r for r in related if _table_name(r) == "orders"))
    assert order["metadata"]["kind"] == "row" and "customer_id:" in order["text"]
    assert "(see row:" in order["text"]  # the order points at its customer


async def test_ids_are_stable_and_refetchable_after_the_cache_is_cleared(chat: Harness) -> None:
    first = await chat.search("SELECT * FROM products WHERE category_id = 8")
    again = await chat.search("SELECT * FROM products WHERE category_id = 8")
    assert first == again
    row_id = first[1]["id"]
    cached = await chat.fetch(row_id)
    hits, misses = chat.counts()
    assert hits >= 1

    chat.tools.cache.clear()
    refetched = await chat.fetch(row_id)
    assert refetched == cached  # re-queried by primary key, same document
    assert chat.counts()[1] == misses + 1

    table = await chat.fetch("table:" + row_id.split(":")[1])
    chat.tools.cache.clear()
    chat.tools.database.forget_catalog()
    assert await chat.fetch(table["id"]) == table


async def test_expired_entries_are_requeried_and_query_results_expire(chat: Harness) -> None:
    results = await chat.search("SELECT COUNT(*) AS n FROM orders")
    query_id = results[0]["id"]
    assert "1500" in (await chat.fetch(query_id))["text"]
    sample = (await chat.search("sample customers limit 2"))[0]["id"]

    for index in range(600):  # more row documents than the fetch cache holds do not push the result out
        chat.tools.cache.put(f"row:x:{index}", {"id": f"row:x:{index}"})
    chat.clock.now += chat.tools.settings.cache_ttl_seconds - 1
    assert "1500" in (await chat.fetch(query_id))["text"]  # re-fetchable for CACHE_TTL_SECONDS
    chat.clock.now += 2
    with pytest.raises(ToolError) as info:
        await chat.fetch(query_id)
    assert "no longer cached" in str(info.value) and "Search again with the same SQL" in str(info.value)
    assert (await chat.fetch(sample))["metadata"]["row_count"] == 2  # sample ids are re-queried


async def test_fetch_counts_cache_hits_and_misses(chat: Harness) -> None:
    [table] = await chat.search("describe products")
    await chat.fetch(table["id"])
    await chat.fetch(table["id"])
    assert chat.counts() == (1.0, 1.0)


async def test_fetch_with_caching_disabled(make_harness: Callable[..., Any]) -> None:
    chat = await make_harness(cache_ttl_seconds=0)
    results = await chat.search("sample customers limit 1")
    assert (await chat.fetch(results[1]["id"]))["metadata"]["kind"] == "row"
    assert chat.counts()[0] == 0


@pytest.mark.parametrize(
    ("record_id", "outcome", "message"),
    [
        ("nonsense", "invalid", "is not a valid id"),
        ("row:main.customers:abc", "invalid", "is not a valid id"),
        ("query:~0123456789abcdef0123", "error", "no longer cached"),
    ],
)
async def test_fetch_bad_ids(chat: Harness, record_id: str, outcome: str, message: str) -> None:
    with pytest.raises(ToolError) as info:
        await chat.fetch(record_id)
    assert info.value.outcome == outcome and message in str(info.value)


async def test_fetch_ids_of_missing_records(chat: Harness) -> None:
    prefix = (await chat.search("describe customers"))[0]["id"].split(":", 1)[1]
    with pytest.raises(ToolError, match=r"No row of .*customers.* customer_id=999999"):
        await chat.fetch(f"row:{prefix}:999999")
    with pytest.raises(ToolError, match="need 1 key value"):
        await chat.fetch(f"row:{prefix}:1,2")
    with pytest.raises(ToolError, match="custom"):
        await chat.fetch("table:custmers")
    with pytest.raises(ToolError, match="no primary key"):
        await chat.fetch("row:price_history:1")


def _path(chat: Harness) -> str:
    return chat.tools.settings.sqlite_path


async def test_keyword_search_reads_columns_with_one_catalog_query(
    chat: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    described: list[Any] = []
    original = chat.tools.database.describe_table

    async def counting(name: Any) -> Any:
        described.append(name)
        return await original(name)

    monkeypatch.setattr(chat.tools.database, "describe_table", counting)
    full = await chat.search("customer email")
    assert "email" in full[0]["title"] and "suppliers" in {_table_name(r["id"]) for r in full}
    assert described == []  # no per-table catalog queries (issue 15 item 10)


async def test_a_capped_column_catalog_is_completed_by_describing_the_rest(make_harness: Callable[..., Any]) -> None:
    chat = await make_harness(max_rows=10)  # the one catalog query is cut after 10 columns
    tables = await chat.tools._all_columns()
    by_name = {t.name: t for t in tables}
    assert {"customers", "orders", "order_lines", "products"} <= set(by_name)
    assert by_name["customers"].primary_key == ["customer_id"]
    assert "email" in [c for c, _ in by_name["customers"].columns]
    rows = [r for r in await chat.search("Tokyo") if r["id"].startswith("row:customers:")]
    assert rows  # content search still reaches every table
