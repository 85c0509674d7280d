"""Microsoft SQL Server through the Microsoft ODBC Driver 18 (or any driver named by MSSQL_DRIVER).

- Connection string: DRIVER, SERVER=host,port, DATABASE, UID/PWD or Trusted_Connection, Encrypt,
  TrustServerCertificate, optional ApplicationIntent=ReadOnly; every value brace-quoted when it holds
  ';', '{', '}' or '='. MSSQL_DRIVER may be an absolute path to the driver library.
- Session: `SET LOCK_TIMEOUT` (a blocked read fails instead of waiting on a writer's locks),
  `SET XACT_ABORT ON` (a failing write rolls back as a whole), and the driver's query timeout
  (`Connection.timeout`) as the server-side backstop to the watchdog.
- Catalog: sys.objects/sys.schemas with row counts from sys.partitions (metadata only, no scans);
  every name is bound as a parameter and turned into an object id with OBJECT_ID(QUOTENAME(?) + '.' +
  QUOTENAME(?)), so user text never becomes SQL.
- Caps: a read gets `TOP (max_rows + 1)` (or a lowered FETCH NEXT) in its outermost SELECT; `SET TEXTSIZE`
  (per session, from MAX_RESULT_BYTES) cuts every (n)varchar(max)/varbinary(max)/text/image value on the
  server, and in read-only mode `SET ROWCOUNT max_rows + 1` caps what TOP cannot reach (set operations,
  TOP ... PERCENT / WITH TIES, TOP (@variable)).
- pyodbc does not know datetimeoffset (-155) or CLR types (-151): output converters turn them into ISO 8601
  text and hex. pyodbc 5.2+ decodes sql_variant (-150) itself.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Sequence
from typing import Any

import pyodbc
from sqlglot import exp

from ..errors import is_tls_failure
from ..serialize import binary_to_json
from ..types import Column, ForeignKey, Index, TableDescription, TableInfo
from .base import Dialect, ReadPlan, connection_string

SQL_SS_UDT = -151
SQL_SS_TIMESTAMPOFFSET = -155
# msodbcsql.h: SQL_COPT_SS_ACCESS_TOKEN, set before connecting (pyodbc's attrs_before) to an
# ACCESSTOKEN struct: a 4-byte little-endian length, then the token as UTF-16-LE (pyodbc's documented recipe).
SQL_COPT_SS_ACCESS_TOKEN = 1256


def access_token_struct(token: str) -> bytes:
    """The ACCESSTOKEN struct for an Entra ID access token (the JWT text)."""
    raw = token.strip().encode("utf-16-le")
    return struct.pack(f"<I{len(raw)}s", len(raw), raw)


_OBJECT = "OBJECT_ID(QUOTENAME(?) + N'.' + QUOTENAME(?))"

# Tables (U), views (V), external tables (ET, PolyBase / Azure SQL) and synonyms (SN). The tools' `kind` is
# "table" or "view": an external table reads like a table, a synonym like a view (a name for another object).
LIST_TABLES = """
SELECT s.name, o.name,
       CASE o.type WHEN 'V' THEN 'view' WHEN 'SN' THEN 'view' ELSE 'table' END,
       (SELECT SUM(p.rows) FROM sys.partitions AS p WHERE p.object_id = o.object_id AND p.index_id IN (0, 1))
FROM sys.objects AS o
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
WHERE o.type IN ('U', 'V', 'ET', 'SN') AND o.is_ms_shipped = 0
ORDER BY s.name, o.name
"""
# The object a name stands for: a synonym's base object when the name is a synonym, else the object itself.
# Two parameter pairs (schema, name), bound twice.
_TARGET = (
    f"COALESCE((SELECT OBJECT_ID(sn.base_object_name) FROM sys.synonyms AS sn WHERE sn.object_id = {_OBJECT}), "
    f"{_OBJECT})"
)
# Alias types show their own name when the login can see the type, else the base type (never "None"). A default
# needs VIEW DEFINITION to be read: without it OBJECT_DEFINITION is NULL while default_object_id still says one
# exists. The flags: identity, computed, hidden (temporal period columns), GENERATED ALWAYS (1/2 = row start/end;
# 2019+ and Azure SQL, where the column exists on every edition). system_type_id gives the CAST type for keys.
COLUMNS = f"""
SELECT c.name, COALESCE(TYPE_NAME(c.user_type_id), TYPE_NAME(c.system_type_id)), c.max_length, c.precision,
       c.scale, c.is_nullable, OBJECT_DEFINITION(c.default_object_id), c.default_object_id, c.is_identity,
       c.is_computed, c.is_hidden, c.generated_always_type, TYPE_NAME(c.system_type_id)
