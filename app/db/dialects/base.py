"""What differs between SQL Server, PostgreSQL and SQLite, behind one small interface.

A dialect builds the ODBC connection string from settings, prepares each new session (read-only
defaults, server-side time limits), quotes identifiers, builds the few statements the service writes
itself (sample, row by key), and reads the catalog with parameterized SQL. Catalog methods take a
pyodbc cursor and run in a pool worker thread, never on the event loop.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, ClassVar

import pyodbc
import sqlglot
from sqlglot import exp
from sqlglot.tokens import TokenType

from ..errors import sqlstate_of
from ..types import TableDescription, TableInfo

_NEEDS_BRACES = frozenset(";{}=")
_PASSWORD_IN_STRING = re.compile(r"(?i)(?:^|;)\s*(pwd|password)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)")


def odbc_value(value: str, *, always: bool = False) -> str:
    """One ODBC connection-string value, wrapped in braces when it could break the string.

    Inside braces a closing brace is written twice ("p}w" -> "{p}}w}"), per the ODBC grammar that
    the Microsoft and psqlODBC drivers implement.
    """
    if always or not value or value != value.strip() or any(ch in _NEEDS_BRACES for ch in value):
        return "{" + value.replace("}", "}}") + "}"
    return value


def connection_string(pairs: Iterable[tuple[str, str | None]], *, braced: frozenset[str] = frozenset()) -> str:
    """`KEY=value;` pairs; None values are skipped, keys in `braced` are always brace-quoted."""
    out = []
    for key, value in pairs:
        if value is None:
            continue
        out.append(f"{key}={odbc_value(value, always=key in braced)};")
    return "".join(out)


# Column types a read passes through unchanged: bounded in size, and typed in the JSON result.
SMALL_VALUE_TYPES: tuple[type, ...] = (int, float, bool, Decimal, dt.date, dt.time, dt.datetime, dt.timedelta)
OVER_CAP_COLUMN = "mcp_over_cap"
# The marker of a quick plan's rows when the whole result is over the byte cap (ReadPlan.exact).
RECHECK_MARKER = -2


@dataclass(frozen=True, slots=True)
class ReadPlan:
    """What a read runs: the user's statement inside the caps.

    `sql` holds the row cap (TOP/LIMIT of cap+1) and, where the dialect bounds wide values on the server,
    their size. With `marks_over_cap` the last column is the server's marker: 0 while the row fits; the
    1-based number of a column whose value alone is over the byte cap, or -1, once it does not. That row's
    wide values are NULL, it is never shown, and it ends the result.
    """

    sql: str
    marks_over_cap: bool = False
    # Bound after the caller's parameters (Dialect.reuses_prepared_reads): pyodbc keeps a statement prepared
    # across executions only when it has parameters, so a plan without any of its own binds one.
    params: tuple[Any, ...] = ()
    # A quick plan's exact one (ServerCutDialect.quick_cut_sql): the quick plan checks only whether the whole
    # result fits the byte cap; when it does not, its rows carry RECHECK_MARKER and the read runs `exact`.
    exact: ReadPlan | None = None


_MARKER_STARTS = frozenset("?:@$")


def has_parameter_markers(body: str, glot: str) -> bool:
    """Whether the statement has parameter markers of its own (`?`, `:name`, `@name`, `$name`) outside string
    literals; conservative: any token starting with one of those characters counts."""
    tokens = sqlglot.Dialect.get_or_raise(glot).tokenize(body)
    return any(t.token_type != TokenType.STRING and t.text[:1] in _MARKER_STARTS for t in tokens)


def statement_body(sql: str, glot: str) -> str:
    """The statement text without trailing semicolons and comments, ready to sit inside parentheses.

    The text that runs is the text the guard checked, byte for byte (no regeneration by sqlglot)."""
    tokens = sqlglot.Dialect.get_or_raise(glot).tokenize(sql)
    while tokens and tokens[-1].token_type == TokenType.SEMICOLON:
        tokens.pop()
    if not tokens:
        return sql
    return sql[: tokens[-1].end + 1]


FETCH_BLOCK_BYTES = 16 * 1024 * 1024  # most row data a driver block or one fetchmany holds at a time


def rows_per_fetch(max_rows: int, max_bytes: int) -> int:
    """Rows per fetch so that a block of rows, each at most the byte cap, stays within FETCH_BLOCK_BYTES
    (a capped result of small rows is still one round trip)."""
    return max(8, min(int(max_rows) + 1, FETCH_BLOCK_BYTES // max(1, int(max_bytes))))


# SUM, AVG, ROUND and LENGTH always return a number (SQLite converts text arguments; PostgreSQL only takes
# numbers, intervals or money, all bounded), so like COUNT they never need the value cut.
_SMALL_BY_CONSTRUCTION = (exp.Null, exp.Boolean, exp.Count, exp.Sum, exp.Avg, exp.Round, exp.Length)


def literal_columns(tree: exp.Expr | None, width: int) -> set[int]:
    """Output columns the statement itself makes small: number literals, NULL, booleans, COUNT/SUM/AVG/ROUND/
    LENGTH(...). The probe cannot tell (SQLite reports an expression column with no rows as text), so `SELECT 1`
    or `SELECT COUNT(*), SUM(x)` would otherwise pay for the value-cut wrapper, and every other read for
    measuring columns that cannot be wide (about 45 µs of SQLite time on the bench's 20-row join)."""
    if not isinstance(tree, exp.Select):
        return set()
    projections = tree.expressions
    if len(projections) != width or any(isinstance(p, exp.Star) or p.find(exp.Star) is p for p in projections):
        return set()
    small = set()
    for i, projection in enumerate(projections):
        value = projection.this if isinstance(projection, exp.Alias) else projection
        if (isinstance(value, exp.Literal) and not value.is_string) or isinstance(value, _SMALL_BY_CONSTRUCTION):
            small.add(i)
    return small


class Dialect(ABC):
    """One backend. Everything the service knows about its SQL lives here (and in its allowlist file):
    names, limit syntax, session set-up, the statements the service writes itself, and the catalog SQL."""

    name: ClassVar[str]  # DB_BACKEND value: "mssql", "postgres", "sqlite"
    sqlglot: ClassVar[str]  # the sqlglot dialect the guard parses with
    label: ClassVar[str]  # for tool descriptions and resources: "Microsoft SQL Server (T-SQL)"
    engine: ClassVar[str]  # short, for the guard's messages: "SQL Server"
    limit_syntax: ClassVar[str] = "LIMIT n"  # how a query asks for fewer rows ("TOP n" in T-SQL)
    limit_example: ClassVar[str] = "LIMIT n"  # the same, as a prompt shows it ("SELECT TOP (n)")
    sql_tips: ClassVar[str]  # one paragraph for the server instructions: how to write SQL here
    schema_words: ClassVar[str]  # what 'schema' means here, for list_tables' description (models copy it)
    default_schema: ClassVar[str | None]
    has_schemas: ClassVar[bool] = True
    ping_sql: ClassVar[str] = "SELECT 1"

    def __init__(self, settings: Any) -> None:
        self.settings = settings

    # --- connecting ------------------------------------------------------------------------------
    @abstractmethod
    def build_connection_string(self) -> str:
        """The connection string from the backend's settings (ignores ODBC_CONNECTION_STRING)."""

    def connection_string(self) -> str:
        raw = self.settings.odbc_connection_string
        return raw if raw else self.build_connection_string()

    def secrets(self) -> tuple[str, ...]:
        """Strings that must never appear in messages or logs (the raw string and any password in it)."""
        raw = str(self.settings.odbc_connection_string or "")
        if not raw:
            return ()
        found = [raw]
        for match in _PASSWORD_IN_STRING.finditer(raw):
            value = match.group(2)
            if value.startswith("{") and value.endswith("}"):
                value = value[1:-1].replace("}}", "}")
            if value:
                found.append(value)
        return tuple(found)

    def connect_kwargs(self) -> dict[str, Any]:
        return {"autocommit": False, "timeout": self.settings.db_connect_timeout_seconds}

    def connect(self, connection_string: str) -> pyodbc.Connection:
        """Open one connection (on the pool worker's thread); setup_connection runs after it."""
        return pyodbc.connect(connection_string, **self.connect_kwargs())

    # How the watchdog stops a statement, from its own thread. By default it cancels each of the call's cursors
    # (SQLCancel, which ODBC 3 means to be called from another thread, a no-op when nothing runs: SQL Server's
    # driver). A dialect whose driver frees the statement in SQLCancel instead (psqlODBC and the SQLite driver
    # do when it is not executing, under the worker reading its rows: the process crashed within seconds)
    # gives an interrupter with each connection (connect_interruptible), or SQL that cancels a session from
    # another connection (the pool keeps one for it, app.db.pool.SessionCanceller).
    session_id_sql: ClassVar[str | None] = None  # the session's id, read once per connection
    cancel_session_sql: ClassVar[str | None] = None  # stops that session's statement; the id is its parameter
    # An interrupt that lands between two statements of a call is ignored (no statement runs to stop), so the
    # watchdog repeats it this often until the call ends.
    interrupt_repeat_seconds: ClassVar[float] = 0.1

    def connect_interruptible(self, connection_string: str) -> tuple[pyodbc.Connection, Callable[[], None] | None]:
        """connect(), and a callable that stops what runs on that connection from any thread (None: cancel
        its cursors). The pool stops using the callable before it closes the connection."""
        return self.connect(connection_string), None

    def login_refused(self, exc: pyodbc.Error, message: str) -> bool:
        """The server refused the login itself (wrong password, unknown or disabled login): SQLSTATE class 28,
        which retrying will not fix."""
        state = sqlstate_of(exc)
        return bool(state and state.startswith("28"))

    def setup_connection(self, conn: pyodbc.Connection) -> None:  # noqa: B027 - optional hook
        """Per-session set-up right after connecting (runs once per connection, not per query)."""

    @property
    def server_timeout_seconds(self) -> int:
        """The server-side backstop: the settings' cap, rounded up to whole seconds."""
        return max(1, math.ceil(self.settings.query_timeout_seconds))

    # --- reads inside the caps ----------------------------------------------------------------
    # How a read is bounded on the server is the dialect's strategy: ServerCutDialect (the statement inside a
    # LIMIT wrapper that measures and cuts wide values: PostgreSQL, SQLite), or a plan_read of its own (SQL
    # Server: TOP in the statement, TEXTSIZE cuts values).
    # True when plan_read needs the result's columns (one `LIMIT 0` probe per new statement text).
    needs_columns: ClassVar[bool] = False
    # Column types (as pyodbc reports them) whose values are small and pass through uncut.
    small_value_types: ClassVar[tuple[type, ...]] = SMALL_VALUE_TYPES
    # True where a read statement can stay prepared on the connection between calls (Worker.statement_cursor):
    # the driver compiles a statement once per prepare, and the value-cut wrapper is costly to compile (about
    # 280 µs of SQLite's time for the bench's join). The dialect then gives reads a parameter (ReadPlan.params)
    # and says, through schema_stamp, when a prepared statement may no longer describe its result.
    reuses_prepared_reads: ClassVar[bool] = False

    def schema_stamp(self, cursor: pyodbc.Cursor) -> object:
        """A value that changes whenever the database's schema does (only where reuses_prepared_reads)."""
        return None

    def reads_inline(self, conn: pyodbc.Connection) -> bool:
        """True when reads on this new connection may run on the event loop (app.db.pool, inline reads): an
        engine inside this process (no network wait to sit through) whose readers never wait for a lock.
        Servers reached over the network say no: the loop would stand still for every round trip."""
        return False

    def limited_sql(self, body: str, max_rows: int) -> str:
        """The statement with an outer LIMIT of max_rows + 1 (a smaller LIMIT inside it still holds)."""
        return f"SELECT * FROM (\n{body}\n) AS mcp_q LIMIT {int(max_rows) + 1}"

    def probe_sql(self, body: str) -> str:
        """A statement that returns the result's columns and no rows (planned, not run, by the server)."""
        return f"SELECT * FROM (\n{body}\n) AS mcp_q LIMIT 0"

    @abstractmethod
    def plan_read(
        self,
        sql: str,
        tree: exp.Expr | None,
        max_rows: int,
        max_bytes: int,
        description: Sequence[Sequence[Any]] | None,
    ) -> ReadPlan:
        """The statement to run for a read the guard accepted. `tree` is the checked statement (read-only:
        copy before changing it); `description` the probe's cursor.description when needs_columns."""

    def is_small_column(self, column: Sequence[Any]) -> bool:
        """A column (a cursor.description row) whose values are small enough to pass uncut."""
        type_code = column[1]
        return isinstance(type_code, type) and issubclass(type_code, self.small_value_types)

    def explain_failure(self, message: str) -> str:
        """The driver's (cleaned) message for a failed statement, with a hint where the service's own limits
        caused it."""
        return message

    # --- session reset when a connection goes back to the pool ---------------------------------
    # Close a call's cursors before the rollback (discarding unread rows), or after it (see Worker._end_call).
    close_cursors_before_rollback: ClassVar[bool] = True

    def end_call(self, conn: pyodbc.Connection, cursor: pyodbc.Cursor, *, guarded_read: bool) -> None:
        """End a call: roll back, and undo what the call may have left on the session. `cursor` is a
        fresh cursor on `conn`. `guarded_read`: the call was a read the guard accepted and it succeeded, so
        it can only have left what survives a rollback without a statement (the dialect may reset less)."""
        conn.rollback()

    # --- SQL the service writes itself -----------------------------------------------------------
    @abstractmethod
    def quote_identifier(self, name: str) -> str: ...

    def table_sql(self, table: TableInfo) -> str:
        if table.schema and self.has_schemas:
            return f"{self.quote_identifier(table.schema)}.{self.quote_identifier(table.name)}"
        return self.quote_identifier(table.name)

    def sample_sql(self, table: TableInfo, limit: int) -> str:
        return f"SELECT * FROM {self.table_sql(table)} LIMIT {int(limit)}"

    def row_sql(
        self, table: TableInfo, columns: Sequence[str], column_types: Sequence[str | None] | None = None
    ) -> str:
        """SELECT of one row by key columns; values are bound as parameters (`?`). `column_types` (the
        columns' catalog types) lets a typed server compare each key as its column's type (SQL Server)."""
        where = " AND ".join(f"{self.quote_identifier(c)} = ?" for c in columns)
        return f"SELECT * FROM {self.table_sql(table)} WHERE {where} LIMIT 2"

    # --- catalog ---------------------------------------------------------------------------------
    # Catalog query returning (schema, name, kind, row_estimate) rows; dialects without one override list_tables.
    list_tables_sql: str = ""

    def list_tables(self, cursor: pyodbc.Cursor) -> list[TableInfo]:
        cursor.execute(self.list_tables_sql)
        return [
            TableInfo(
                schema=str(schema),
                name=str(name),
                kind=str(kind),
                row_estimate=None if estimate is None else int(estimate),
            )
            for schema, name, kind, estimate in cursor.fetchall()
        ]  # catalog rows, bounded by table count

    @abstractmethod
    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription: ...

    def split_name(self, name: str) -> list[str]:
        """'[dbo].[Order Lines]' / '"public"."orders"' / 'main.t' -> its parts, quotes removed."""
        return split_identifier(name)

    # --- content search (ChatGPT's keyword search over the data, app/tools/search.py) ---------------
    # One catalog query for every column of every table and view: (schema, table, column, type, pk_position),
    # pk_position 0 for columns outside the primary key. Keyword search reads it once instead of describing
    # each table.
    all_columns_sql: str = ""

    def match_sql(self, column: str) -> str:
        """A case-insensitive substring test of one column against one bound pattern (`%term%`)."""
        return f"LOWER(CAST({self.quote_identifier(column)} AS VARCHAR(4000))) LIKE ? ESCAPE '\\'"

    def referencing_sql(self, table: TableInfo) -> tuple[str, list[Any]]:
        """Foreign keys that point at `table`: (child_schema, child_table, child_column, parent_column, fk_name)
        rows ordered by child and key, and the statement's parameters. ("", []) when the dialect has none."""
        return "", []

    # Full-text indexes (SQL Server full-text, SQLite FTS5 over a content table), which keyword search ranks
    # with; dialects without them keep the empty defaults and keyword search uses content_search_sql alone.
    # Rows (schema, table, column, key column[, index name]) of the indexed columns; "" when there are none.
    fulltext_columns_sql: str = ""

    def fulltext_index_rows(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """fulltext_columns_sql's rows as (schema, table, column, key column, index name)."""
        return [(*row, "") for row in rows]

    def fulltext_condition(self, terms: list[str]) -> str:
        """The one bound parameter of fulltext_search_sql for these terms ("" : no full-text search)."""
        return ""

    def fulltext_search_sql(
        self, table: TableInfo, key_column: str, shown: list[str], columns: list[str], index_name: str = ""
    ) -> str:
        """Rows of `table` the index matches, best first, with a rank column (only where fulltext_condition
        gives a condition)."""
        return ""

    def content_search_sql(
        self, table: TableInfo, key_columns: Sequence[str], columns: Sequence[str], term_count: int
    ) -> str:
        """Rows of `table` whose text `columns` contain any of `term_count` bound patterns (one parameter per
        term and column, terms outermost). The caller's Database.read adds the row cap to the statement."""
        shown = ", ".join(self.quote_identifier(c) for c in dict.fromkeys([*key_columns, *columns]))
        tests = " OR ".join(self.match_sql(c) for _ in range(term_count) for c in columns)
        return f"SELECT {shown} FROM {self.table_sql(table)} WHERE {tests}"


class ServerCutDialect(Dialect):
    """The read strategy of dialects whose drivers may buffer whole results: the statement runs inside a LIMIT
    wrapper of cap + 1 rows, and wide columns (from a `LIMIT 0` probe) are measured on the server by
    value_cut_sql, so a row over the byte cap comes back blanked with the marker set (ReadPlan)."""

    needs_columns: ClassVar[bool] = True

    def plan_read(
        self,
        sql: str,
        tree: exp.Expr | None,
        max_rows: int,
        max_bytes: int,
        description: Sequence[Sequence[Any]] | None,
    ) -> ReadPlan:
        body = statement_body(sql, self.sqlglot)
        limited = self.limited_sql(body, max_rows)
        columns = list(description or ())
        typed = literal_columns(tree, len(columns))
        wide = {i for i, column in enumerate(columns) if i not in typed and not self.is_small_column(column)}
        if not wide:
            return ReadPlan(limited)
        params: tuple[Any, ...] = ()
        if self.reuses_prepared_reads and not has_parameter_markers(body, self.sqlglot):
            # The value-cut wrapper is what is costly to compile (a plain statement compiles in microseconds, less
            # than keeping it prepared costs). A bound OFFSET of 0 changes nothing but lets the statement stay
            # prepared (ReadPlan.params); one with markers of its own keeps its text (its caller binds them).
            limited, params = limited + " OFFSET ?", (0,)
        exact = ReadPlan(self.value_cut_sql(limited, columns, wide, max_bytes), marks_over_cap=True, params=params)
        quick = self.quick_cut_sql(limited, columns, wide, max_bytes)
        return exact if quick is None else ReadPlan(quick, marks_over_cap=True, params=params, exact=exact)

    @abstractmethod
    def value_cut_sql(self, limited: str, columns: list[Sequence[Any]], wide: set[int], max_bytes: int) -> str:
        """`limited` with the wide columns (indexes in `wide`) measured on the server: a row over the byte cap
        comes back blanked, with the marker set (ReadPlan). Sizes are never more than the JSON size, so the
        server never blanks a row the byte cap would have kept."""

    def quick_cut_sql(self, limited: str, columns: list[Sequence[Any]], wide: set[int], max_bytes: int) -> str | None:
        """A cheaper form of value_cut_sql for results that fit (most do), or None: the same rows and values
        while the wide values of all rows together are within the byte cap; otherwise every row comes back
        with its wide values NULL and the marker RECHECK_MARKER, and the read runs value_cut_sql instead."""
        return None


_CLOSERS = {"[": "]", '"': '"', "`": "`"}


def split_identifier(name: str) -> list[str]:
    parts: list[str] = []
    current: list[str] = []
    i, n = 0, len(name)
    while i < n:
        ch = name[i]
        if ch in _CLOSERS:
            close = _CLOSERS[ch]
            i += 1
            while i < n:
                if name[i] == close:
                    if i + 1 < n and name[i + 1] == close:  # doubled closer = literal
                        current.append(close)
                        i += 2
                        continue
                    break
                current.append(name[i])
                i += 1
            i += 1
            continue
        if ch == ".":
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current).strip())
    return parts
