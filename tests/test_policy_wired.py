"""The access policy wired into the service, on SQLite (issue 14): through the real Database, through real MCP
calls (the official SDK client), the record pages, the audit line, SIGHUP and start-up.

The policy denies a schema (hr.*), a table (payroll) and columns (employees.salary, *.ssn, salaries.salary)
to role reader; role auditor has no entry, so it reads everything: each refused statement is first run as
auditor, which shows it really reaches the denied data (hr does not exist on SQLite: those statements are
refused by name before they could fail)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from mcp import Client
from mcp.types import ResourceTemplateReference

from app.core import Principal
from app.db.database import Database
from app.db.types import QueryRefused, TableNotFound
from app.obs.audit import recent_audit
from app.tools import ids
from tests.fixtures.databases import open_database
from tests.test_policy_check import ALLOWED, REFUSED, SQLITE_DDL

ROOT = Path(__file__).resolve().parents[1]

POLICY_YAML = """
roles:
  reader:
    tables:
      allow: ["*"]
      deny: ["hr.*", "payroll"]
    columns:
      deny: ["employees.salary", "*.ssn", "salaries.salary"]
  analyst:
    tables:
      allow: ["orders", "customers", "depart*"]
    columns:
      deny: ["*.ssn"]
    max_rows: 3
    timeout_seconds: 5
  writer:
    tables:
      deny: ["payroll"]
    columns:
      deny: ["employees.salary"]
"""

READER = Principal("reader-1", "rita", "reader")
ANALYST = Principal("analyst-1", "ann", "analyst")
WRITER = Principal("writer-1", "walt", "writer")
AUDITOR = Principal("auditor-1", "otto", "auditor")  # no entry in the policy: reads everything

# The engine's statement corpus (tests/test_policy_check.py), plus more ways in: each names what it reaches.
EXTRA_REFUSED = [
    ("SELECT salary FROM employees", "salary"),
    ("SELECT max(salary) FROM employees", "salary"),
    ("SELECT name FROM employees WHERE salary > 60000", "salary"),
    ("SELECT name FROM employees ORDER BY salary DESC", "salary"),
    ("SELECT dept_id, avg(salary) FROM employees GROUP BY dept_id", "salary"),
    ("SELECT amount FROM payroll", "payroll"),
    ("SELECT count(*) FROM payroll", "payroll"),
    ("SELECT name FROM employees WHERE id IN (SELECT employee_id FROM payroll)", "payroll"),
    ("SELECT upper(ssn) FROM customers", "ssn"),
    ("SELECT name FROM customers WHERE ssn LIKE '1%'", "ssn"),
    ("SELECT c.* FROM customers AS c", "ssn"),
    ("WITH p AS (SELECT * FROM payroll) SELECT count(*) FROM p", "payroll"),
    ("SELECT * FROM salaries", "salary"),
    ("SELECT name FROM employees UNION SELECT CAST(salary AS TEXT) FROM employees", "salary"),
    ("SELECT (SELECT max(amount) FROM payroll) AS m", "payroll"),
    ("SELECT x FROM (SELECT salary AS x FROM employees) AS t", "salary"),
]
EXTRA_ALLOWED = [
    "SELECT name FROM employees",
    "SELECT id, name, email FROM customers",
    "SELECT count(*) FROM customers",
    "SELECT d.name, count(e.id) FROM departments d LEFT JOIN employees e ON e.dept_id = d.id GROUP BY d.name",
    "SELECT name FROM employee_directory",
    "SELECT name FROM salaries",
    "SELECT total FROM orders WHERE customer_id = 1",
    "WITH x AS (SELECT id FROM orders) SELECT count(*) FROM x",
]
SQLITE_REFUSED = [(sql, named) for dialect, sql, named in REFUSED if dialect == "sqlite"] + EXTRA_REFUSED
SQLITE_ALLOWED = [sql for dialect, sql in ALLOWED if dialect == "sqlite"] + EXTRA_ALLOWED


def _ddl() -> str:
    """The engine tests' tables on one SQLite file (the ODBC backend lists main only: no hr schema)."""
    lines = [line for line in SQLITE_DDL.strip().splitlines() if "hr.reviews" not in line]
    orders = "".join(f"INSERT INTO orders VALUES ({n}, 1, {n}.5, '2026-11-0{n}');\n" for n in range(2, 8))
    return "\n".join(lines) + "\n" + orders


