"""SQLite through the {SQLite3} ODBC driver (the embedded demo and the tests).

The driver has no INFORMATION_SCHEMA; the catalog comes from sqlite_master and the pragma_*
table-valued functions, which accept bound parameters. The database is always opened through a
`file:` URI: `mode=ro` in read-only mode (writes fail in SQLite itself), `mode=rw` otherwise (so a
mistyped path fails instead of silently creating an empty database). The driver does not understand
brace-quoted values, and a raw ';' in a path would end the value, so the path is percent-encoded
into the URI instead.
"""

from __future__ import annotations

import os
import urllib.parse

import pyodbc
import sqlglot

from ..types import Column, ForeignKey, Index, TableDescription, TableInfo
from .base import Dialect

_LIST_TABLES = (
    "SELECT name, type FROM sqlite_master WHERE type IN ('table', 'view') "
    "AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name"
)
_HAS_STAT1 = "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_stat1'"
# The first number of sqlite_stat1.stat is the table's row count as of the last ANALYZE.
_ROW_ESTIMATES = "SELECT tbl, MAX(CAST(stat AS INTEGER)) FROM sqlite_stat1 GROUP BY tbl"
_COLUMNS = 'SELECT name, type, "notnull", dflt_value, pk FROM pragma_table_info(?) ORDER BY cid'
_FOREIGN_KEYS = 'SELECT id, seq, "table", "from", "to" FROM pragma_foreign_key_list(?) ORDER BY id, seq'
_INDEXES = 'SELECT name, "unique", origin FROM pragma_index_list(?) ORDER BY name'
_INDEX_COLUMNS = "SELECT name FROM pragma_index_info(?) ORDER BY seqno"


class SqliteDialect(Dialect):
    name = "sqlite"
    sqlglot = "sqlite"
    default_schema = None
    has_schemas = False

    def database_uri(self) -> str:
        path = os.path.abspath(str(self.settings.sqlite_path))
        mode = "ro" if self.settings.read_only_mode else "rw"
        return f"file:{urllib.parse.quote(path)}?mode={mode}"

    def build_connection_string(self) -> str:
        busy_ms = min(5000, int(float(self.settings.query_timeout_seconds) * 1000))
        driver = str(self.settings.sqlite_driver)
        return (f"DRIVER={{{driver}}};Database={self.database_uri()};Timeout={busy_ms};NoCreat=1;"
                "FKSupport=1;")

    def connect_kwargs(self) -> dict:
        return {"autocommit": False}

    def setup_connection(self, conn: pyodbc.Connection) -> None:
        # The driver's UTF-16 entry points mangle characters outside the BMP (emoji) in SQL text; its
        # narrow entry points take UTF-8, which is SQLite's own encoding.
        conn.setencoding(encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_CHAR, encoding="utf-8")
        conn.setdecoding(pyodbc.SQL_WCHAR, encoding="utf-8")
        if self.settings.read_only_mode:
            # A second lock besides mode=ro (and the only one when ODBC_CONNECTION_STRING is used).
            cursor = conn.cursor()
            cursor.execute("PRAGMA query_only = ON")
            cursor.close()
            conn.commit()

    def prepare_read(self, sql: str, root: str | None) -> str:
        # The driver only opens a result set for statements it recognises as queries, and a bare VALUES
        # is not one of them: run it as SELECT * FROM (VALUES ...), regenerated from the checked tree.
        if root == "values":
            return f"SELECT * FROM ({sqlglot.parse_one(sql, read='sqlite').sql('sqlite')})"
        return sql

    def quote_identifier(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    def table_sql(self, table: TableInfo) -> str:
        return self.quote_identifier(table.name)

    def split_name(self, name: str) -> list[str]:
        parts = super().split_name(name)
        if len(parts) == 2 and parts[0].lower() == "main":  # SQLite's only schema here
            return parts[1:]
        return parts

    def list_tables(self, cursor: pyodbc.Cursor) -> list[TableInfo]:
        cursor.execute(_LIST_TABLES)
        rows = cursor.fetchall()  # the catalog, not user data: bounded by the number of tables
        estimates: dict[str, int] = {}
        cursor.execute(_HAS_STAT1)
        if cursor.fetchone():
            cursor.execute(_ROW_ESTIMATES)
            estimates = {str(t).lower(): int(n) for t, n in cursor.fetchall() if n is not None}
        return [TableInfo(schema=None, name=name, kind="view" if kind == "view" else "table",
                          row_estimate=estimates.get(name.lower())) for name, kind in rows]

    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription:
        cursor.execute(_COLUMNS, table.name)
        cols = cursor.fetchall()
        pk_order = sorted((int(pk), name) for name, _t, _nn, _d, pk in cols if pk)
        primary_key = [name for _, name in pk_order]
        columns = [Column(name=name, type=str(ctype or ""), nullable=not bool(notnull) and name not in primary_key,
                          default=None if default is None else str(default), primary_key=name in primary_key)
                   for name, ctype, notnull, default, _pk in cols]

        cursor.execute(_FOREIGN_KEYS, table.name)
        fks: dict[int, ForeignKey] = {}
        for fk_id, _seq, ref_table, from_col, to_col in cursor.fetchall():
            fk = fks.setdefault(int(fk_id), ForeignKey(columns=[], references_table=str(ref_table),
                                                       references_columns=[]))
            fk.columns.append(str(from_col))
            fk.references_columns.append(str(to_col) if to_col is not None else "")

        cursor.execute(_INDEXES, table.name)
        index_rows = cursor.fetchall()
        indexes = []
        for index_name, unique, origin in index_rows:
            if origin == "pk":
                continue  # the primary key is reported as such
            cursor.execute(_INDEX_COLUMNS, index_name)
            names = [str(n) if n is not None else "<expression>" for (n,) in cursor.fetchall()]
            indexes.append(Index(name=str(index_name), columns=names, unique=bool(unique)))
        # An INTEGER PRIMARY KEY is the rowid and has no index row; others have origin 'pk'.
        return TableDescription(table=table, columns=columns, primary_key=primary_key,
                                foreign_keys=list(fks.values()), indexes=indexes)
