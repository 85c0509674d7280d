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
import re
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pyodbc

from ..types import Column, ForeignKey, Index, TableDescription, TableInfo
from .base import OVER_CAP_COLUMN, SMALL_VALUE_TYPES, ServerCutDialect, connection_string, rows_per_fetch

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
_ALL_COLUMNS = """
SELECT n.nspname, c.relname, a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod),
       -- indkey is an int2vector (0-based when cast to an array): its text form makes a 1-based array
       COALESCE(pg_catalog.array_position(pg_catalog.string_to_array(i.indkey::text, ' ')::int2[], a.attnum), 0)
FROM pg_catalog.pg_attribute AS a
JOIN pg_catalog.pg_class AS c ON c.oid = a.attrelid
JOIN pg_catalog.pg_namespace AS n ON n.oid = c.relnamespace
LEFT JOIN pg_catalog.pg_index AS i ON i.indrelid = c.oid AND i.indisprimary
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f') AND a.attnum > 0 AND NOT a.attisdropped
  AND NOT c.relispartition
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
  AND pg_catalog.has_any_column_privilege(c.oid, 'SELECT')
ORDER BY n.nspname, c.relname, a.attnum
"""
_REFERENCING = """
SELECT cn.nspname, cc.relname, ca.attname, pa.attname, con.conname
FROM pg_catalog.pg_constraint AS con
JOIN pg_catalog.pg_class AS cc ON cc.oid = con.conrelid
JOIN pg_catalog.pg_namespace AS cn ON cn.oid = cc.relnamespace
JOIN pg_catalog.pg_class AS pc ON pc.oid = con.confrelid
JOIN pg_catalog.pg_namespace AS pn ON pn.oid = pc.relnamespace
CROSS JOIN LATERAL unnest(con.conkey, con.confkey) AS k(child_attnum, parent_attnum)
JOIN pg_catalog.pg_attribute AS ca ON ca.attrelid = con.conrelid AND ca.attnum = k.child_attnum
JOIN pg_catalog.pg_attribute AS pa ON pa.attrelid = con.confrelid AND pa.attnum = k.parent_attnum
WHERE con.contype = 'f' AND pn.nspname = ? AND pc.relname = ?
ORDER BY cn.nspname, cc.relname, con.conname
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
_PRIMARY_KEY = (
    """
SELECT array_to_json(ARRAY(
         SELECT a.attname FROM unnest(i.indkey::int2[]) WITH ORDINALITY AS k(num, ord)
         JOIN pg_catalog.pg_attribute AS a ON a.attrelid = i.indrelid AND a.attnum = k.num
         ORDER BY k.ord))::text