@pytest.fixture
def policy_files(tmp_path: Path) -> tuple[Path, Path]:
    """(the SQLite database, the policy file)."""
    db_path = tmp_path / "policy.db"
    conn = sqlite3.connect(db_path)
    conn.executescript(_ddl())
    conn.close()
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY_YAML)
    return db_path, policy


@pytest.fixture
async def db(policy_files: tuple[Path, Path]) -> AsyncIterator[Database]:
    db_path, policy = policy_files
    async with open_database(
        db_backend="sqlite", sqlite_path=str(db_path), access_policy_file=str(policy), read_only_mode=False
    ) as database:
        yield database


def test_the_corpus_is_large_enough() -> None:
    assert len(SQLITE_REFUSED) >= 40 and len(SQLITE_ALLOWED) >= 20


# --- Database.read ---------------------------------------------------------------------------------------
async def test_refused_statements_through_database_read(db: Database) -> None:
    for sql, named in SQLITE_REFUSED:
        if "hr." not in sql.lower():
            await db.read(sql, principal=AUDITOR)  # a role without a policy reaches the data
        with pytest.raises(QueryRefused) as refused:
            await db.read(sql, principal=READER)
        assert refused.value.reason == "policy", (sql, str(refused.value))
        assert named.lower() in str(refused.value).lower(), (sql, str(refused.value))


async def test_allowed_statements_through_database_read(db: Database) -> None:
    for sql in SQLITE_ALLOWED:
        result = await db.read(sql, principal=READER)
        assert result.tables or sql.startswith("WITH"), sql  # the audit gets the tables read (a CTE is none)


async def test_a_read_without_a_caller_may_not_read_a_user_table(db: Database) -> None:
    with pytest.raises(QueryRefused, match="without a caller may not read table employees"):
        await db.read("SELECT name FROM employees")
    assert (await db.read("SELECT name FROM sqlite_master")).rows  # the service's own catalog queries run


async def test_role_caps_lower_the_call_caps(db: Database) -> None:
    result = await db.read("SELECT id FROM orders", principal=ANALYST)
    assert result.row_count == 3 and result.truncated_reason == "max_rows"
    assert (await db.read("SELECT id FROM orders", principal=ANALYST, max_rows=2)).row_count == 2
    assert (await db.read("SELECT id FROM orders", principal=READER)).row_count == 7
    with pytest.raises(QueryRefused, match="employees"):  # not in the analyst's allow list
        await db.read("SELECT name FROM employees", principal=ANALYST)


async def test_tables_read_are_named_without_a_policy_too(tmp_path: Path, policy_files: tuple[Path, Path]) -> None:
    async with open_database(db_backend="sqlite", sqlite_path=str(policy_files[0])) as plain:
        result = await plain.read("SELECT o.id FROM orders o JOIN customers c ON c.id = o.customer_id")
        assert set(result.tables) == {"orders", "customers"}
        assert (await plain.read("SELECT salary FROM employees", principal=READER)).rows  # no policy: as before


async def test_writes_touching_denied_tables_or_columns_are_refused(db: Database) -> None:
    writer = db.writer_for(WRITER)
    assert writer is not None
    for sql, named in [
        ("UPDATE payroll SET amount = 1", "payroll"),
        ("DELETE FROM payroll", "payroll"),
        ("INSERT INTO payroll (employee_id, amount, paid_on) VALUES (2, 1, 'x')", "payroll"),
        ("UPDATE employees SET salary = 0", "salary"),
        ("UPDATE employees SET name = 'x' WHERE salary > 1", "salary"),
        ("INSERT INTO employees VALUES (9, 'Eve', 1, 1, NULL)", "every column"),
        ("CREATE TABLE leak AS SELECT * FROM payroll", "payroll"),
    ]:
        with pytest.raises(QueryRefused) as refused:
            await writer.write(sql)
        assert refused.value.reason == "policy" and named in str(refused.value), (sql, str(refused.value))
    done = await writer.write("UPDATE employees SET name = 'Ada L.' WHERE id = 1")
    assert done.rows_affected == 1 and done.tables == ("employees",)
    assert (await writer.write("INSERT INTO orders (id, customer_id, total) VALUES (99, 1, 1.0)")).rows_affected == 1


