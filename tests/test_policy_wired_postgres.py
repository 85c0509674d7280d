"""The access policy wired into the service, on a real PostgreSQL 15 (issue 14): the engine's PostgreSQL
statement corpus through Database.read and through execute_sql over MCP (official SDK client), writes, and
the catalog tools, resources and ChatGPT search hiding a denied schema (hr), table (payroll) and columns.

Each refused statement is first run by a role without a policy entry: it really reaches the denied data."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pyodbc
import pytest
from mcp import Client

from app.core import Principal
from app.db.database import Database
from app.db.types import QueryRefused
from app.obs.audit import recent_audit
from app.tools import ids
from tests.fixtures.databases import PostgresServer, open_database
from tests.test_policy_postgres import PG_ALLOWED, PG_REFUSED, SCHEMA
from tests.test_policy_wired import POLICY_YAML

READER = Principal("reader-1", "rita", "reader")
WRITER = Principal("writer-1", "walt", "writer")
AUDITOR = Principal("auditor-1", "otto", "auditor")  # no policy entry: reads everything

EXTRA_ALLOWED = [
    "SELECT name FROM employees",
    "SELECT id, name, email FROM customers",
    "SELECT count(*) FROM customers",
    "SELECT region FROM sales.orders",
    "SELECT name FROM employee_directory",
    "SELECT total FROM orders WHERE customer_id = 1",
    "SELECT d.name, count(e.id) FROM departments d LEFT JOIN employees e ON e.dept_id = d.id GROUP BY d.name",
    "SELECT name FROM salaries",
]
EXTRA_REFUSED = [
    ("SELECT notes FROM hr.reviews WHERE score > 1", "hr.reviews"),
    ("SELECT e.name FROM employees e WHERE EXISTS (SELECT 1 FROM hr.reviews r WHERE r.employee_id = e.id)", "hr"),
    ("SELECT amount FROM public.payroll", "payroll"),
    ("SELECT sum(salary) OVER () FROM employees", "salary"),
    ("SELECT to_json(c) FROM customers c", "ssn"),
]
ALL_ALLOWED = PG_ALLOWED + EXTRA_ALLOWED
ALL_REFUSED = PG_REFUSED + EXTRA_REFUSED


@pytest.fixture(scope="module")
def policy_database(postgres_server: PostgresServer) -> Iterator[dict[str, Any]]:
    name = f"wired_{uuid.uuid4().hex[:10]}"
    postgres_server.execute(f"CREATE DATABASE {name}")
    setup = pyodbc.connect(postgres_server.connection_string(name), autocommit=True, timeout=10)
    for statement in SCHEMA.split(";"):
        setup.cursor().execute(statement)
    setup.close()
    try:
        yield postgres_server.dsn_settings(name)
    finally:
        postgres_server.drop_database(name)


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(POLICY_YAML)
    return path


@pytest.fixture
async def db(policy_database: dict[str, Any], policy_file: Path) -> AsyncIterator[Database]:
    async with open_database(
        **policy_database, db_pool_size=2, access_policy_file=str(policy_file), read_only_mode=False
    ) as database:
        yield database


def test_the_corpus_is_large_enough() -> None:
    assert len(ALL_REFUSED) >= 40 and len(ALL_ALLOWED) >= 20


async def test_refused_statements_through_database_read(db: Database) -> None:
    for sql, named in ALL_REFUSED:
        assert (await db.read(sql, principal=AUDITOR)).columns, sql  # reaches the data without a policy
        with pytest.raises(QueryRefused) as refused:
            await db.read(sql, principal=READER)
        assert refused.value.reason == "policy", (sql, str(refused.value))
        assert named.lower() in str(refused.value).lower(), (sql, str(refused.value))


async def test_allowed_statements_through_database_read(db: Database) -> None:
    for sql in ALL_ALLOWED:
        await db.read(sql, principal=READER)
    result = await db.read("SELECT o.id, s.region FROM orders o JOIN sales.orders s ON s.id = o.id", principal=READER)
    assert set(result.tables) == {"public.orders", "sales.orders"}


async def test_writes_and_catalog_on_postgres(db: Database) -> None:
    writer = db.writer_for(WRITER)
    assert writer is not None
    with pytest.raises(QueryRefused, match="payroll"):
        await writer.write("UPDATE payroll SET amount = 0")
    with pytest.raises(QueryRefused, match="salary"):
        await writer.write("UPDATE public.employees SET salary = 0 WHERE id = 1")
    for opaque in ("DO $$ BEGIN PERFORM 1; END $$", "CALL nothing()", "COPY payroll TO STDOUT"):
        with pytest.raises(QueryRefused) as refused:  # statements whose reads cannot be followed: fail closed
            await writer.write(opaque)
        assert refused.value.reason == "policy", opaque
    assert (await writer.write("UPDATE departments SET budget = budget WHERE id = 1")).rows_affected == 1

    names = {t.qualified_name for t in await db.list_tables(principal=READER)}
    assert "hr.reviews" not in names and "public.payroll" not in names and "sales.orders" in names
    described = await db.describe_table("public.customers", principal=READER)
    assert [c.name for c in described.columns] == ["id", "name", "email"]
    sample = await db.sample("employees", principal=READER)
    assert "salary" not in sample.columns and sample.row_count == 2
    with pytest.raises(QueryRefused, match=r"hr\.reviews"):
        await db.sample("hr.reviews", principal=READER)


@pytest.fixture
async def server(
    start_live_server: Callable[..., Any],
    make_settings: Callable[..., Any],
    policy_database: dict[str, Any],
    policy_file: Path,
) -> Any:
    settings = make_settings(**policy_database, access_policy_file=str(policy_file))
    return await start_live_server(settings)


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def test_execute_sql_over_mcp_on_postgres(server: Any) -> None:
    async with Client(server.url + "/mcp") as client:
        for sql, named in ALL_REFUSED:
            result = await client.call_tool("execute_sql", {"query": sql})
            assert result.is_error is True, sql
            assert named.lower() in _text(result).lower(), (sql, _text(result))
        for sql in ALL_ALLOWED:
            result = await client.call_tool("execute_sql", {"query": sql})
            assert result.is_error is not True, (sql, _text(result))
        listed = (await client.call_tool("list_tables", {})).structured_content
        assert listed is not None
        names = {t["qualified_name"] for t in listed["tables"]}
        assert not {"hr.reviews", "public.payroll"} & names and "public.employees" in names
        uris = {r.uri for r in (await client.list_resources()).resources}
        assert "mssql://tables/hr/reviews" not in uris and "mssql://tables/public/employees" in uris
    audited = [line for line in recent_audit() if line.get("tool") == "execute_sql" and line.get("outcome") == "ok"]
    assert any(line.get("tables") == ["public.salaries"] for line in audited)

    async with Client(server.url + "/chatgpt/mcp") as client:
        found = (await client.call_tool("search", {"query": "list tables"})).structured_content
        assert found is not None
        shown = [r["id"] for r in found["results"]]
        assert ids.table_id("hr", "reviews") not in shown and ids.table_id("public", "payroll") not in shown
        row = (await client.call_tool("fetch", {"id": ids.row_id("public", "customers", [1])})).structured_content
        assert row is not None and "Cy" in row["text"] and "123-45" not in row["text"]
