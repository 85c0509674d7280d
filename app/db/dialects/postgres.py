"""PostgreSQL through psqlODBC ({PostgreSQL Unicode}).

Session set-up runs as SQL right after connecting (so it also applies with ODBC_CONNECTION_STRING):
`default_transaction_read_only = on` in read-only mode and `statement_timeout` as the server-side
backstop to the watchdog (psqlODBC rejects pyodbc's query-timeout attribute). `UseDeclareFetch=1`
makes the driver read results through a cursor in blocks instead of loading the whole result set
into memory before the first fetch, so the row cap also caps memory. Row estimates come from
pg_class.reltuples (free; -1 means "never analyzed" and is reported as unknown).
"""

from __future__ import annotations

import json

import pyodbc

from ..types import Column, ForeignKey, Index, TableDescription, TableInfo
from .base import Dialect, connection_string

_LIST_TABLES = """
SELECT n.nspname, c.relname,
       CASE WHEN c.relkind IN ('v', 'm') THEN 'view' ELSE 'table' END,
       CASE WHEN c.reltuples < 0 THEN NULL ELSE c.reltuples::bigint END
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
ORDER BY n.nspname, c.relname
"""
_TABLE_FILTER = """
FROM pg_catalog.pg_class AS c
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = ? AND c.relname = ?
"""
_COLUMNS = """
SELECT a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid)
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_attrdef AS d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE n.nspname = ? AND c.relname = ? AND a.attnum > 0 AND NOT a.attisdropped
ORDER BY a.attnum
"""
_PRIMARY_KEY = """
SELECT array_to_json(ARRAY(
         SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, ord)
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.num
         ORDER BY k.ord))::text
FROM pg_catalog.pg_index AS i
WHERE i.indisprimary AND i.indrelid = (SELECT c.oid """ + _TABLE_FILTER + ")"
_FOREIGN_KEYS = """
SELECT con.conname, fn.nspname, fc.relname,
       array_to_json(ARRAY(
         SELECT a.attname FROM unnest(con.conkey) WITH ORDINALITY AS k(num, ord)
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = con.conrelid AND a.attnum = k.num
         ORDER BY k.ord))::text,
       array_to_json(ARRAY(
         SELECT a.attname FROM unnest(con.confkey) WITH ORDINALITY AS k(num, ord)
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = con.confrelid AND a.attnum = k.num
         ORDER BY k.ord))::text
FROM pg_catalog.pg_constraint AS con
JOIN pg_catalog.pg_class AS fc ON fc.oid = con.confrelid
JOIN pg_catalog.pg_namespace AS fn ON fn.oid = fc.relnamespace
WHERE con.contype = 'f' AND con.conrelid = (SELECT c.oid """ + _TABLE_FILTER + """)
ORDER BY con.conname
"""
_INDEXES = """
SELECT ic.relname, i.indisunique,
       array_to_json(ARRAY(
         SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
         FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k))::text
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
WHERE NOT i.indisprimary AND i.indrelid = (SELECT c.oid """ + _TABLE_FILTER + """)
ORDER BY ic.relname
"""


class PostgresDialect(Dialect):
    name = "postgres"
    sqlglot = "postgres"
    default_schema = "public"
    list_tables_sql = _LIST_TABLES

    def fetch_block_rows(self) -> int:
        # Rows per FETCH round trip with UseDeclareFetch: enough for a full capped result in one trip.
        return max(100, min(int(self.settings.max_rows) + 1, 5000))

    def build_connection_string(self) -> str:
        s = self.settings
        return connection_string([
            ("DRIVER", str(s.pg_driver)),
            ("SERVER", str(s.pg_host)),
            ("PORT", str(s.pg_port)),
            ("DATABASE", str(s.pg_database)),
            ("UID", str(s.pg_user)),
            ("PWD", str(s.pg_password)),
            ("UseDeclareFetch", "1"),
            ("Fetch", str(self.fetch_block_rows())),
            ("BoolsAsChar", "0"),  # booleans as booleans, not '1'/'0' strings
        ], braced=frozenset({"DRIVER", "PWD"}))

    def secrets(self) -> tuple[str, ...]:
        return tuple(x for x in (str(self.settings.pg_password), *super().secrets()) if x)

    def setup_connection(self, conn: pyodbc.Connection) -> None:
        cursor = conn.cursor()
        try:
            if self.settings.read_only_mode:
                cursor.execute("SET SESSION default_transaction_read_only = on")
            cursor.execute(f"SET SESSION statement_timeout = {self.server_timeout_seconds * 1000}")
            # Keep the lexer unambiguous for the guard: backslashes in '...' are literal characters.
            cursor.execute("SET SESSION standard_conforming_strings = on")
            cursor.execute("SET SESSION application_name = 'mssql-mcp'")  # visible in pg_stat_activity
        finally:
            cursor.close()
        conn.commit()

    def quote_identifier(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'


    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription:
        key = (table.schema or self.default_schema, table.name)
        cursor.execute(_PRIMARY_KEY, *key)
        row = cursor.fetchone()
        primary_key = json.loads(row[0]) if row and row[0] else []

        cursor.execute(_COLUMNS, *key)
        columns = [Column(name=str(name), type=str(ctype), nullable=bool(nullable),
                          default=None if default is None else str(default), primary_key=name in primary_key)
                   for name, ctype, nullable, default in cursor.fetchall()]

        cursor.execute(_FOREIGN_KEYS, *key)
        foreign_keys = [ForeignKey(columns=json.loads(cols), references_table=f"{ref_schema}.{ref_table}",
                                   references_columns=json.loads(ref_cols), name=str(name))
                        for name, ref_schema, ref_table, cols, ref_cols in cursor.fetchall()]

        cursor.execute(_INDEXES, *key)
        indexes = [Index(name=str(name), columns=json.loads(cols), unique=bool(unique))
                   for name, unique, cols in cursor.fetchall()]
        return TableDescription(table=table, columns=columns, primary_key=primary_key,
                                foreign_keys=foreign_keys, indexes=indexes)
