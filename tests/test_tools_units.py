"""Pure logic of the tool sets: ids, the cache, query intents, query shapes, fingerprints, instructions."""

from __future__ import annotations

import re

import jsonschema
import pytest

from app.obs.audit import fingerprint_sql as fingerprint
from app.settings import load_settings
from app.tools import build_instructions, chatgpt_tools, claude_tools
from app.tools.cache import TtlLruCache
from app.tools.chatgpt import ChatGptTools, record_url, select_shape
from app.tools.common import text_table
from app.tools.ids import InvalidId, RecordId, TableRef, parse_id, query_id, row_id, sample_id, table_id
from app.tools.intent import parse_intent, stem


def _settings(**overrides):
    base = {"db_backend": "sqlite", "sqlite_path": "/nonexistent/demo.db"}
    return load_settings(environ={}, env_file=None, **{**base, **overrides})


# --- ids ------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("record_id", "expected"),
    [
        (table_id("main", "customers"), RecordId("table", TableRef("main", "customers"))),
        (table_id(None, "customers"), RecordId("table", TableRef(None, "customers"))),
        (row_id("main", "customers", [42]), RecordId("row", TableRef("main", "customers"), key=(42,))),
        (row_id("dbo", "order_lines", [17, 2]), RecordId("row", TableRef("dbo", "order_lines"), key=(17, 2))),
        (
            row_id("dbo", "Order Details", ["ALFKI", 3]),
            RecordId("row", TableRef("dbo", "Order Details"), key=("ALFKI", 3)),
        ),
        (row_id("public", "users", ["a:b/c?d#e"]), RecordId("row", TableRef("public", "users"), key=("a:b/c?d#e",))),
        (row_id("x.y", "we:ird", [True]), RecordId("row", TableRef("x.y", "we:ird"), key=(True,))),
        (sample_id("main", "price_history", 10), RecordId("sample", TableRef("main", "price_history"), limit=10)),
    ],
)
def test_ids_round_trip(record_id: str, expected: RecordId) -> None:
    assert parse_id(record_id) == expected
    # Every id is usable in a URL path segment as is.
    assert re.fullmatch(r"[A-Za-z0-9_$:.,~\-]+", record_id), record_id


def test_ids_are_readable_for_plain_names() -> None:
    assert table_id("main", "customers") == "table:main.customers"
    assert row_id("main", "order_lines", [17, 2]) == "row:main.order_lines:17,2"
    assert row_id(None, "t", [-5]) == "row:t:-5"
    assert sample_id("dbo", "logs", 5) == "sample:dbo.logs:5"


def test_ids_are_stable() -> None:
    assert row_id("dbo", "Order Details", ["ALFKI", 3]) == row_id("dbo", "Order Details", ["ALFKI", 3])
    assert query_id("SELECT 1") == query_id("  SELECT   1 ;") != query_id("SELECT 2")
    assert re.fullmatch(r"query:~[0-9a-f]{20}", query_id("SELECT 1"))


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "customers",
        "table:",
        "row:main.customers",
        "row:main.customers:",
        "row:main.customers:1.5",
        "row:main.customers:~!!",
        "row:main.customers:~e30",
        "table:a.b.c",
        "table:~bm90IGpzb24",
        "query:abc",
        "query:~XYZ",
        "sample:main.t:0",
        "sample:main.t:ten",
        "file:/etc/passwd",
        "row::1",
        "x" * 3000,
    ],
)
def test_malformed_ids_get_a_helpful_error(bad: str) -> None:
    with pytest.raises(InvalidId) as info:
        parse_id(bad)
    assert "is not a valid id" in str(info.value)
    assert "table:dbo.customers" in str(info.value)  # tells the caller what ids look like
    assert len(str(info.value)) < 400  # a huge id is not echoed back in full


def test_record_url_is_absolute_and_escaped() -> None:
    assert (
        record_url("https://db.example.com/env", "row:main.customers:42")
        == "https://db.example.com/env/chatgpt/records/row:main.customers:42"
    )
    assert record_url("http://127.0.0.1:8008/", "table:~a b", "") == "http://127.0.0.1:8008/records/table:~a%20b"


# --- cache ----------------------------------------------------------------------------------
def test_cache_expires_and_evicts_least_recently_used() -> None:
    now = [1000.0]
    cache: TtlLruCache[int] = TtlLruCache(max_entries=2, ttl_seconds=10, clock=lambda: now[0])
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # a is now the most recently used
    cache.put("c", 3)
    assert cache.get("b") is None and cache.get("a") == 1 and cache.get("c") == 3
    now[0] += 10
    assert cache.get("a") is None and len(cache) == 1
    cache.clear()
    assert len(cache) == 0