async def test_catalog_methods_show_only_what_the_role_may_read(db: Database) -> None:
    names = {t.name for t in await db.list_tables(principal=READER)}
    assert "payroll" not in names and {"employees", "customers", "salaries"} <= names
    assert "payroll" in {t.name for t in await db.list_tables()}
    employees = await db.describe_table("employees", principal=READER)
    assert [c.name for c in employees.columns] == ["id", "name", "dept_id", "manager_id"]
    customers = await db.cached_description("customers", principal=READER)
    assert "ssn" not in [c.name for c in customers.columns]
    sample = await db.sample("employees", 5, principal=READER)
    assert sample.columns == ["id", "name", "dept_id", "manager_id"] and sample.row_count == 2
    with pytest.raises(QueryRefused, match="may not read payroll"):
        await db.sample("payroll", principal=READER)
    with pytest.raises(QueryRefused, match="may not read payroll"):
        await db.describe_table("payroll", principal=READER)
    with pytest.raises(TableNotFound) as unknown:
        await db.resolve_table("payrol", principal=READER)
    assert "payroll" not in str(unknown.value)  # no suggestion of a table the role may not read
    row = await db.fetch_row(await db.resolve_table("customers"), {"id": 1}, principal=READER)
    assert row == {"id": 1, "name": "Cy", "email": "cy@example.com"}


async def test_reload_keeps_the_old_policy_when_the_new_file_is_invalid(
    db: Database, policy_files: tuple[Path, Path]
) -> None:
    policy = policy_files[1]
    policy.write_text(POLICY_YAML.replace('deny: ["hr.*", "payroll"]', 'deny: ["hr.*", "payroll", "orders"]'))
    assert db.reload_policy() is True
    with pytest.raises(QueryRefused, match="orders"):
        await db.read("SELECT id FROM orders", principal=READER)
    policy.write_text("roles:\n  reader:\n    colums: {}\n")
    assert db.reload_policy() is False
    with pytest.raises(QueryRefused, match="orders"):  # the policy in force stays
        await db.read("SELECT id FROM orders", principal=READER)
    described = db.access.describe()
    assert described["source"] == str(policy) and "orders" in described["roles"]["reader"]["tables_denied"]
    assert described["roles"]["analyst"]["max_rows"] == 3


async def test_a_tsql_statement_without_a_checked_tree_is_refused_for_a_restricted_role(
    policy_files: tuple[Path, Path],
) -> None:
    """T-SQL hints and XMLNAMESPACES are checked on a rewritten text (no tree): refused before any database
    work for a role whose policy restricts anything (this Database is never started)."""
    from app.obs.metrics import Metrics
    from app.settings import load_settings

    settings = load_settings(
        environ={},
        env_file=None,
        db_backend="mssql",
        mssql_host="127.0.0.1",
        mssql_database="nowhere",
        mssql_user="nobody",
        access_policy_file=str(policy_files[1]),
    )
    database = Database(settings, Metrics())
    for sql in (
        "SELECT name FROM dbo.Employees OPTION (USE HINT ('FORCE_LEGACY_CARDINALITY_ESTIMATION'))",
        "WITH XMLNAMESPACES ('urn:x' AS x) SELECT name FROM dbo.Employees",
    ):
        with pytest.raises(QueryRefused, match="only be checked after a rewrite") as refused:
            await database.read(sql, principal=READER)
        assert refused.value.reason == "policy"


# --- real MCP calls -------------------------------------------------------------------------------------
@pytest.fixture
async def server(
    start_live_server: Callable[..., Any], make_settings: Callable[..., Any], policy_files: tuple[Path, Path]
) -> Any:
    db_path, policy = policy_files
    return await start_live_server(make_settings(sqlite_path=str(db_path), access_policy_file=str(policy)))


def _text(result: Any) -> str:
    return "\n".join(getattr(block, "text", "") for block in result.content)


