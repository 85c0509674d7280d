"""SQLite through the {SQLite3} ODBC driver (the embedded demo and the tests).

The driver has no INFORMATION_SCHEMA; the catalog comes from sqlite_master and the pragma_*
table-valued functions, which accept bound parameters. The database is always opened through a
`file:` URI: `mode=ro` in read-only mode (writes fail in SQLite itself), `mode=rw` otherwise (so a
mistyped path fails instead of silently creating an empty database). The driver does not understand
brace-quoted values, and a raw ';' in a path would end the value, so the path is percent-encoded
into the URI instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import re
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pyodbc

from ..types import Column, ForeignKey, Index, TableDescription, TableInfo
from .base import OVER_CAP_COLUMN, RECHECK_MARKER, ServerCutDialect

# Largest string or blob SQLite may build for one of our connections (sqlite3_limit LENGTH). Without it a
# read such as zeroblob(300000000) or printf('%.*c', 300000000, 'x') allocates the whole value in this process
# (the engine is in-process) before any cut can apply; wide values reaching the driver are cut much smaller.
# A query can hold a few values of this size at once (a recursive CTE doubling a string holds ~4.5x), so
# 8 MiB keeps a call well inside 64 MiB. Stored values longer than this can still be selected by length()
# of a blob or skipped, but not used in expressions.
VALUE_LIMIT_BYTES = 8 * 1024 * 1024
_SQLITE_LIMIT_LENGTH = 0


@functools.cache
def _libsqlite3() -> ctypes.CDLL | None:
    """The process's libsqlite3: the one the {SQLite3} ODBC driver and Python's sqlite3 module link."""
    try:
        return ctypes.CDLL(ctypes.util.find_library("sqlite3") or "libsqlite3.so.0")
    except OSError:
        return None


_SQLITE_CONFIG_MEMSTATUS = 9
_SQLITE_OK = 0


def skip_memory_statistics() -> bool:
    """Turn off SQLite's process-wide memory statistics, which nothing here reads (no soft heap limit, no
    sqlite3_memory_used): with them on, every allocation and free inside SQLite takes a global mutex, about
    3,000 lock/unlock pairs for a 20-row join; off, that call runs about 4% fewer instructions (callgrind,
    issue 10). SQLite accepts this only before it initialises, which `import sqlite3` and the first
    connection do: call it first thing in the process. Returns whether SQLite took it."""
    lib = _libsqlite3()
    if lib is None:
        return False
    try:
        return int(lib.sqlite3_config(_SQLITE_CONFIG_MEMSTATUS, ctypes.c_int(0))) == _SQLITE_OK
    except AttributeError:
        return False


class _NativeSessionHook:
    """Reaches the `sqlite3*` handle of the connections the ODBC driver opens, to set what the driver cannot.

    The {SQLite3} driver enables `load_extension()` on every connection (there is no option to turn it off)
    and has no option for SQLite's length limit. It links the process's libsqlite3, so an auto-extension
    registered here runs inside each sqlite3_open; it records the handle only while a pool worker opens its
    connection (a thread-local flag), so other SQLite users in the process (the auth store) are untouched.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._lib: ctypes.CDLL | None = None
        self._callback: Any = None
        self._installed = False
        self._install_lock = threading.Lock()

    def _install(self) -> None:
        """Register the auto-extension on first use (a process serving SQL Server or PostgreSQL never does)."""
        with self._install_lock:
            if self._installed:
                return
            self._installed = True
            lib = _libsqlite3()
            if lib is None:
                return
            with contextlib.suppress(AttributeError):
                lib.sqlite3_limit.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
                lib.sqlite3_limit.restype = ctypes.c_int
                lib.sqlite3_enable_load_extension.argtypes = [ctypes.c_void_p, ctypes.c_int]
                lib.sqlite3_enable_load_extension.restype = ctypes.c_int
                lib.sqlite3_interrupt.argtypes = [ctypes.c_void_p]
                lib.sqlite3_interrupt.restype = None
                entry = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p)
                self._callback = entry(self._on_open)  # kept for the life of the process: SQLite holds it
                if lib.sqlite3_auto_extension(self._callback) == 0:
                    self._lib = lib

    def _on_open(self, db: int, _errors: int, _api: int) -> int:
        if getattr(self._local, "capturing", False):
            self._local.handle = db
        return 0

    @contextlib.contextmanager
    def capture(self) -> Iterator[None]:
        # The callback runs inside sqlite3_open on this thread (pyodbc releases the GIL while connecting, and
        # the callback takes it back briefly): it only stores the handle.
        self._install()
        self._local.capturing, self._local.handle = True, None
        try:
            yield
        finally:
            self._local.capturing = False

    def lock_down(self, value_limit: int) -> int | None:
        """Apply the limits to the connection this thread just opened; its handle, or None if it is unknown."""
        handle, self._local.handle = getattr(self._local, "handle", None), None
        if self._lib is None or not handle:
            return None
        self._lib.sqlite3_limit(handle, _SQLITE_LIMIT_LENGTH, int(value_limit))
        return handle if self._lib.sqlite3_enable_load_extension(handle, 0) == 0 else None

    def interrupter(self, handle: int) -> Callable[[], None]:
        """sqlite3_interrupt on `handle`: SQLite allows it from any thread while the connection is open."""
        assert self._lib is not None
        return functools.partial(self._lib.sqlite3_interrupt, handle)