FROM sys.columns AS c
WHERE c.object_id = {_TARGET}
ORDER BY c.column_id
"""
PRIMARY_KEY = f"""
SELECT c.name
FROM sys.indexes AS i
JOIN sys.index_columns AS ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id
JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
WHERE i.object_id = {_TARGET} AND i.is_primary_key = 1
ORDER BY ic.key_ordinal
"""
# Referenced names by function, not by joins: a join to sys.objects/sys.columns drops the foreign key when the
# login cannot see the referenced table (another schema); the functions return NULL there and the key stays.
FOREIGN_KEYS = f"""
SELECT fk.name, OBJECT_SCHEMA_NAME(fkc.referenced_object_id), OBJECT_NAME(fkc.referenced_object_id), pc.name,
       COL_NAME(fkc.referenced_object_id, fkc.referenced_column_id), fkc.referenced_object_id
FROM sys.foreign_keys AS fk
JOIN sys.foreign_key_columns AS fkc ON fkc.constraint_object_id = fk.object_id
JOIN sys.columns AS pc ON pc.object_id = fkc.parent_object_id AND pc.column_id = fkc.parent_column_id
WHERE fk.parent_object_id = {_TARGET}
ORDER BY fk.name, fkc.constraint_column_id
"""
# Columnstore indexes (type 5 clustered, 6 nonclustered) mark every column as included with key_ordinal 0:
# they are listed with their columns in column order. Hypothetical (DTA leftovers) and disabled indexes serve
# no query and are left out.
INDEXES = f"""
SELECT i.name, i.is_unique, c.name
FROM sys.indexes AS i
JOIN sys.index_columns AS ic ON ic.object_id = i.object_id AND ic.index_id = i.index_id
JOIN sys.columns AS c ON c.object_id = ic.object_id AND c.column_id = ic.column_id
WHERE i.object_id = {_TARGET} AND i.type > 0 AND i.is_primary_key = 0 AND i.is_hypothetical = 0
  AND i.is_disabled = 0 AND (ic.is_included_column = 0 OR i.type IN (5, 6))