def test_cache_with_zero_ttl_stores_nothing() -> None:
    cache: TtlLruCache[int] = TtlLruCache(max_entries=5, ttl_seconds=0)
    cache.put("a", 1)
    assert cache.get("a") is None and not cache.enabled


# --- intents --------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("query", "kind", "table", "limit"),
    [
        ("", "list", None, None),
        ("list tables", "list", None, None),
        ("Show me all tables?", "list", None, None),
        ("tables", "list", None, None),
        ("describe customers", "describe", "customers", None),
        ("DESCRIBE main.Customers", "describe", "main.Customers", None),
        ("describe [dbo].[Order Details]", "describe", "dbo.Order Details", None),
        ("columns of order_lines", "describe", "order_lines", None),
        ("sample orders", "sample", "orders", 10),
        ("sample orders limit 5", "sample", "orders", 5),
        ("sample 3 rows from orders", "sample", "orders", 3),
        ('preview "public"."my table" limit 2', "sample", "public.my table", 2),
    ],
)
def test_intent_commands(query: str, kind: str, table: str | None, limit: int | None) -> None:
    intent = parse_intent(query)
    assert (intent.kind, intent.table, intent.limit) == (kind, table, limit)


@pytest.mark.parametrize(
    "query",
    [
        "SELECT * FROM customers",
        "select count(*) from orders",
        "WITH t AS (SELECT 1 AS n) SELECT n FROM t",
        "with recursive t(n) as (select 1) select n from t",
        "VALUES (1), (2)",
        "(SELECT 1) UNION (SELECT 2)",
        "```sql\nSELECT 1\n```",
        "sql: select 1",
    ],
)
def test_intent_sql(query: str) -> None:
    intent = parse_intent(query)
    assert (
        intent.kind == "sql" and intent.sql and intent.sql.lower().lstrip("(").startswith(("select", "with", "values"))
    )


@pytest.mark.parametrize(
    "query",
    [
        "DELETE FROM orders",
        "drop table customers",
        "UPDATE orders SET status = 'paid'",
        "insert into t values (1)",
        "EXEC sp_who",
        "truncate table orders",
        "create view v as select 1",
        "GRANT SELECT ON t TO bob",
    ],
)
def test_intent_write_statements_are_recognised(query: str) -> None:
    assert parse_intent(query).kind == "write"


def test_intent_keywords_drop_stopwords() -> None:
    assert parse_intent("Which customers live in Berlin?").terms == ("customers", "live", "berlin")
    assert parse_intent("with discount over 10").kind == "keywords"  # 'with' alone is not a CTE
    assert parse_intent("order_lines product").terms == ("order_lines", "product")


def test_stem() -> None:
    assert [stem(w) for w in ("customers", "categories", "addresses", "status", "orders", "boxes")] == [
        "customer",
        "category",
        "address",
        "status",
        "order",
        "box",
    ]


# --- query shapes ---------------------------------------------------------------------------
def test_select_shape_single_table() -> None:
    shape = select_shape(
        "SELECT c.customer_id, email AS mail, upper(city) AS city FROM main.customers c "
        "WHERE country = 'DE' ORDER BY 1 LIMIT 5",
        "sqlite",
    )
    assert shape is not None
    assert (shape.schema, shape.name) == ("main", "customers")
    assert shape.source_of("CUSTOMER_ID") == "customer_id"
    assert shape.source_of("mail") == "email"
    assert shape.source_of("city") is None  # computed, even though it is named like a column
    assert shape.source_of("country") is None  # not selected


def test_select_shape_star_and_shadowing() -> None:
    shape = select_shape("SELECT TOP 5 *, 1 AS order_id FROM dbo.orders", "mssql")
    assert shape is not None and shape.star
    assert shape.source_of("customer_id") == "customer_id"
    assert shape.source_of("order_id") is None


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT c.name, o.order_id FROM customers c JOIN orders o ON o.customer_id = c.customer_id",
        "SELECT customer_id, COUNT(*) FROM orders GROUP BY customer_id",
        "SELECT DISTINCT country FROM customers",
        "SELECT max(order_id) FROM orders",
        "SELECT 1 UNION SELECT 2",
        "WITH t AS (SELECT * FROM orders) SELECT * FROM t",
        "SELECT * FROM (SELECT * FROM orders) x",
        "SELECT 1",
        "this is not sql",
    ],
)
def test_select_shape_derived_results(sql: str) -> None:
    assert select_shape(sql, "sqlite") is None


# --- fingerprints and text ------------------------------------------------------------------
def test_fingerprint_groups_queries_differing_in_literals() -> None:
    a = fingerprint("SELECT * FROM orders WHERE customer_id = 42 AND status = 'paid'")
    b = fingerprint("select *   from orders\nwhere customer_id = 7 and status = 'it''s';")
    assert a == b and re.fullmatch(r"[0-9a-f]{16}", a)
    assert fingerprint("SELECT * FROM orders") != fingerprint("SELECT * FROM customers")
    assert fingerprint("SELECT col1 FROM t2") != fingerprint("SELECT col2 FROM t2")  # digits in names are kept


