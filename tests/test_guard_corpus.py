"""The read-only guard against real engines: attacks are refused and change nothing; real reads run.

Every adversarial statement goes through `Database.read` on SQLite (the {SQLite3} ODBC driver) and
on PostgreSQL 15 with READ_ONLY_MODE on; each must raise QueryRefused, and afterwards every table,
the schema and a sequence are compared with a snapshot taken by an independent connection.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from app.db import guard
from app.db.types import QueryRefused
from tests.fixtures.databases import open_database, pg_snapshot, sqlite_snapshot

ADVERSARIAL: list[str] = [
    # plain writes and DDL
    "DELETE FROM customers",
    "UPDATE customers SET name = 'pwned'",
    "INSERT INTO customers (id, name) VALUES (999, 'evil')",
    "DROP TABLE order_lines",
    "CREATE TABLE evil (a INTEGER)",
    "ALTER TABLE customers ADD COLUMN evil INTEGER",
    "CREATE VIEW evil AS SELECT 1 AS a",
    "DROP VIEW customer_totals",
    "CREATE INDEX evil ON customers (name)",
    "REPLACE INTO customers (id, name) VALUES (1, 'evil')",
    "INSERT OR REPLACE INTO customers (id, name) VALUES (1, 'evil')",
    "MERGE INTO customers c USING orders o ON c.id = o.customer_id WHEN MATCHED THEN DELETE",
    # stacked queries
    "SELECT 1;\nDELETE FROM customers",
    "SELECT 1; DELETE FROM customers;",
    "SELECT * FROM customers; DROP TABLE orders",
    "select 1;\tdelete from customers",
    "SeLeCt 1; dElEtE fRoM customers",
    "SELECT 1;;DELETE FROM customers",
    "SELECT 1 UNION SELECT 2; UPDATE customers SET name = NULL",
    "(SELECT 1); DELETE FROM customers",
    "SELECT * FROM customers; SELECT * FROM orders",
    "SELECT 1;" + " " * 5000 + "DELETE FROM customers",
    "SELECT name FROM customers WHERE name = '' OR 1=1; DROP TABLE customers; --'",
    # comment tricks
    "SELECT 1 /* comment */; DELETE FROM customers",
    "SELECT 1 -- comment\n; DELETE FROM customers",
    "/* SELECT */ DELETE FROM customers",
    "-- SELECT\nDELETE FROM customers",
    "SELECT 1 /* /* */ ; DELETE FROM customers; /* */ */",
    "SELECT 1 /* /* */ DELETE FROM customers */",
    "SELECT 1 /* unterminated; DELETE FROM customers",
    "/**/DELETE/**/FROM/**/customers",
    # string-escape tricks
    "SELECT 'a\\'; DELETE FROM customers; --'",
    "SELECT 'it''s'; DELETE FROM customers",
    'SELECT "a;" FROM customers; DELETE FROM customers',
    "SELECT 'x' || ''; DELETE FROM customers; SELECT ''",
    # unicode and whitespace tricks
    "SELECT 1;\u00a0DELETE FROM customers",
    "SELECT 1\u200b; DELETE FROM customers",
    "SELECT 1;\u2028DELETE FROM customers",
    "\ufeffDELETE FROM customers",
    "SELECT 1\x00; DELETE FROM customers",
    "SELECT 1 \u202e; DELETE FROM customers",
    "DELETE\u3000FROM customers",
    # data-modifying CTEs and SELECT INTO
    "WITH x AS (SELECT 1) DELETE FROM customers",
    "WITH d AS (DELETE FROM order_lines RETURNING *) SELECT * FROM d",
    "WITH u AS (UPDATE customers SET name = 'x' RETURNING id) SELECT count(*) FROM u",
    "WITH i AS (INSERT INTO customers (id, name) VALUES (999, 'x') RETURNING id) SELECT * FROM i",
    "SELECT * INTO evil FROM customers",
    "SELECT id INTO TEMP evil FROM customers",
    "CREATE TEMP TABLE evil AS SELECT 1 AS a",
    # locking
    "SELECT * FROM customers FOR UPDATE",
    "SELECT * FROM customers FOR SHARE",
    "SELECT * FROM customers WHERE id = 1 FOR NO KEY UPDATE",
    "LOCK TABLE customers",
    # transaction control, session state, engine commands
    "BEGIN; DELETE FROM customers; COMMIT",
    "COMMIT",
    "ROLLBACK",
    "BEGIN TRANSACTION",
    "SAVEPOINT s1",
    "SET statement_timeout = 0",
    "SET default_transaction_read_only = off",
    "RESET ALL",
    "PRAGMA writable_schema = 1",
    "PRAGMA query_only = 0",
    "ATTACH DATABASE '/tmp/evil.db' AS evil",
    "DETACH DATABASE main",
    "VACUUM",
    "VACUUM INTO '/tmp/evil.db'",
    "REINDEX",
    "ANALYZE",
    "EXPLAIN ANALYZE DELETE FROM customers",
    "GRANT ALL ON customers TO PUBLIC",
    "REVOKE ALL ON customers FROM PUBLIC",
    "CREATE FUNCTION f() RETURNS int AS 'select 1' LANGUAGE sql",
    "DO $$ BEGIN DELETE FROM customers; END $$",
    "CALL p()",
    "COPY customers TO '/tmp/evil.csv'",
    "COPY (SELECT 1) TO PROGRAM 'id'",
    "TRUNCATE TABLE orders",
    # deny-listed functions, also hidden in subqueries
    "SELECT load_extension('/tmp/evil.so')",
    "SELECT writefile('/tmp/evil', 'data')",
    "SELECT readfile('/etc/passwd')",
    "SELECT * FROM customers WHERE id = (SELECT length(readfile('/etc/passwd')))",
    "SELECT fts3_tokenizer('simple')",
    "SELECT pg_sleep(10)",
    "SELECT pg_catalog.pg_sleep(10)",
    'SELECT "pg_sleep"(10)',
    "SELECT pg_read_file('/etc/passwd')",
    "SELECT * FROM customers WHERE id IN (SELECT nextval('order_numbers'))",
    "SELECT (SELECT set_config('default_transaction_read_only', 'off', false))",
    "SELECT * FROM dblink('host=127.0.0.1', 'DELETE FROM customers') AS t(a int)",
    "SELECT lo_import('/etc/passwd')",
    "SELECT pg_terminate_backend(1)",
    "SELECT pg_advisory_lock(1)",
    "SELECT query_to_xml('DELETE FROM customers', true, true, '')",
    "SELECT txid_current()",
    "SELECT pg_notify('channel', 'payload')",
    "SELECT pg_ls_dir('.')",
    "SELECT c.name FROM customers c JOIN (SELECT setval('order_numbers', 42) AS v) s ON true",
    # malformed and empty
    "",
    "   \n\t  ",
    "-- nothing here",
    ";",
    "SELECT",
    "SELECT 1 UNION DELETE FROM customers",
    "SELECT * FROM customers WHERE",
]

LEGITIMATE: list[tuple[str, Any]] = [
    (
        "SELECT c.name, COUNT(o.id) AS orders FROM customers c LEFT JOIN orders o ON o.customer_id = c.id "
        "GROUP BY c.name ORDER BY c.name",
        5,
    ),
    (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 10) SELECT SUM(x) AS total FROM n",
        [[55]],
    ),
    (
        "WITH spend AS (SELECT o.customer_id, SUM(l.qty) AS items FROM orders o "
        "JOIN order_lines l ON l.order_id = o.id GROUP BY o.customer_id), "
        "ranked AS (SELECT customer_id, items, RANK() OVER (ORDER BY items DESC) AS r FROM spend) "
        "SELECT customer_id, items FROM ranked WHERE r = 1",
        [[4, 10]],
    ),
    (
        "SELECT id, customer_id, ROW_NUMBER() OVER (PARTITION BY customer_id ORDER BY ordered_on) AS n "
        "FROM orders ORDER BY id",
        5,
    ),
    (
        "SELECT id, LAG(id) OVER (ORDER BY id) AS prev, SUM(id) OVER (ORDER BY id ROWS BETWEEN UNBOUNDED PRECEDING "
        "AND CURRENT ROW) AS running FROM orders ORDER BY id",
        5,
    ),
    (
        "SELECT name FROM customers WHERE id IN (SELECT customer_id FROM orders WHERE status = 'shipped') "
        "ORDER BY name",
        [["Ada Lovelace"], ["Grace Hopper"]],
    ),
    (
        "SELECT name FROM customers c WHERE EXISTS (SELECT 1 FROM orders o WHERE o.customer_id = c.id "
        "AND o.status = 'new') ORDER BY name",
        [["Ada Lovelace"], ["Edsger Dijkstra"]],
    ),
    (
        "SELECT c.name, (SELECT COUNT(*) FROM orders o WHERE o.customer_id = c.id) AS n FROM customers c ORDER BY c.id",
        5,
    ),
    ("SELECT id FROM customers UNION SELECT customer_id FROM orders ORDER BY 1", 5),
    ("SELECT customer_id FROM orders UNION ALL SELECT id FROM customers", 10),
    ("SELECT id FROM customers INTERSECT SELECT customer_id FROM orders ORDER BY 1", [[1], [2], [3], [4]]),
    ("SELECT id FROM customers EXCEPT SELECT customer_id FROM orders", [[5]]),
    ("VALUES (1, 'a'), (2, 'b')", 2),
    (
        "SELECT id, CASE WHEN status = 'shipped' THEN 'done' WHEN status = 'new' THEN 'todo' ELSE 'other' END AS s "
        "FROM orders ORDER BY id",
        5,
    ),
    (
        "SELECT status, COUNT(*) AS n, MIN(ordered_on) AS first, MAX(id) AS last, COUNT(DISTINCT customer_id) AS c "
        "FROM orders GROUP BY status HAVING COUNT(*) >= 1 ORDER BY status",
        3,
    ),
    (
        "SELECT t.customer_id, t.n FROM (SELECT customer_id, COUNT(*) AS n FROM orders GROUP BY customer_id) AS t "
        "WHERE t.n > 1",
        [[1, 2]],
    ),
    ("SELECT a.id, b.id FROM orders a JOIN orders b ON a.customer_id = b.customer_id AND a.id < b.id", [[1, 2]]),
    ("SELECT id FROM orders ORDER BY ordered_on DESC LIMIT 2 OFFSET 1", [[4], [3]]),
    (
        "SELECT COALESCE(email, 'none') AS e, NULLIF(name, '') AS n, CAST(id AS VARCHAR(10)) AS s FROM customers "
        "ORDER BY id",
        5,
    ),
    ("SELECT LOWER(name) AS l, UPPER(name) AS u, LENGTH(name) AS n FROM customers WHERE name LIKE 'A%' ORDER BY id", 2),
    ("SELECT id FROM orders WHERE ordered_on >= '2024-05-01' ORDER BY id", [[4], [5]]),
    ("-- top customers\nSELECT /* inline */ name FROM customers WHERE id = 1", [["Ada Lovelace"]]),
    ("SELECT 'a; DELETE FROM customers' AS s", [["a; DELETE FROM customers"]]),
    (
        "SELECT 'DROP TABLE x' AS txt, name AS \"update\" FROM customers WHERE id = 2",
        [["DROP TABLE x", "Grace Hopper"]],
    ),
    ("SELECT note FROM orders WHERE id = 4;", [["it's; tricky -- note"]]),
    ("SELECT * FROM customer_totals ORDER BY customer_id", 5),
    (
        "SELECT c.name, p.name AS product, l.qty FROM customers c JOIN orders o ON o.customer_id = c.id "
        "JOIN order_lines l ON l.order_id = o.id JOIN products p ON p.id = l.product_id "
        "WHERE o.status <> 'cancelled' ORDER BY c.name, p.name",
        6,
    ),
    ("WITH a AS (SELECT id FROM customers), b AS (SELECT id FROM a WHERE id > 2) SELECT COUNT(*) FROM b", [[3]]),
    ("SELECT sub.id FROM (SELECT id FROM customers WHERE id = 1) AS sub", [[1]]),
    ("SELECT 1 AS one", [[1]]),
]


async def _refusals(database: Any) -> list[str]:
    """The statements the guard let through (should be none)."""
    passed = []
    for sql in ADVERSARIAL:
        try:
            await database.read(sql)
        except QueryRefused as exc:
            assert exc.reason in guard.REASONS, (sql, exc.reason)
            assert str(exc).startswith("Refused in read-only mode:"), str(exc)
        except Exception as exc:  # any other error means the statement reached the database
            passed.append(f"{sql!r} -> {type(exc).__name__}: {exc}")
        else:
            passed.append(f"{sql!r} -> ran")
    return passed


def test_corpus_is_big_enough() -> None:
    assert len(ADVERSARIAL) >= 50
    assert len(LEGITIMATE) >= 20


async def test_adversarial_corpus_refused_on_sqlite_and_data_unchanged(sqlite_db) -> None:
    before = sqlite_snapshot(sqlite_db)
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        assert await _refusals(database) == []
        refused = sum(
            s.value for m in database.metrics.guard_refusals.collect() for s in m.samples if s.name.endswith("_total")
        )
        assert refused == len(ADVERSARIAL)
    assert sqlite_snapshot(sqlite_db) == before


async def test_adversarial_corpus_refused_on_postgres_and_data_unchanged(postgres_server, pg_db) -> None:
    name = pg_db["pg_database"]
    before = pg_snapshot(postgres_server, name)
    async with open_database(**pg_db) as database:
        assert await _refusals(database) == []
    assert pg_snapshot(postgres_server, name) == before


def _check_rows(sql: str, expected: Any, result: Any) -> None:
    if isinstance(expected, int):
        assert result.row_count == expected, (sql, result.rows)
    else:
        assert result.rows == expected, (sql, result.rows)
    json.dumps(result.as_dict(), allow_nan=False)


async def test_legitimate_reads_run_on_sqlite(sqlite_db) -> None:
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        for sql, expected in LEGITIMATE:
            assert database.is_read_only(sql), sql
            _check_rows(sql, expected, await database.read(sql))


async def test_legitimate_reads_run_on_postgres(pg_db) -> None:
    async with open_database(**pg_db) as database:
        for sql, expected in LEGITIMATE:
            assert database.is_read_only(sql), sql
            _check_rows(sql, expected, await database.read(sql))


@pytest.mark.parametrize("sql", [s for s, _ in LEGITIMATE])
def test_legitimate_reads_also_pass_the_tsql_guard(sql: str) -> None:
    # LIMIT/OFFSET and || are not T-SQL; everything else in the list is portable.
    if "LIMIT" in sql:
        sql = sql.replace(
            "ORDER BY ordered_on DESC LIMIT 2 OFFSET 1", "ORDER BY ordered_on DESC OFFSET 1 ROWS FETCH NEXT 2 ROWS ONLY"
        )
    sql = sql.replace("LENGTH(", "LEN(")  # T-SQL's name; LENGTH is not a SQL Server function (refused)
    assert guard.check(sql, "tsql").allowed, guard.check(sql, "tsql")