ORDER BY i.name, ic.key_ordinal, ic.index_column_id
"""
# A default the login may not read (no VIEW DEFINITION): said so instead of looking like "no default".
HIDDEN_DEFAULT = "(hidden: needs VIEW DEFINITION)"
_GENERATED_ALWAYS = {1: "generated always as row start", 2: "generated always as row end"}
# Types a key value can be CAST to from the bound nvarchar: a base type, optionally with its length/precision.
_CASTABLE_TYPE = re.compile(r"^[a-z0-9_]+(?:\((?:max|\d+(?:,\d+)?)\))?$", re.IGNORECASE)
_NO_CAST_TYPES = frozenset({"int", "bigint", "smallint", "tinyint", "nvarchar", "nchar", "sysname"})
_NOT_CASTABLE = frozenset(
    {"text", "ntext", "image", "xml", "sql_variant", "geography", "geometry", "hierarchyid", "timestamp", "rowversion"}
)

_DTO = struct.Struct("<6hI2h")


def datetimeoffset_to_iso(raw: bytes | None) -> str | None:
    """SQL_SS_TIMESTAMPOFFSET_STRUCT -> '2024-01-02T03:04:05.1234567+02:00'."""
    if raw is None:
        return None
    year, month, day, hour, minute, second, nanos, tz_hour, tz_minute = _DTO.unpack(raw[: _DTO.size])
    text = f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}"
    if nanos:
        text += "." + f"{nanos:09d}".rstrip("0")
    sign = "-" if tz_hour < 0 or tz_minute < 0 else "+"
    return f"{text}{sign}{abs(tz_hour):02d}:{abs(tz_minute):02d}"


def _opaque_to_hex(raw: bytes | None) -> str | None:
    return None if raw is None else binary_to_json(raw)


def top_capped(tree: exp.Expr, limit: int) -> exp.Expr | None:
    """The statement with at most `limit` rows in its outermost SELECT, or None when it needs no change or
    TOP cannot express it (set operations, TOP ... PERCENT / WITH TIES, TOP (@n)): SET ROWCOUNT caps those.
    A smaller TOP or FETCH NEXT the user wrote is kept."""
    if not isinstance(tree, exp.Select):
        return None
    current = tree.args.get("limit")
    if current is None:
        capped = tree.copy()
        if capped.args.get("offset") is not None:  # ORDER BY ... OFFSET n ROWS: TOP is not allowed with OFFSET
            capped.set(
                "limit",
                exp.Fetch(direction="NEXT", count=exp.Literal.number(limit), limit_options=exp.LimitOptions(rows=True)),
            )
        else:
            capped.set("limit", exp.Limit(expression=exp.Literal.number(limit)))
        return capped
    options = current.args.get("limit_options")
    if options is not None and (options.args.get("percent") or options.args.get("with_ties")):
        return None
    key = "count" if isinstance(current, exp.Fetch) else "expression"
    value = current.args.get(key)
    if not (isinstance(value, exp.Literal) and not value.is_string and value.this.isdigit()):
        return None
    if int(value.this) <= limit:
        return None
    capped = tree.copy()
    capped.args["limit"].set(key, exp.Literal.number(limit))
    return capped


def format_type(name: str, max_length: int, precision: int, scale: int) -> str:
    lower = name.lower()
    if lower in ("varchar", "char", "varbinary", "binary"):
        return f"{name}({'max' if max_length == -1 else max_length})"
    if lower in ("nvarchar", "nchar"):
        return f"{name}({'max' if max_length == -1 else max_length // 2})"
    if lower in ("decimal", "numeric"):
        return f"{name}({precision},{scale})"
    if lower in ("datetime2", "datetimeoffset", "time"):
        return f"{name}({scale})"
    return name


def column_from_catalog(row: Sequence[Any], primary_key: list[str]) -> Column:
    """One COLUMNS row as a Column: type like SSMS shows it, the default (or that it is hidden), flags."""
    (
        name,
        tname,
        length,
        prec,
        scale,
        nullable,
        default,
        default_id,
        identity,
        computed,
        hidden,
        generated,
        system_type,
    ) = row
    flags = [flag for flag, on in (("identity", identity), ("computed", computed), ("hidden", hidden)) if on]
    if generated:
        flags.append(_GENERATED_ALWAYS.get(int(generated), "generated always"))
    shown_default = str(default) if default is not None else (HIDDEN_DEFAULT if default_id else None)
    base = None if system_type is None else format_type(str(system_type), int(length), int(prec), int(scale))
    return Column(
        name=str(name),
        type=format_type(str(tname), int(length), int(prec), int(scale)),
        nullable=bool(nullable),
        default=shown_default,
        primary_key=name in primary_key,
        flags=flags,
        base_type=base,
    )


def referenced_name(schema: str | None, name: str | None, object_id: int | None) -> str:
    """schema.table of a foreign key's target, or a placeholder naming its object id when the login cannot
    see it (the key is kept: the model still learns the column points somewhere)."""
    if schema is not None and name is not None:
        return f"{schema}.{name}"
    return f"(object {object_id}, not visible to this login)"


class MssqlDialect(Dialect):
    name = "mssql"
    sqlglot = "tsql"
    label = "Microsoft SQL Server (T-SQL)"
    engine = "SQL Server"
    limit_syntax = "TOP n"
    limit_example = "SELECT TOP (n)"
    schema_words = "SQL Server schemas such as dbo, the default one"
    sql_tips = (
        'SQL dialect: T-SQL. Use TOP n (not LIMIT), [brackets] or "double quotes" for names, '
        "schema-qualified names such as dbo.Orders, and INFORMATION_SCHEMA or sys.* views for metadata."
    )
    default_schema = "dbo"
    list_tables_sql = LIST_TABLES

    def driver(self) -> str:
        return self.settings.mssql_driver.strip().strip("{}")

    def named_instance(self) -> bool:
        """host\\INSTANCE on the default port: SQL Browser finds the port."""
        return "\\" in self.settings.mssql_host and self.settings.mssql_port == 1433

    def server(self) -> str:
        host = self.settings.mssql_host.strip()
        if self.named_instance():
            return host
        return f"{host},{self.settings.mssql_port}"

    def connect_kwargs(self) -> dict[str, Any]:
        kwargs = super().connect_kwargs()
        if str(self.settings.mssql_authentication or "") == "AccessToken" and not self.settings.odbc_connection_string:
            kwargs["attrs_before"] = {SQL_COPT_SS_ACCESS_TOKEN: access_token_struct(self.read_access_token())}
        return kwargs

    def read_access_token(self) -> str:
        """The token file's text, read at every new connection (tokens live about an hour; the helper that
        writes the file renews them). A missing or empty file is a login failure (SQLSTATE 28000), so the pool
        backs off to minutes and says so, like a wrong password."""
        path = self.settings.mssql_access_token_file
        try:
            with open(path, encoding="utf-8") as handle:
                token = handle.read().strip()
        except OSError as exc:
            raise pyodbc.Error("28000", f"[mssql-mcp]MSSQL_ACCESS_TOKEN_FILE {path!r}: {exc.strerror}") from None
        if not token:
            raise pyodbc.Error("28000", f"[mssql-mcp]MSSQL_ACCESS_TOKEN_FILE {path!r} is empty")
        return token

    def login_refused(self, exc: pyodbc.Error, message: str) -> bool:
        """A refused login (class 28), or a TLS set-up the driver refused (untrusted or mismatched certificate):
        configuration errors that retrying every few seconds will not fix (SQLSTATE and driver prefix only)."""
        return super().login_refused(exc, message) or is_tls_failure(exc)

    def build_connection_string(self) -> str:
        s = self.settings
        pairs: list[tuple[str, str | None]] = [
            ("DRIVER", self.driver()),
            ("SERVER", self.server()),
            ("DATABASE", str(s.mssql_database)),
        ]
        auth = str(s.mssql_authentication or "")
        if s.trusted_connection:
            pairs.append(("Trusted_Connection", "yes"))  # Kerberos on Linux: a keytab, see docs/deploy.md
        elif auth == "ActiveDirectoryServicePrincipal":
            pairs += [("Authentication", auth), ("UID", str(s.mssql_user)), ("PWD", str(s.mssql_password))]
        elif auth == "ActiveDirectoryMsi":  # UID: a user-assigned identity's client id; none for system-assigned
            pairs += [("Authentication", auth), ("UID", str(s.mssql_user) or None)]
        elif auth == "AccessToken":
            pass  # no UID/PWD/Authentication: the token goes in before connecting (connect_kwargs)
        else:
            pairs += [("UID", str(s.mssql_user)), ("PWD", str(s.mssql_password))]
        pairs += [
            ("Encrypt", str(s.mssql_encrypt)),
            ("TrustServerCertificate", "yes" if s.trust_server_certificate else "no"),
            ("ApplicationIntent", "ReadOnly" if s.mssql_read_only_intent else None),
            # Every listener address at once: an AG failover or a multi-subnet listener connects in seconds,
            # not after a timeout per address. The driver refuses it with a named instance (no SQL Browser).
            ("MultiSubnetFailover", "Yes" if s.mssql_multi_subnet_failover and not self.named_instance() else None),
            ("APP", "mssql-mcp"),
        ]
        return connection_string(pairs, braced=frozenset({"DRIVER", "PWD"}))

    def secrets(self) -> tuple[str, ...]:
        return tuple(x for x in (self.settings.mssql_password, *super().secrets()) if x)

    def setup_connection(self, conn: pyodbc.Connection) -> None:
        conn.add_output_converter(SQL_SS_TIMESTAMPOFFSET, datetimeoffset_to_iso)
        conn.add_output_converter(SQL_SS_UDT, _opaque_to_hex)
        conn.timeout = self.server_timeout_seconds  # SQL_ATTR_QUERY_TIMEOUT for every cursor
        cursor = conn.cursor()
        try:
            cursor.execute(self.session_sql())
        finally:
            cursor.close()
        conn.commit()

    def text_size_bytes(self) -> int:
        """SET TEXTSIZE: the bytes of a (max)/LOB value the server sends. Twice the byte cap plus 2, so a
        value it cuts is longer than the cap in JSON (nvarchar is 2 bytes a character, binary is hex) and is
        never shown as if whole."""
        return min(2_147_483_647, 2 * self.settings.max_result_bytes + 2)

    def session_sql(self) -> str:
        """The session's settings, run at connect and again after a write (our own pool has no
        sp_reset_connection: re-running this batch puts back what a writer's SET could have changed)."""
        statements = [
            f"SET LOCK_TIMEOUT {self.settings.mssql_lock_timeout_ms}",
            "SET XACT_ABORT ON",
            # Our reads lose a deadlock, not the application's writers; a read chosen as the victim (1205,
            # SQLSTATE 40001) is run once more by the pool (Worker._execute).
            "SET DEADLOCK_PRIORITY LOW",
            f"SET TEXTSIZE {self.text_size_bytes()}",
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        ]
        if self.settings.read_only_mode:
            statements.append(f"SET ROWCOUNT {self.settings.max_rows + 1}")
        else:
            statements.append("SET ROWCOUNT 0")  # writes must never stop after N rows
        return "; ".join(x for x in statements if x) + ";"

    needs_columns = False  # TEXTSIZE cuts wide values on the server; no probe, no wrapper

    def plan_read(
        self,
        sql: str,
        tree: exp.Expr | None,
        max_rows: int,
        max_bytes: int,
        description: Sequence[Sequence[Any]] | None,
    ) -> ReadPlan:
        """TOP (max_rows + 1) in the outermost SELECT (T-SQL allows no ORDER BY in a derived table, so no
        wrapper); the statement is regenerated by sqlglot only when the cap changes it."""
        capped = top_capped(tree, int(max_rows) + 1) if tree is not None else None
        return ReadPlan(sql if capped is None else capped.sql(dialect="tsql"))

    def end_call(self, conn: pyodbc.Connection, cursor: pyodbc.Cursor, *, guarded_read: bool) -> None:
        conn.rollback()
        if not guarded_read:  # a write, a failure or a job of our own: put the session settings back
            cursor.execute(self.session_sql())
            conn.commit()

    def quote_identifier(self, name: str) -> str:
        return "[" + name.replace("]", "]]") + "]"

    def sample_sql(self, table: TableInfo, limit: int) -> str:
        return f"SELECT TOP ({int(limit)}) * FROM {self.table_sql(table)}"

    def row_sql(
        self, table: TableInfo, columns: Sequence[str], column_types: Sequence[str | None] | None = None
    ) -> str:
        """Key values arrive as text and pyodbc binds text as nvarchar: compared as is, a datetime key with
        fractions fails (Msg 241), a binary key fails (Msg 257) and a varchar key under a SQL_* collation
        scans. So each key is `CAST(? AS <the column's base type>)`; integer keys are bound as integers
        (Database._coerce) and nvarchar keys already match."""
        types = list(column_types or [None] * len(columns))
        where = " AND ".join(
            f"{self.quote_identifier(c)} = {self.key_parameter(t)}" for c, t in zip(columns, types, strict=True)
        )
        return f"SELECT TOP (2) * FROM {self.table_sql(table)} WHERE {where}"

    @staticmethod
    def key_parameter(column_type: str | None) -> str:
        if not column_type:
            return "?"
        text = column_type.strip()
        base = text.split("(", 1)[0].lower()
        if base in _NO_CAST_TYPES or base in _NOT_CASTABLE or not _CASTABLE_TYPE.match(text):
            return "?"
        if base in ("binary", "varbinary"):  # keys arrive as "0x..." text: style 1 reads the hex digits
            return f"CONVERT({text}, ?, 1)"
        return f"CAST(? AS {text})"

    def describe_table(self, cursor: pyodbc.Cursor, table: TableInfo) -> TableDescription:
        key = (table.schema or self.default_schema, table.name) * 2  # _TARGET binds the name twice
        cursor.execute(PRIMARY_KEY, *key)
        primary_key = [str(name) for (name,) in cursor.fetchall()]
        cursor.execute(COLUMNS, *key)
        columns = [column_from_catalog(row, primary_key) for row in cursor.fetchall()]
        cursor.execute(FOREIGN_KEYS, *key)
        fks: dict[str, ForeignKey] = {}
        for name, ref_schema, ref_table, col, ref_col, ref_id in cursor.fetchall():
            fk = fks.setdefault(
                str(name),
                ForeignKey(
                    columns=[],
                    references_table=referenced_name(ref_schema, ref_table, ref_id),
                    references_columns=[],
                    name=str(name),
                ),
            )
            fk.columns.append(str(col))
            fk.references_columns.append("?" if ref_col is None else str(ref_col))
        cursor.execute(INDEXES, *key)
        indexes: dict[str, Index] = {}
        for name, unique, col in cursor.fetchall():
            indexes.setdefault(str(name), Index(name=str(name), columns=[], unique=bool(unique))).columns.append(
                str(col)
            )
        return TableDescription(
            table=table,
            columns=columns,
            primary_key=primary_key,
            foreign_keys=list(fks.values()),
            indexes=list(indexes.values()),
        )

    # --- content search (app/tools/search.py); T-SQL checked by sqlglot in tests/test_chatgpt_search.py ---
    # Every column of every user table and view in one query (alias types fall back to their base type).
    all_columns_sql = """
SELECT s.name, o.name, c.name, COALESCE(TYPE_NAME(c.user_type_id), TYPE_NAME(c.system_type_id)),
       COALESCE(ic.key_ordinal, 0)
FROM sys.columns AS c
JOIN sys.objects AS o ON o.object_id = c.object_id
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
LEFT JOIN sys.indexes AS pk ON pk.object_id = o.object_id AND pk.is_primary_key = 1
LEFT JOIN sys.index_columns AS ic
  ON ic.object_id = pk.object_id AND ic.index_id = pk.index_id AND ic.column_id = c.column_id
WHERE o.type IN ('U', 'V') AND o.is_ms_shipped = 0
ORDER BY s.name, o.name, c.column_id
"""
    # Columns with a full-text index, and the index's key column: (schema, table, column, key_column).
    fulltext_columns_sql = """
SELECT s.name, o.name, c.name, kc.name
FROM sys.fulltext_index_columns AS fic
JOIN sys.fulltext_indexes AS fi ON fi.object_id = fic.object_id
JOIN sys.objects AS o ON o.object_id = fic.object_id
JOIN sys.schemas AS s ON s.schema_id = o.schema_id
JOIN sys.columns AS c ON c.object_id = fic.object_id AND c.column_id = fic.column_id
JOIN sys.index_columns AS ic ON ic.object_id = fi.object_id AND ic.index_id = fi.unique_index_id
JOIN sys.columns AS kc ON kc.object_id = ic.object_id AND kc.column_id = ic.column_id
WHERE fi.is_enabled = 1
ORDER BY s.name, o.name, c.name
"""

    def match_sql(self, column: str) -> str:
        # The column's collation decides case (CI by default); no LOWER() so an index can still help.
        return f"CAST({self.quote_identifier(column)} AS nvarchar(4000)) LIKE ? ESCAPE '\\'"

    def fulltext_search_sql(
        self, table: TableInfo, key_column: str, shown: list[str], columns: list[str], index_name: str = ""
    ) -> str:
        """CONTAINSTABLE over the full-text indexed `columns`, best rank first; one bound parameter: the
        search condition (see fulltext_condition). The row cap is added by Database.read."""
        q = self.quote_identifier
        listed = ", ".join(f"t.{q(c)}" for c in dict.fromkeys(shown))
        return (
            f"SELECT {listed}, k.[RANK] AS mcp_rank FROM {self.table_sql(table)} AS t "
            f"INNER JOIN CONTAINSTABLE({self.table_sql(table)}, ({', '.join(q(c) for c in columns)}), ?) AS k "
            f"ON t.{q(key_column)} = k.[KEY] ORDER BY k.[RANK] DESC"
        )

    def referencing_sql(self, table: TableInfo) -> tuple[str, list[Any]]:
        return (
            """
SELECT cs.name, co.name, cc.name, pcol.name, fk.name
FROM sys.foreign_key_columns AS fkc
JOIN sys.foreign_keys AS fk ON fk.object_id = fkc.constraint_object_id
JOIN sys.objects AS co ON co.object_id = fkc.parent_object_id
JOIN sys.schemas AS cs ON cs.schema_id = co.schema_id
JOIN sys.columns AS cc ON cc.object_id = fkc.parent_object_id AND cc.column_id = fkc.parent_column_id
JOIN sys.columns AS pcol ON pcol.object_id = fkc.referenced_object_id AND pcol.column_id = fkc.referenced_column_id
WHERE fkc.referenced_object_id = OBJECT_ID(?)
ORDER BY cs.name, co.name, fk.name, fkc.constraint_column_id
""",
            [self.table_sql(table)],
        )

    def fulltext_condition(self, terms: list[str]) -> str:
        """Prefix terms joined by OR: `"tokyo*" OR "widget*"` (double quotes inside a term are dropped)."""
        return " OR ".join(f'"{term.replace(chr(34), "")}*"' for term in terms if term.replace('"', ""))