async def test_execute_sql_over_mcp_refuses_and_allows(server: Any) -> None:
    async with Client(server.url + "/mcp") as client:
        for sql, named in SQLITE_REFUSED:
            result = await client.call_tool("execute_sql", {"query": sql})
            assert result.is_error is True, sql
            assert named.lower() in _text(result).lower(), (sql, _text(result))
        for sql in SQLITE_ALLOWED:
            result = await client.call_tool("execute_sql", {"query": sql})
            assert result.is_error is not True, (sql, _text(result))
    lines = [line for line in recent_audit() if line.get("tool") == "execute_sql" and line.get("outcome") == "ok"]
    assert any(line.get("tables") == ["departments", "employees"] for line in lines), lines[:3]


async def test_catalog_tools_resources_and_completions_hide_denied_objects(server: Any) -> None:
    async with Client(server.url + "/mcp") as client:
        listed = (await client.call_tool("list_tables", {})).structured_content
        assert listed is not None
        names = {t["name"] for t in listed["tables"]}
        assert "payroll" not in names and "employees" in names
        described = (await client.call_tool("describe_table", {"table_name": "employees"})).structured_content
        assert described is not None and "salary" not in [c["name"] for c in described["columns"]]
        sample = (await client.call_tool("get_table_sample", {"table_name": "customers"})).structured_content
        assert sample is not None and sample["columns"] == ["id", "name", "email"]
        refused = await client.call_tool("get_table_sample", {"table_name": "payroll"})
        assert refused.is_error is True and "payroll" in _text(refused)

        uris = {r.uri for r in (await client.list_resources()).resources}
        assert "mssql://tables/main/employees" in uris and "mssql://tables/main/payroll" not in uris
        overview = (await client.read_resource("mssql://overview")).contents[0]
        assert "payroll" not in getattr(overview, "text", "")
        table = (await client.read_resource("mssql://tables/main/customers.json")).contents[0]
        assert "ssn" not in [c["name"] for c in json.loads(getattr(table, "text", ""))["columns"]]
        with pytest.raises(Exception, match="payroll"):
            await client.read_resource("mssql://tables/main/payroll")
        ref = ResourceTemplateReference(type="ref/resource", uri="mssql://tables/{schema}/{table}")
        tables = await client.complete(ref, {"name": "table", "value": "p"}, {"schema": "main"})
        assert "payroll" not in tables.completion.values
    lines = [line for line in recent_audit() if line.get("tool") == "get_table_sample" and line.get("outcome") == "ok"]
    assert lines and lines[0].get("tables") == ["customers"]


async def test_prompt_completions_hide_denied_objects(server: Any) -> None:
    from mcp.types import PromptReference

    async with Client(server.url + "/mcp") as client:
        ref = PromptReference(type="ref/prompt", name="explain_table")
        tables = await client.complete(ref, {"name": "table", "value": ""})
        assert "payroll" not in tables.completion.values and "employees" in tables.completion.values
        columns = await client.complete(ref, {"name": "column", "value": ""}, {"table": "employees"})
        assert "salary" not in columns.completion.values and "name" in columns.completion.values
        explained = await client.get_prompt("explain_table", {"table": "employees"})
        embedded = json.dumps([m.model_dump(mode="json") for m in explained.messages])
        assert "dept_id" in embedded and "salary" not in embedded
        with pytest.raises(Exception, match="payroll"):
            await client.get_prompt("explain_table", {"table": "payroll"})


