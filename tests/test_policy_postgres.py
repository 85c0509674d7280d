"""The PostgreSQL statements of test_policy_check on a real PostgreSQL 15 (psqlODBC): each one runs there,
so the refused ones really reach the denied data and the allowed ones are real reads; the catalog the check
uses is read from the server's information_schema, as the service's own catalog is."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pyodbc
import pytest

from app.policy import CatalogTable, InMemoryCatalog, check_statement
from tests.fixtures.databases import PostgresServer
from tests.test_policy_check import ALLOWED, READER, REFUSED, _tree

SCHEMA = """
CREATE SCHEMA hr;
CREATE SCHEMA sales;
CREATE TABLE employees (id int PRIMARY KEY, name text, salary numeric, dept_id int, manager_id int);
CREATE TABLE payroll (employee_id int, amount numeric, paid_on date);
CREATE TABLE customers (id int PRIMARY KEY, name text, ssn text, email text);
CREATE TABLE orders (id int PRIMARY KEY, customer_id int, total numeric, placed_on date);
CREATE TABLE departments (id int PRIMARY KEY, name text, budget numeric);
CREATE VIEW employee_directory AS SELECT name, dept_id FROM employees;
CREATE VIEW salaries AS SELECT name, salary FROM employees;
CREATE TABLE hr.reviews (employee_id int, score int, notes text);
CREATE TABLE sales.orders (id int, region text);
INSERT INTO employees VALUES (1, 'Ada', 100000, 1, NULL), (2, 'Bob', 50000, 1, 1);
INSERT INTO payroll VALUES (1, 8000, '2026-11-30');
INSERT INTO customers VALUES (1, 'Cy', '123-45-6789', 'cy@example.com');
INSERT INTO orders VALUES (1, 1, 12.5, '2026-11-01');
INSERT INTO departments VALUES (1, 'R&D', 1e6);
INSERT INTO hr.reviews VALUES (1, 5, 'great');
INSERT INTO sales.orders VALUES (1, 'north')
"""

PG_REFUSED = [(sql, named) for dialect, sql, named in REFUSED if dialect == "postgres"]
PG_ALLOWED = [sql for dialect, sql in ALLOWED if dialect == "postgres"]


@pytest.fixture(scope="module")
def policy_db(postgres_server: PostgresServer) -> Iterator[pyodbc.Connection]:
    name = f"policy_{uuid.uuid4().hex[:10]}"
    postgres_server.execute(f"CREATE DATABASE {name}")
    setup = pyodbc.connect(postgres_server.connection_string(name), autocommit=True, timeout=10)
    for statement in SCHEMA.split(";"):
        setup.cursor().execute(statement)
    setup.close()
    # The statements run in a read-only session, as the service's readers do.
    conn = pyodbc.connect(
        postgres_server.connection_string(name) + "ConnSettings=SET default_transaction_read_only=on;", timeout=10
    )
    try:
        yield conn
    finally:
        conn.close()
        postgres_server.drop_database(name)


@pytest.fixture(scope="module")
def pg_catalog(policy_db: pyodbc.Connection) -> InMemoryCatalog:
    cursor = policy_db.cursor()
    cursor.execute(
        "SELECT t.table_schema, t.table_name, t.table_type, c.column_name FROM information_schema.tables t "
        "JOIN information_schema.columns c ON c.table_schema = t.table_schema AND c.table_name = t.table_name "
        "WHERE t.table_schema IN ('public', 'hr', 'sales') ORDER BY t.table_schema, t.table_name, c.ordinal_position"
    )
    columns: dict[tuple[str, str, str], list[str]] = {}
    for schema, table, kind, column in cursor.fetchall():
        columns.setdefault((schema, table, "view" if kind == "VIEW" else "table"), []).append(column)
    policy_db.rollback()
    return InMemoryCatalog(
        [CatalogTable(s, t, tuple(cols), kind) for (s, t, kind), cols in columns.items()], default_schema="public"
    )


def _runs(conn: pyodbc.Connection, sql: str) -> None:
    try:
        conn.cursor().execute(sql).fetchall()
    finally:
        conn.rollback()


def test_the_catalog_holds_the_denied_objects(pg_catalog: InMemoryCatalog) -> None:
    names = {t.qualified_name for t in pg_catalog.tables()}
    assert {"public.employees", "public.payroll", "hr.reviews", "public.salaries", "sales.orders"} <= names
    assert len(PG_REFUSED) >= 25 and len(PG_ALLOWED) >= 10


@pytest.mark.parametrize(("sql", "named"), PG_REFUSED)
def test_refused_on_postgres(policy_db: pyodbc.Connection, pg_catalog: InMemoryCatalog, sql: str, named: str) -> None:
    _runs(policy_db, sql)  # the engine runs it: without the policy it would return the denied data
    decision = check_statement(_tree(sql, "postgres"), pg_catalog, READER)
    assert not decision.allowed
    assert named.lower() in (decision.message or "").lower(), decision.message


@pytest.mark.parametrize("sql", PG_ALLOWED)
def test_allowed_on_postgres(policy_db: pyodbc.Connection, pg_catalog: InMemoryCatalog, sql: str) -> None:
    _runs(policy_db, sql)
    decision = check_statement(_tree(sql, "postgres"), pg_catalog, READER)
    assert decision.allowed, decision.message