FROM pg_catalog.pg_index AS i
WHERE i.indisprimary AND i.indrelid = (SELECT c.oid """
    + _TABLE_FILTER
    + ")"
)
_FOREIGN_KEYS = (
    """
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
WHERE con.contype = 'f' AND con.conrelid = (SELECT c.oid """
    + _TABLE_FILTER
    + """)
ORDER BY con.conname
"""
)
_INDEXES = (
    """
SELECT ic.relname, i.indisunique,
       array_to_json(ARRAY(
         SELECT pg_catalog.pg_get_indexdef(i.indexrelid, k, true)
         FROM generate_series(1, i.indnkeyatts) AS k ORDER BY k))::text
FROM pg_catalog.pg_index AS i
JOIN pg_catalog.pg_class AS ic ON ic.oid = i.indexrelid
WHERE NOT i.indisprimary AND i.indrelid = (SELECT c.oid """
    + _TABLE_FILTER
    + """)
ORDER BY ic.relname
"""
)


def _is_binary(column: Sequence[Any]) -> bool:
    return isinstance(column[1], type) and issubclass(column[1], bytes | bytearray | memoryview)


def _json_width(ref: str, column: Sequence[Any]) -> str:
    """A value's size, never above its JSON size: bytes of its text; twice the bytes of bytea (hex)."""
    if _is_binary(column):
        return f"2 * coalesce(octet_length({ref}), 0)"
    return f"coalesce(octet_length({ref}::text), 0)"


# PostgreSQL's FATAL messages for SQLSTATE 28000/28P01 (English server messages, lc_messages=C or en).
_LOGIN_REFUSED = re.compile(
    r"FATAL:\s+(?:password authentication failed|\w+ authentication failed for user"
    r'|role "[^"]*" does not exist|role "[^"]*" is not permitted to log in'
    r"|no pg_hba\.conf entry)"
)


class PostgresDialect(ServerCutDialect):
    name = "postgres"
    sqlglot = "postgres"
    label = "PostgreSQL"
    engine = "PostgreSQL"
    schema_words = "PostgreSQL schemas such as public, the default one"
    sql_tips = (
        'SQL dialect: PostgreSQL. Use LIMIT n, "double quotes" for mixed-case names, schema-qualified '
        "names such as public.orders, and information_schema for metadata."
    )
    default_schema = "public"
    list_tables_sql = _LIST_TABLES
    # numeric can hold ~150,000 digits: cut it like text (its JSON is a string either way, and PG's text
    # form of numeric is the plain notation serialize.decimal_to_json writes).
    small_value_types = tuple(t for t in SMALL_VALUE_TYPES if t is not Decimal)

    # Not psqlODBC's SQLCancel, which closes the statement when it is not executing (a worker reading its rows
    # crashed): the server's own cancel, sent from the pool's canceller connection (same role, so allowed).
    session_id_sql = "SELECT pg_catalog.pg_backend_pid()"
    cancel_session_sql = "SELECT pg_catalog.pg_cancel_backend(?)"

    def fetch_block_rows(self) -> int:
        # Rows per FETCH round trip with UseDeclareFetch: a full capped result in one trip, unless rows as wide
        # as the byte cap would make the block large (each row is at most the cap: see value_cut_sql).
        return rows_per_fetch(self.settings.max_rows, self.settings.max_result_bytes)

    def session_settings_sql(self) -> list[str]:
        """The session's SET statements: run at connect and again after every reset."""
        statements = []
        if self.settings.read_only_mode:
            statements.append("SET SESSION default_transaction_read_only = on")
        statements += [
            f"SET SESSION statement_timeout = {self.server_timeout_seconds * 1000}",
            # Keep the lexer unambiguous for the guard: backslashes in '...' are literal characters.
            "SET SESSION standard_conforming_strings = on",
            "SET SESSION application_name = 'mssql-mcp'",  # visible in pg_stat_activity
        ]
        return statements

    def reset_sql(self) -> str:
        """One batch that ends a call and leaves the session as connecting left it: DISCARD ALL's parts
        (DISCARD ALL itself cannot run in the transaction psqlODBC opens), then the settings psqlODBC and
        we make at connect, which RESET ALL undoes. It starts with ROLLBACK, so it also works after a
        failed statement, and it costs what the plain rollback it replaces cost (one round trip)."""
        return "; ".join(
            [
                "ROLLBACK",
                "CLOSE ALL",
                "SET SESSION AUTHORIZATION DEFAULT",
                "RESET ALL",
                "SELECT pg_catalog.pg_advisory_unlock_all()",
                "UNLISTEN *",
                "DEALLOCATE ALL",
                "DISCARD PLANS",
                "DISCARD TEMP",
                "DISCARD SEQUENCES",
                "SET DateStyle = 'ISO'",  # psqlODBC's own connect-time settings
                "SET extra_float_digits = 2",
                *self.session_settings_sql(),
            ]
        )

    close_cursors_before_rollback = False  # the ROLLBACK ends psqlODBC's server cursor; a close first is a round trip

    # After a read the guard accepted: the rollback undoes settings (SET and set_config are transactional) and
    # a SELECT cannot PREPARE, LISTEN or create temp tables; session advisory locks are what could survive,
    # should a locking function ever get past the guard. ~0.03 ms more than a bare rollback; the full reset
    # costs ~0.08 ms more.
    READ_RESET_SQL = "ROLLBACK; SELECT pg_catalog.pg_advisory_unlock_all()"

    def end_call(self, conn: pyodbc.Connection, cursor: pyodbc.Cursor, *, guarded_read: bool) -> None:
        # psqlODBC reads the transaction state from the server, so it opens no stray transaction afterwards.
        cursor.execute(self.READ_RESET_SQL if guarded_read else self.reset_sql())

    def is_small_column(self, column: Sequence[Any]) -> bool:
        # psqlODBC reports a size below its 255 default only from a length the server knows (varchar(n),
        # char(n)) or a fixed-size type (uuid, interval): those values are small, and stay as the driver
        # renders them (uuid upper-case).
        size = column[3]
        return super().is_small_column(column) or (column[1] is str and isinstance(size, int) and 0 < size < 255)

    def value_cut_sql(self, limited: str, columns: list[Sequence[Any]], wide: set[int], max_bytes: int) -> str:
        """Two levels, cheap to plan: the inner one measures each row's wide values (octet_length of a text
        reads its stored length, so even a 300 MB value costs nothing to measure), the outer one blanks a row
        that is over the cap on its own and names the column that is. A row that fits needs no cut, and keeps
        the types psqlODBC gives it. Rows are read in blocks (UseDeclareFetch, Fetch=rows_per_fetch) and the
        reader stops at the cap, so no running total across rows is needed. OFFSET 0 keeps the planner from
        inlining the inner level (that would measure once per reference)."""
        cap = int(max_bytes)
        names = [f"c{i + 1}" for i in range(len(columns))]
        ordered = sorted(wide)
        # A sentinel column after the statement's own: if its columns change under a cached plan (SELECT *
        # after ALTER TABLE), the alias list no longer lines up and the sentinel's name is missing or twice
        # there, so the statement fails (and is planned again) instead of silently dropping a column.
        prefix = "SELECT * FROM ("
        assert limited.startswith(prefix)
        limited = "SELECT mcp_q.*, 0 AS mcp_end FROM (" + limited[len(prefix) :]
        names_and_end = [*names, "mcp_end"]
        row_width = "mcp_r.mcp_end + " + " + ".join(_json_width(f"mcp_r.{names[i]}", columns[i]) for i in ordered)
        shown = ", ".join(
            (f"CASE WHEN mcp_s.mcp_width <= {cap} THEN mcp_s.{name} END" if i in wide else f"mcp_s.{name}")
            + f" AS {self.quote_identifier(str(column[0]))}"
            for i, (name, column) in enumerate(zip(names, columns, strict=True))
        )
        alone = " ".join(f"WHEN {_json_width(f'mcp_s.{names[i]}', columns[i])} > {cap} THEN {i + 1}" for i in ordered)
        return (
            f"SELECT {shown}, CASE WHEN mcp_s.mcp_width <= {cap} THEN 0 {alone} ELSE -1 END"
            f" AS {OVER_CAP_COLUMN}\n"
            f"FROM (SELECT mcp_r.*, {row_width} AS mcp_width FROM ({limited}) AS mcp_r({', '.join(names_and_end)})"
            f" OFFSET 0) AS mcp_s"
        )

    def build_connection_string(self) -> str:
        s = self.settings
        return connection_string(
            [
                ("DRIVER", str(s.pg_driver)),
                ("SERVER", str(s.pg_host)),
                ("PORT", str(s.pg_port)),
                ("DATABASE", str(s.pg_database)),
                ("UID", str(s.pg_user)),
                ("PWD", str(s.pg_password)),
                ("UseDeclareFetch", "1"),
                ("Fetch", str(self.fetch_block_rows())),
                ("BoolsAsChar", "0"),  # booleans as booleans, not '1'/'0' strings
            ],
            braced=frozenset({"DRIVER", "PWD"}),
        )

    def secrets(self) -> tuple[str, ...]:
        return tuple(x for x in (self.settings.pg_password, *super().secrets()) if x)

    def setup_connection(self, conn: pyodbc.Connection) -> None:
        cursor = conn.cursor()
        try:
            for statement in self.session_settings_sql():
                cursor.execute(statement)
        finally:
            cursor.close()
        conn.commit()

    def login_refused(self, exc: pyodbc.Error, message: str) -> bool:
        # psqlODBC reports every failed connect as 08001; the server's own FATAL authentication messages
        # (libpq passes them through, and they carry no query data) say which ones are refused logins.
        return super().login_refused(exc, message) or _LOGIN_REFUSED.search(message) is not None

    def quote_identifier(self, name: str) -> str:
        return '"' + name.replace('"', '""') + '"'

    all_columns_sql = _ALL_COLUMNS

    def referencing_sql(self, table: TableInfo) -> tuple[str, list[Any]]:
        return _REFERENCING, [table.schema or "public", table.name]

    def match_sql(self, column: str) -> str:
        return f"CAST({self.quote_identifier(column)} AS text) ILIKE ? ESCAPE '\\'"

    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription:
        key = (table.schema or self.default_schema, table.name)
        cursor.execute(_PRIMARY_KEY, *key)
        row = cursor.fetchone()
        primary_key = json.loads(row[0]) if row and row[0] else []

        cursor.execute(_COLUMNS, *key)
        columns = [
            Column(
                name=str(name),
                type=str(ctype),
                nullable=bool(nullable),
                default=None if default is None else str(default),
                primary_key=name in primary_key,
            )
            for name, ctype, nullable, default in cursor.fetchall()
        ]

        cursor.execute(_FOREIGN_KEYS, *key)
        foreign_keys = [
            ForeignKey(
                columns=json.loads(cols),
                references_table=f"{ref_schema}.{ref_table}",
                references_columns=json.loads(ref_cols),
                name=str(name),
            )
            for name, ref_schema, ref_table, cols, ref_cols in cursor.fetchall()
        ]

        cursor.execute(_INDEXES, *key)
        indexes = [
            Index(name=str(name), columns=json.loads(cols), unique=bool(unique))
            for name, unique, cols in cursor.fetchall()
        ]
        return TableDescription(
            table=table, columns=columns, primary_key=primary_key, foreign_keys=foreign_keys, indexes=indexes
        )