_native = _NativeSessionHook()

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
_ALL_COLUMNS = (
    "SELECT NULL, m.name, p.name, p.type, p.pk FROM sqlite_master AS m JOIN pragma_table_info(m.name) AS p "
    "WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY m.name, p.cid"
)


def _cut_names(columns: Sequence[Any]) -> list[str]:
    """The value cuts' names for the statement's columns (c1, c2, ...): its own may repeat or be empty."""
    return [f"c{i + 1}" for i in range(len(columns))]


def _wide_width(names: list[str], wide: set[int]) -> str:
    """The sum of a row's wide values' sizes (read from the CTE mcp_r), as both value cuts measure it."""
    return " + ".join(_json_width(f"mcp_r.{names[i]}") for i in sorted(wide))


def _json_width(ref: str) -> str:
    """A value's size, never above its JSON size: length() counts characters of text and bytes of a blob (a
    blob's JSON is hex, twice as long), and is cheap to plan (a typeof() CASE here doubled the plan cost)."""
    return f"coalesce(length({ref}), 0)"


class SqliteDialect(ServerCutDialect):
    name = "sqlite"
    sqlglot = "sqlite"
    label = "SQLite"
    engine = "SQLite"
    # "main" is SQLite's name for the database file itself (app.tools.resources.NO_SCHEMA)
    schema_words = "SQLite has no schemas: every table is in 'main' and its 'schema' field is null"
    sql_tips = (
        'SQL dialect: SQLite. Use LIMIT n, "double quotes" for unusual names; dates are stored as ISO 8601 '
        "text, so compare them as strings or with date()/strftime()."
    )
    default_schema = None
    has_schemas = False
    # The driver compiles every statement it is given; kept prepared, a repeated read skips that (Worker.
    # statement_cursor). SQLite re-prepares a statement by itself after a schema change, but the driver keeps
    # the old column list, so the pool checks schema_stamp first and prepares afresh when it moved.
    reuses_prepared_reads = True

    def schema_stamp(self, cursor: pyodbc.Cursor) -> object:
        # The schema cookie, read in the call's own transaction (the read that follows sees the same schema).
        # The bound dummy makes pyodbc keep it prepared on this cursor (it prepares only statements with
        # parameters, and again only when the text changes): about half the cost of compiling it every call.
        cursor.execute("SELECT schema_version FROM pragma_schema_version() WHERE ? = 0", (0,))
        row = cursor.fetchone()
        return None if row is None else row[0]

    def reads_inline(self, conn: pyodbc.Connection) -> bool:
        # Only in WAL mode: there readers never wait for a writer. In the other journal modes a read can sit in
        # SQLite's busy wait (up to the busy timeout), which a cancel does not cut short.
        if self.settings.sqlite_inline_read_ms <= 0:
            return False
        cursor = conn.cursor()
        try:
            row = cursor.execute("PRAGMA journal_mode").fetchone()
        finally:
            cursor.close()
            conn.rollback()
        return row is not None and str(row[0]).lower() == "wal"

    def database_uri(self) -> str:
        path = os.path.abspath(self.settings.sqlite_path)
        mode = "ro" if self.settings.read_only_mode else "rw"
        return f"file:{urllib.parse.quote(path)}?mode={mode}"

    def build_connection_string(self) -> str:
        # BigInt=1: without it the driver reads INTEGER values as 32-bit (9007199254740993 came back as 1).
        busy_ms = min(5000, int(self.settings.query_timeout_seconds * 1000))
        driver = self.settings.sqlite_driver
        return f"DRIVER={{{driver}}};Database={self.database_uri()};Timeout={busy_ms};NoCreat=1;FKSupport=1;BigInt=1;"

    def connect_kwargs(self) -> dict:
        return {"autocommit": False}

    def connect(self, connection_string: str) -> pyodbc.Connection:
        return self.connect_interruptible(connection_string)[0]

    # In-process and cheap: an inline read that outran its budget must not hold the loop much longer.
    interrupt_repeat_seconds = 0.01

    def connect_interruptible(self, connection_string: str) -> tuple[pyodbc.Connection, Callable[[], None] | None]:
        # The interrupter is sqlite3_interrupt on the connection's handle, not the driver's SQLCancel, which also
        # frees the statement's result (SQLFreeStmt SQL_CLOSE) while the worker may still be reading it.
        # The pool connects one connection at a time (app.db.pool.DRIVER_LIFECYCLE_LOCK), so the thread-local
        # capture below sees this connection's handle and no other.
        with _native.capture():
            conn = pyodbc.connect(connection_string, **self.connect_kwargs())
            handle = _native.lock_down(self.value_limit_bytes())
        if handle is None:
            conn.close()
            raise pyodbc.Error(
                "HY000",
                "could not turn off extension loading and set the value limit on the "
                "SQLite connection (libsqlite3 not reachable)",
            )
        return conn, _native.interrupter(handle)

    def value_limit_bytes(self) -> int:
        # Room for any value the byte cap could show (binary is hex, so twice the cap), and never below 16 MiB.
        return max(VALUE_LIMIT_BYTES, 2 * self.settings.max_result_bytes + 1024)

    def explain_failure(self, message: str) -> str:
        if "string or blob too big" in message:
            limit = self.value_limit_bytes() // (1024 * 1024)
            return (
                f"{message}: a value in this query would be larger than the {limit} MiB limit for one value. "
                "Select a part of it (substr), its length(), or leave the column out."
            )
        return message

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

    # A bare VALUES is not a statement the driver opens a result set for; inside the LIMIT wrapper
    # (SELECT * FROM (VALUES ...)) it is.
    def value_cut_sql(self, limited: str, columns: list[Sequence[Any]], wide: set[int], max_bytes: int) -> str:
        """The driver buffers whole result sets, so the server must bound the rows together, not only each row:
        the inner level measures each row's wide values (types are per value in SQLite: text by characters,
        blobs by twice their bytes, both never above the JSON size) and keeps a running total of them; the
        outer one blanks the wide values of every row from the one that passes the cap, notes which column of
        a row over the cap on its own is, and drops the rows after it. Columns the driver reports as typed pass
        through untouched, keeping their declared type. The inner level reads the statement's rows from its
        own LIMIT'ed subquery, which SQLite never inlines, so the user's expressions run once per row. (Two
        levels where there were four: the wrapper costs a 20-row join some 60-80 µs of SQLite time; this
        saved 5-15 µs of it.)"""
        cap = int(max_bytes)
        names = _cut_names(columns)
        ordered = sorted(wide)
        row_width = _wide_width(names, wide)
        alone = " ".join(f"WHEN {_json_width(f'mcp_t.{names[i]}')} > {cap} THEN {i + 1}" for i in ordered)
        shown = self._cut_columns(names, columns, wide, "mcp_t", f"mcp_t.mcp_total <= {cap}")
        return (
            f"WITH mcp_r({', '.join(names)}) AS ({limited})\n"
            f"SELECT {shown}, CASE WHEN mcp_t.mcp_total <= {cap} THEN 0 WHEN mcp_t.mcp_width <= {cap} THEN -1"
            f" {alone} ELSE -1 END AS {OVER_CAP_COLUMN}\n"
            f"FROM (SELECT mcp_r.*, {row_width} AS mcp_width,"
            f" SUM({row_width}) OVER (ROWS UNBOUNDED PRECEDING) AS mcp_total FROM mcp_r LIMIT -1) AS mcp_t\n"
            f"WHERE mcp_t.mcp_total - mcp_t.mcp_width <= {cap}"
        )

    def quick_cut_sql(self, limited: str, columns: list[Sequence[Any]], wide: set[int], max_bytes: int) -> str:
        """One total of the wide values instead of a running one: the window function of value_cut_sql is most
        of its cost (a 20-row join: the quick form runs about 200,000 fewer instructions, some 4% of the whole
        call). SQLite materialises a CTE read twice, so the user's statement still runs once, and the rows
        keep its order. The sizes are value_cut_sql's, so the two agree on whether a result fits."""
        cap = int(max_bytes)
        names = _cut_names(columns)
        total = _wide_width(names, wide)
        shown = self._cut_columns(names, columns, wide, "mcp_r", f"mcp_s.mcp_total <= {cap}")
        return (
            f"WITH mcp_r({', '.join(names)}) AS ({limited})\n"
            f"SELECT {shown},"
            f" CASE WHEN mcp_s.mcp_total <= {cap} THEN 0 ELSE {RECHECK_MARKER} END AS {OVER_CAP_COLUMN}\n"
            f"FROM mcp_r, (SELECT SUM({total}) AS mcp_total FROM mcp_r) AS mcp_s"
        )

    def _cut_columns(
        self, names: list[str], columns: list[Sequence[Any]], wide: set[int], source: str, fits: str
    ) -> str:
        """The statement's columns read from `source` under their own names, the wide ones NULL unless `fits`."""
        return ", ".join(
            (f"CASE WHEN {fits} THEN {source}.{name} END" if i in wide else f"{source}.{name}")
            + f" AS {self.quote_identifier(str(column[0]))}"
            for i, (name, column) in enumerate(zip(names, columns, strict=True))
        )

    all_columns_sql = _ALL_COLUMNS

    # FTS5 indexes over a content table (content='t'): keyword search uses them with their bm25 rank.
    fulltext_columns_sql = (
        "SELECT name, sql FROM sqlite_master WHERE type = 'table' "
        "AND lower(sql) LIKE 'create virtual table%using fts5%'"
    )

    def fulltext_index_rows(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """(None, content table, column, join column, fts table) per indexed column of each external-content
        FTS5 table; FTS5 tables with their own content have no primary key to cite and are left out."""
        found: list[tuple[None, str, str, str, str]] = []
        for name, sql in rows:
            match = re.search(r"using\s+fts5\s*\((?P<args>.*)\)\s*$", str(sql or ""), re.I | re.S)
            if not match:
                continue
            columns, options = [], {}
            for part in (p.strip() for p in match.group("args").split(",")):
                key, eq, value = part.partition("=")
                if eq:
                    options[key.strip().lower()] = value.strip().strip("'\"")
                elif part:
                    columns.append(part.split()[0].strip("'\"`[]"))
            content = options.get("content")
            if content:
                key_column = options.get("content_rowid", "rowid")
                found.extend((None, content, column, key_column, str(name)) for column in columns)
        return found

    def fulltext_search_sql(
        self, table: TableInfo, key_column: str, shown: list[str], columns: list[str], index_name: str = ""
    ) -> str:
        q = self.quote_identifier
        listed = ", ".join(f"t.{q(c)}" for c in dict.fromkeys(shown))
        return (
            f"SELECT {listed}, f.rank AS mcp_rank FROM {q(index_name)} AS f "
            f"JOIN {self.table_sql(table)} AS t ON t.{q(key_column)} = f.rowid "
            f"WHERE f.{q(index_name)} MATCH ? ORDER BY f.rank"
        )

    def fulltext_condition(self, terms: list[str]) -> str:
        """FTS5 prefix terms joined by OR: `"tokyo"* OR "widget"*`."""
        return " OR ".join(f'"{term.replace(chr(34), "")}"*' for term in terms if term.replace('"', ""))

    def referencing_sql(self, table: TableInfo) -> tuple[str, list[Any]]:
        # "to" is NULL when the key names no columns: it then means the parent's primary key.
        return (
            'SELECT NULL, m.name, f."from", f."to", f.id FROM sqlite_master AS m '
            "JOIN pragma_foreign_key_list(m.name) AS f WHERE m.type = 'table' "
            'AND f."table" = ? COLLATE NOCASE ORDER BY m.name, f.id, f.seq',
            [table.name],
        )

    def match_sql(self, column: str) -> str:
        # SQLite's LIKE ignores ASCII case by itself; CAST keeps numbers and dates searchable as text.
        return f"CAST({self.quote_identifier(column)} AS TEXT) LIKE ? ESCAPE '\\'"

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
        return [
            TableInfo(
                schema=None,
                name=name,
                kind="view" if kind == "view" else "table",
                row_estimate=estimates.get(name.lower()),
            )
            for name, kind in rows
        ]

    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription:
        cursor.execute(_COLUMNS, table.name)
        cols = cursor.fetchall()
        pk_order = sorted((int(pk), name) for name, _t, _nn, _d, pk in cols if pk)
        primary_key = [name for _, name in pk_order]
        columns = [
            Column(
                name=name,
                type=str(ctype or ""),
                nullable=not bool(notnull) and name not in primary_key,
                default=None if default is None else str(default),
                primary_key=name in primary_key,
            )
            for name, ctype, notnull, default, _pk in cols
        ]

        cursor.execute(_FOREIGN_KEYS, table.name)
        fks: dict[int, ForeignKey] = {}
        for fk_id, _seq, ref_table, from_col, to_col in cursor.fetchall():
            fk = fks.setdefault(
                int(fk_id), ForeignKey(columns=[], references_table=str(ref_table), references_columns=[])
            )
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
        return TableDescription(
            table=table, columns=columns, primary_key=primary_key, foreign_keys=list(fks.values()), indexes=indexes
        )
