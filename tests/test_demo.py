"""The embedded demo database: content, consistency, and a build that is atomic and built once."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pyodbc
import pytest

from app import demo
from app.demo import build_demo_database


def _connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def test_demo_has_realistic_tables_and_row_counts(demo_db_path: Path) -> None:
    with _connect(demo_db_path) as conn:
        counts = {
            table: conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
            for table in ("categories", "suppliers", "products", "customers", "orders", "order_lines", "price_history")
        }
        views = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'view'")}
    assert counts["categories"] == 10
    assert counts["products"] == 120
    assert counts["customers"] == 400
    assert counts["orders"] == 1500
    assert 3000 <= counts["order_lines"] <= 5000
    assert 2000 < sum(counts.values()) < 10_000  # "a few thousand rows"
    assert views == {"order_totals", "customer_lifetime_value"}


def test_demo_foreign_keys_all_resolve(demo_db_path: Path) -> None:
    with _connect(demo_db_path) as conn:
        assert conn.execute("PRAGMA foreign_key_check").fetchall() == []
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        fks = {(row[2], row[3]) for row in conn.execute("SELECT * FROM pragma_foreign_key_list('order_lines')")}
        assert fks == {("orders", "order_id"), ("products", "product_id")}
        # Every order has at least one line, every line points at a real product.
        assert (
            conn.execute(
                "SELECT COUNT(*) FROM orders o"
                " WHERE NOT EXISTS (SELECT 1 FROM order_lines l WHERE l.order_id = o.order_id)"
            ).fetchone()[0]
            == 0
        )


def test_demo_schema_has_keys_indexes_and_varied_types(demo_db_path: Path) -> None:
    with _connect(demo_db_path) as conn:
        pk = [row[1] for row in conn.execute("SELECT * FROM pragma_table_info('order_lines')") if row[5]]
        assert pk == ["order_id", "line_number"]  # a composite key
        no_pk = [row for row in conn.execute("SELECT * FROM pragma_table_info('price_history')") if row[5]]
        assert no_pk == []  # a table without a primary key, on purpose
        indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
        assert {"ix_orders_customer", "ix_orders_ordered_at", "ix_customers_location"} <= indexes
        types = {row[1]: row[2] for row in conn.execute("SELECT * FROM pragma_table_info('products')")}
        assert types["unit_price"] == "NUMERIC(10, 2)"
        assert types["thumbnail"] == "BLOB"
        assert isinstance(conn.execute("SELECT thumbnail FROM products WHERE product_id = 1").fetchone()[0], bytes)
        ordered_at = conn.execute("SELECT ordered_at FROM orders WHERE order_id = 1").fetchone()[0]
        assert time.strptime(ordered_at, "%Y-%m-%d %H:%M:%S")  # ISO text dates
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        # Views compute: lifetime value equals the sum over the customer's kept orders.
        top = conn.execute(
            "SELECT customer_id, lifetime_value FROM customer_lifetime_value ORDER BY lifetime_value DESC LIMIT 1"
        ).fetchone()
        total = conn.execute(
            "SELECT ROUND(SUM(total), 2) FROM order_totals WHERE customer_id = ? "
            "AND status NOT IN ('cancelled', 'returned')",
            (top[0],),
        ).fetchone()[0]
        assert top[1] == pytest.approx(total)


def test_demo_is_deterministic_and_fast(tmp_path: Path, demo_db_path: Path) -> None:
    started = time.perf_counter()
    assert build_demo_database(tmp_path / "again.db") is True
    assert time.perf_counter() - started < 2.0
    dump = "SELECT * FROM orders ORDER BY order_id"
    with _connect(demo_db_path) as a, _connect(tmp_path / "again.db") as b:
        assert a.execute(dump).fetchall() == b.execute(dump).fetchall()
        assert a.execute("SELECT * FROM customers").fetchall() == b.execute("SELECT * FROM customers").fetchall()


def test_demo_is_built_once(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "demo.db"
    assert build_demo_database(path) is True
    before = path.stat().st_mtime_ns
    assert build_demo_database(path) is False
    assert path.stat().st_mtime_ns == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["demo.db"]  # no temp files left behind


def test_concurrent_builders_produce_one_database(tmp_path: Path) -> None:
    path = tmp_path / "demo.db"
    results: list[bool] = []
    threads = [threading.Thread(target=lambda: results.append(build_demo_database(path))) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False, False, True]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.db"]


def test_failed_build_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken_write(conn: sqlite3.Connection, data: dict) -> None:
        conn.executescript(demo.SCHEMA)
        raise KeyboardInterrupt  # as if the build were killed half-way

    monkeypatch.setattr(demo, "_write", broken_write)
    with pytest.raises(KeyboardInterrupt):
        build_demo_database(tmp_path / "demo.db")
    assert list(tmp_path.iterdir()) == []


def test_demo_reads_through_the_sqlite_odbc_driver(demo_db_path: Path) -> None:
    # The service reads the demo through {SQLite3} in read-only mode; WAL must not get in the way.
    conn = pyodbc.connect(f"Driver={{SQLite3}};Database=file:{demo_db_path}?mode=ro", autocommit=True)
    try:
        cursor = conn.cursor()
        cursor.execute("SELECT COUNT(*) FROM order_totals")
        assert cursor.fetchone()[0] == 1500
        with pytest.raises(pyodbc.Error):
            cursor.execute("DELETE FROM orders")
    finally:
        conn.close()