def test_text_table_escapes_separators() -> None:
    table = text_table(["a", "b"], [[None, "x|y\nz"], [1.5, {"k": 1}]])
    assert table.splitlines() == ["a | b", "--- | ---", "NULL | x\\|y\\nz", '1.5 | {"k": 1}']


# --- instructions ---------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["mssql", "postgres", "sqlite"])
@pytest.mark.parametrize("read_only", [True, False])
@pytest.mark.parametrize("toolset", ["claude", "chatgpt"])
def test_instructions_first_512_characters_stand_alone(backend: str, read_only: bool, toolset: str) -> None:
    settings = _settings(
        db_backend=backend, mssql_host="db", mssql_database="shop", mssql_user="u", read_only_mode=read_only
    )
    text = build_instructions(settings, toolset)
    visible = text[:512]
    summary = text.split("\n\n")[0]
    assert len(summary) <= 512 and summary.endswith(".")  # the visible part ends on a whole sentence
    dialect = {"mssql": "SQL Server", "postgres": "PostgreSQL", "sqlite": "SQLite"}[backend]
    assert dialect in visible
    assert ("read-only" in visible) == read_only or (toolset == "chatgpt" and "search and fetch only read" in visible)
    names = (
        ("list_tables", "describe_table", "get_table_sample", "execute_sql")
        if toolset == "claude"
        else ("search", "fetch")
    )
    for name in names:
        assert name in visible
    assert "1,000 rows" in visible and "30 s" in visible
    assert len(text) > len(summary)  # details follow


def test_instructions_summary_stays_within_512_with_huge_limits() -> None:
    settings = _settings(max_rows=10**12, max_result_bytes=10**15, query_timeout_seconds=123456.789)
    for toolset in ("claude", "chatgpt"):
        summary = build_instructions(settings, toolset).split("\n\n")[0]
        assert len(summary) <= 512


def test_instructions_reject_unknown_toolset() -> None:
    with pytest.raises(ValueError):
        build_instructions(_settings(), "gemini")


# --- tool definitions -----------------------------------------------------------------------
def _tool_map(read_only: bool = True) -> dict:
    settings = _settings(read_only_mode=read_only)
    return {t.name: t for t in claude_tools(object(), settings) + chatgpt_tools(ChatGptTools(object(), settings))}


def test_tool_definitions_are_complete_and_valid_json_schema() -> None:
    tools = _tool_map()
    assert set(tools) == {"list_tables", "describe_table", "execute_sql", "get_table_sample", "search", "fetch"}
    for tool in tools.values():
        described = tool.describe()
        assert described["title"] and len(described["description"]) > 80
        for schema in (tool.input_schema, tool.output_schema):
            jsonschema.Draft202012Validator.check_schema(schema)
        assert tool.input_schema["additionalProperties"] is False
        assert tool.annotations["openWorldHint"] is False
    assert tools["search"].input_schema["required"] == ["query"]
    assert tools["fetch"].input_schema["required"] == ["id"]
    assert tools["execute_sql"].input_schema["required"] == ["query"]
    assert tools["get_table_sample"].input_schema["properties"]["limit"]["minimum"] == 1


def test_annotations_follow_read_only_mode() -> None:
    read_only = _tool_map(read_only=True)
    for tool in read_only.values():
        assert tool.annotations["readOnlyHint"] is True
    writable = _tool_map(read_only=False)
    assert writable["execute_sql"].annotations["readOnlyHint"] is False
    assert writable["execute_sql"].annotations["destructiveHint"] is True
    assert writable["execute_sql"].annotations["idempotentHint"] is False
    for name in ("list_tables", "describe_table", "get_table_sample", "search", "fetch"):
        assert writable[name].annotations["readOnlyHint"] is True  # search never writes, even then
    assert "writer role" in writable["execute_sql"].description
    assert "read-only mode" in read_only["execute_sql"].description


def test_chatgpt_tools_take_exactly_one_string() -> None:
    tools = _tool_map()
    for name, param in (("search", "query"), ("fetch", "id")):
        schema = tools[name].input_schema
        assert list(schema["properties"]) == [param] and schema["properties"][param]["type"] == "string"


def test_result_size_meta_covers_the_byte_cap() -> None:
    from app.tools.common import result_size_meta

    assert result_size_meta(_settings()) == {"anthropic/maxResultSizeChars": 120_000}  # 100,000 bytes + room
    assert result_size_meta(_settings(max_result_bytes=1000)) == {"anthropic/maxResultSizeChars": 50_000}
    assert result_size_meta(_settings(max_result_bytes=10**9)) == {"anthropic/maxResultSizeChars": 500_000}