async def test_chatgpt_search_fetch_and_record_pages_hide_denied_objects(server: Any) -> None:
    import aiohttp

    async with Client(server.url + "/chatgpt/mcp") as client:
        listed = (await client.call_tool("search", {"query": "list tables"})).structured_content
        assert listed is not None
        assert ids.table_id(None, "payroll") not in [r["id"] for r in listed["results"]]
        assert ids.table_id(None, "employees") in [r["id"] for r in listed["results"]]
        for query in ("SELECT * FROM customers", "SELECT amount FROM payroll", "describe payroll"):
            refused = await client.call_tool("search", {"query": query})
            assert refused.is_error is True, query
        table = (await client.call_tool("fetch", {"id": ids.table_id(None, "employees")})).structured_content
        assert table is not None and "salary" not in table["text"].lower() and "Ada" in table["text"]
        row = (await client.call_tool("fetch", {"id": ids.row_id(None, "customers", [1])})).structured_content
        assert row is not None and "Cy" in row["text"] and "123-45" not in row["text"] and "ssn" not in row["text"]
        denied = await client.call_tool("fetch", {"id": ids.table_id(None, "payroll")})
        assert denied.is_error is True
        fetched = [line for line in recent_audit() if line.get("tool") == "fetch" and line.get("outcome") == "ok"]
        assert fetched[0].get("tables") == ["customers"] and fetched[1].get("tables") == ["employees"]
        keyword = (await client.call_tool("search", {"query": "Cy"})).structured_content
        assert keyword is not None and all("123-45" not in r["title"] for r in keyword["results"])
        salary = (await client.call_tool("search", {"query": "salary"})).structured_content
        assert salary is not None and all("salary" not in r["title"].lower() for r in salary["results"])
    async with aiohttp.ClientSession(headers={**server.headers, "Accept": "application/json"}) as http:
        async with http.get(server.url + "/chatgpt/records/" + ids.row_id(None, "customers", [1])) as page:
            assert page.status == 200
            body = await page.json()
            assert "Cy" in body["text"] and "123-45" not in json.dumps(body)
        async with http.get(server.url + "/chatgpt/records/" + ids.table_id(None, "payroll")) as page:
            assert page.status == 400 and "payroll" in (await page.json())["error"]


# --- the process: start-up and SIGHUP ------------------------------------------------------------------
def _env(tmp_path: Path, db_path: Path, policy: Path, port: int) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", ""),
        "PYTHONPATH": str(ROOT),
        "DB_BACKEND": "sqlite",
        "SQLITE_PATH": str(db_path),
        "ACCESS_POLICY_FILE": str(policy),
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "METRICS_PORT": "0",
        "DATA_DIR": str(tmp_path / "state"),
        "LOG_FORMAT": "json",
        "EVENT_LOOP": "asyncio",
    }


def test_an_invalid_policy_file_stops_start_up_with_one_line(tmp_path: Path, policy_files: tuple[Path, Path]) -> None:
    db_path, policy = policy_files
    policy.write_text('roles:\n  reader:\n    tables:\n      deny: ["hr..x"]\n')
    done = subprocess.run(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        env=_env(tmp_path, db_path, policy, 1),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        f'configuration error: {policy}: roles.reader.tables.deny[0]: "hr..x" has an empty part; '
        "write table, schema.table, schema.* or *"
    ), done.stderr
    assert "Traceback" not in done.stdout + done.stderr


@pytest.fixture
def serving(
    tmp_path: Path, policy_files: tuple[Path, Path]
) -> Iterator[tuple[subprocess.Popen[str], queue.Queue[str]]]:
    db_path, policy = policy_files
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "app", "serve"],
        cwd=tmp_path,
        env=_env(tmp_path, db_path, policy, port),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        yield proc, lines
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _wait_for(lines: queue.Queue[str], needle: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=max(0.05, deadline - time.monotonic()))
        except queue.Empty:
            break
        if needle in line:
            return line
    raise AssertionError(f"no line with {needle!r}")


def test_sighup_reloads_the_policy_and_keeps_it_when_the_new_file_is_invalid(
    serving: tuple[subprocess.Popen[str], queue.Queue[str]], policy_files: tuple[Path, Path]
) -> None:
    proc, lines = serving
    policy = policy_files[1]
    _wait_for(lines, "listening on")
    policy.write_text(POLICY_YAML + '  auditor:\n    tables:\n      deny: ["payroll"]\n')
    proc.send_signal(signal.SIGHUP)
    reloaded = json.loads(_wait_for(lines, "policy.reloaded"))
    assert "auditor" in reloaded["roles"]
    policy.write_text("roles: [reader]\n")
    proc.send_signal(signal.SIGHUP)
    failed = json.loads(_wait_for(lines, "policy.reload_failed"))
    assert failed["level"] == "warning" and str(policy) in failed["error"] and failed["kept"] == str(policy)
    assert proc.poll() is None  # still serving
