"""Read-only guard: a statement passes only if sqlglot proves it is exactly one read query.

Policy (docs/database.md has the user-facing version):
- parse in the backend's own dialect (tsql, postgres, sqlite); anything that does not parse is refused,
  because what cannot be parsed cannot be proven harmless;
- exactly one statement, whose root is a query: SELECT, a set operation (UNION/INTERSECT/EXCEPT),
  WITH ... SELECT, VALUES (or one of those in parentheses);
- nothing anywhere in the tree may write or lock: no DML/DDL nodes (this catches data-modifying CTEs),
  no SELECT ... INTO, no FOR UPDATE/SHARE, no exclusive table hints, no deny-listed functions
  (file access, external data sources, sleeping, sequences, server control);
- lexical tricks where sqlglot and the engine could disagree are refused outright: nested block
  comments (SQL Server and PostgreSQL nest them, SQLite does not), control and invisible characters,
  and, for T-SQL, statement keywords that sqlglot would read as a bare alias (`SELECT 1 SHUTDOWN` is two
  statements to SQL Server, which needs no semicolons).

The guard is one layer: reads also run in a transaction that is always rolled back, SQLite opens the file
read-only and PostgreSQL sessions are read-only. Verdicts are cached by SQL text (LRU), so repeated
queries cost a dictionary lookup.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from functools import lru_cache

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from .types import QueryRefused

# sqlglot logs a warning for every statement it falls back to parsing as a Command; the guard refuses
# those anyway, so the warning is noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

MAX_SQL_CHARS = 100_000
_CACHE_MAX_TEXT = 16_384  # longer statements are checked every time instead of pinning memory in the cache

REASONS = (
    "empty", "too_long", "invisible_character", "parse_error", "nested_comment", "reserved_word",
    "multiple_statements", "not_a_query", "data_modifying", "select_into", "locking_clause", "denied_function",
)

# T-SQL needs no semicolons between statements, so a statement keyword that sqlglot accepts as an alias or
# column name (`SELECT 1 SHUTDOWN`, `SELECT 1 x WAITFOR ...`) would start a second statement on the server.
# These are all reserved words in T-SQL: as unquoted identifiers SQL Server itself would reject them.
_TSQL_STATEMENT_WORDS = frozenset({
    "ALTER", "BACKUP", "BEGIN", "BREAK", "BULK", "CHECKPOINT", "CLOSE", "COMMIT", "CONTINUE", "CREATE", "DBCC",
    "DEALLOCATE", "DECLARE", "DELETE", "DENY", "DROP", "DUMP", "EXEC", "EXECUTE", "FETCH", "GOTO", "GRANT", "IF",
    "INSERT", "KILL", "LOAD", "MERGE", "OPEN", "PRINT", "RAISERROR", "READTEXT", "RECONFIGURE", "RESTORE",
    "RETURN", "REVERT", "REVOKE", "ROLLBACK", "SAVE", "SELECT", "SET", "SETUSER", "SHUTDOWN", "TRUNCATE",
    "UPDATE", "UPDATETEXT", "USE", "WAITFOR", "WHILE", "WRITETEXT",
})

# Functions refused in every dialect, by exact (lower-case) name, with the reason shown to the user.
_DENIED_FUNCTIONS: dict[str, str] = {
    # SQL Server: external data sources and server files
    "openrowset": "reads external data sources or files",
    "openquery": "runs a query on a linked server",
    "opendatasource": "connects to an external data source",
    "openxml": "needs a prepared XML document handle (sp_xml_preparedocument)",
    "fn_get_audit_file": "reads server files",
    "fn_xe_file_target_read_file": "reads server files",
    "fn_trace_gettable": "reads server files",
    "fn_dblog": "reads the transaction log",
    "fn_dump_dblog": "reads log backups",
    # PostgreSQL: server files, sleeping, sequences, settings, session control, side channels
    "pg_read_file": "reads server files",
    "pg_read_binary_file": "reads server files",
    "pg_stat_file": "reads server file metadata",
    "pg_terminate_backend": "terminates other sessions",
    "pg_cancel_backend": "cancels other sessions' queries",
    "set_config": "changes session settings",
    "nextval": "advances a sequence (a write)",
    "setval": "changes a sequence (a write)",
    "pg_notify": "sends notifications",
    "pg_reload_conf": "reloads the server configuration",
    "pg_rotate_logfile": "controls the server",
    "pg_promote": "controls the server",
    "pg_switch_wal": "controls the server",
    "pg_create_restore_point": "controls the server",
    "pg_log_backend_memory_contexts": "controls the server",
    "pg_import_system_collations": "writes the catalog",
    "pg_export_snapshot": "exports a snapshot",
    "pg_logdir_ls": "lists server files",
    "pg_truncate_visibility_map": "writes to the server",
    # SQLite: extensions and file access (shell/extension functions)
    "load_extension": "loads native code into the server",
    "writefile": "writes files",
    "readfile": "reads files",
    "fts3_tokenizer": "can register native code pointers",
    "edit": "starts an editor",
    "fsdir": "lists files",
    "zipfile": "reads archives from disk",
}
# Name prefixes refused in every dialect.
_DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("pg_read_", "reads server files"),
    ("pg_ls_", "lists server files"),
    ("pg_sleep", "sleeps and holds a connection"),
    ("lo_", "uses large objects (server-side file import/export)"),
    ("dblink", "connects to another database"),
    ("pg_advisory", "takes advisory locks"),
    ("pg_try_advisory", "takes advisory locks"),
    ("pg_stat_reset", "resets server statistics"),
    ("pg_create_", "controls replication or the server"),
    ("pg_drop_", "controls replication"),
    ("pg_replication_", "controls replication"),
    ("pg_logical_", "controls replication"),
    ("pg_wal_", "controls the server"),
    ("pg_backup_", "controls backups"),
    ("pg_start_backup", "controls backups"),
    ("pg_stop_backup", "controls backups"),
    ("pg_file_", "writes server files"),
    ("txid_", "assigns transaction ids"),
    ("pg_current_xact_id", "assigns transaction ids"),
    ("query_to_xml", "runs a query given as text"),
    ("cursor_to_xml", "reads from a cursor"),
)
# T-SQL only: extended and system stored procedures (also as table sources).
_TSQL_DENIED_PREFIXES: tuple[tuple[str, str], ...] = (
    ("xp_", "is an extended stored procedure"),
    ("sp_", "is a system stored procedure"),
)
# SQL Server table hints that take update/exclusive locks or hold shared locks to the end of the transaction.
_DENIED_HINTS = frozenset({
    "UPDLOCK", "XLOCK", "TABLOCK", "TABLOCKX", "HOLDLOCK", "PAGLOCK", "SERIALIZABLE", "REPEATABLEREAD",
})

_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Values)
_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_NOT_QUERY = (
    exp.Create, exp.Drop, exp.Alter, exp.TruncateTable, exp.Command, exp.Copy, exp.Grant, exp.Revoke,
    exp.Transaction, exp.Commit, exp.Rollback, exp.Set, exp.Use, exp.Execute, exp.Pragma, exp.Attach,
    exp.Detach, exp.Kill, exp.Analyze, exp.Declare, exp.LoadData, exp.Cache, exp.Uncache, exp.Refresh,
)
_ALLOWED_CONTROL = frozenset("\t\n\r\f\v")
_SQLGLOT_DIALECTS = {"mssql": "tsql", "tsql": "tsql", "postgres": "postgres", "sqlite": "sqlite"}


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None
    message: str | None = None
    root: str | None = None  # for allowed queries: "select", "union", "intersect", "except", "values"

    def raise_if_refused(self) -> None:
        if not self.allowed:
            raise QueryRefused(self.reason or "refused", self.message or "refused")


def _refuse(reason: str, what: str) -> Verdict:
    return Verdict(False, reason, f"Refused in read-only mode: {what}")


def check(sql: str, dialect: str) -> Verdict:
    """The guard's verdict for `sql` in `dialect` ("mssql"/"tsql", "postgres", "sqlite"); never raises."""
    if not isinstance(sql, str):
        return _refuse("empty", "the query must be text.")
    glot = _SQLGLOT_DIALECTS.get(dialect, dialect)
    if len(sql) <= _CACHE_MAX_TEXT:
        return _cached_check(sql, glot)
    return _check(sql, glot)


def enforce(sql: str, dialect: str) -> None:
    """Raise QueryRefused unless `sql` is a single read query."""
    check(sql, dialect).raise_if_refused()


def is_read_only(sql: str, dialect: str) -> bool:
    return check(sql, dialect).allowed


@lru_cache(maxsize=2048)
def _cached_check(sql: str, glot: str) -> Verdict:
    return _check(sql, glot)


def _check(sql: str, glot: str) -> Verdict:
    if not sql.strip():
        return _refuse("empty", "the query is empty; send one SELECT statement.")
    if len(sql) > MAX_SQL_CHARS:
        return _refuse("too_long", f"the query is longer than {MAX_SQL_CHARS:,} characters.")
    bad = _first_hidden_character(sql)
    if bad is not None:
        return _refuse("invisible_character",
                       f"the text contains the control or invisible character U+{ord(bad):04X}, which can hide "
                       "code from a reader; remove it.")
    dialect = Dialect.get_or_raise(glot)
    try:
        tokens = dialect.tokenize(sql)
    except TokenError as exc:
        return _refuse("parse_error", f"the text could not be tokenized as {glot} SQL ({_short(exc)}), so it "
                                      "cannot be proven read-only.")
    lexical = _lexical_checks(tokens, glot)
    if lexical is not None:
        return lexical
    try:
        statements = dialect.parser().parse(tokens, sql)
    except ParseError as exc:
        return _refuse("parse_error", f"the statement could not be parsed as {glot} SQL ({_short(exc)}), so it "
                                      "cannot be proven read-only.")
    statements = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not statements:
        return _refuse("empty", "the text contains no statement; send one SELECT statement.")
    if len(statements) > 1:
        return _refuse("multiple_statements",
                       f"the text contains {len(statements)} statements; send exactly one read query.")
    verdict = _tree_checks(statements[0], tokens, glot)
    if verdict.allowed and glot == "tsql":
        return _hidden_statement_check(tokens) or verdict
    return verdict


def _first_hidden_character(sql: str) -> str | None:
    for ch in sql:
        if ch.isascii():
            if (ch < " " and ch not in _ALLOWED_CONTROL) or ch == "\x7f":
                return ch
        elif unicodedata.category(ch) in ("Cc", "Cf"):  # C1 controls, zero-width and bidi override characters
            return ch
    return None


def _lexical_checks(tokens: list, glot: str) -> Verdict | None:
    for index, token in enumerate(tokens):
        for comment in token.comments or ():
            if "/*" in comment:
                return _refuse("nested_comment",
                               "the text contains a nested block comment, which database engines read "
                               "differently; remove the inner '/*'.")
        if glot == "tsql" and token.token_type == TokenType.VAR and token.text.upper() in _TSQL_STATEMENT_WORDS:
            if index == 0:
                return _refuse("not_a_query", f"{token.text.upper()} is not a read query; only SELECT, WITH ... "
                                              "SELECT, UNION/INTERSECT/EXCEPT and VALUES are allowed.")
            return _refuse("reserved_word",
                           f"'{token.text}' is a T-SQL statement keyword; SQL Server would run it as a separate "
                           "statement. Quote it as [name] if it is a column or alias.")
    return None


# Statement words that also occur inside an ordinary read (`OFFSET ... FETCH NEXT`, subqueries).
_WORDS_INSIDE_READS = frozenset({"SELECT", "FETCH"})


def _hidden_statement_check(tokens: list) -> Verdict | None:
    """Refuse a T-SQL statement keyword inside a query the tree checks allowed.

    sqlglot reads `SELECT 1\nDELETE FROM t` as `SELECT 1 AS [DELETE] FROM t`, but SQL Server runs two
    statements, so such a keyword after the first token is refused whatever token type sqlglot gave it
    (VAR, or the keyword's own type such as DELETE, DROP, EXECUTE); string literals and [quoted]
    identifiers are text, not keywords.
    """
    for token in tokens[1:]:
        word = token.text.upper()
        kind = token.token_type
        if (word in _TSQL_STATEMENT_WORDS and word not in _WORDS_INSIDE_READS
                and kind != TokenType.IDENTIFIER and "STRING" not in kind.name):
            return _refuse("reserved_word",
                           f"'{token.text}' is a T-SQL statement keyword; SQL Server would run it as a separate "
                           "statement. Quote it as [name] if it is a column or alias.")
    return None


def _statement_kind(root: exp.Expression, tokens: list) -> str:
    if isinstance(root, _DML + _NOT_QUERY) and not isinstance(root, exp.Command):
        return root.key.upper()
    if isinstance(root, exp.Command):
        return str(root.this).upper()
    return tokens[0].text.upper() if tokens else root.key.upper()


def _tree_checks(root: exp.Expression, tokens: list, glot: str) -> Verdict:
    body = root
    while isinstance(body, exp.Subquery | exp.Paren):
        body = body.this
    if not isinstance(body, _QUERY_ROOTS):
        kind = _statement_kind(root, tokens)
        if isinstance(root, _DML):
            kind = f"{kind} (a data-modifying statement)"
        return _refuse("not_a_query",
                       f"{kind} is not a read query; only SELECT, WITH ... SELECT, UNION/INTERSECT/EXCEPT and "
                       "VALUES are allowed.")
    if isinstance(body, exp.Select) and not body.expressions:
        return _refuse("parse_error", "the SELECT has no select list, so it is incomplete.")
    for node in root.walk():
        verdict = _node_check(node, glot)
        if verdict is not None:
            return verdict
    return Verdict(True, root=body.key)


def _node_check(node: exp.Expression, glot: str) -> Verdict | None:
    if isinstance(node, _DML):
        return _refuse("data_modifying",
                       f"the query contains a {node.key.upper()} (for example inside a WITH clause); "
                       "data-modifying statements are not allowed.")
    if isinstance(node, _NOT_QUERY):
        return _refuse("not_a_query", f"the query contains a {_node_name(node)} statement; only reads are allowed.")
    if isinstance(node, exp.Into):
        return _refuse("select_into", "SELECT ... INTO creates a table; remove INTO to read the rows.")
    if isinstance(node, exp.Lock):
        return _refuse("locking_clause",
                       "FOR UPDATE/FOR SHARE takes row locks meant for writing; remove the locking clause.")
    if isinstance(node, exp.WithTableHint):
        for hint in node.expressions:
            name = (hint.name or hint.sql(glot)).upper()
            if name in _DENIED_HINTS:
                return _refuse("locking_clause",
                               f"the table hint {name} takes update or exclusive locks; use no hint or NOLOCK.")
        return None
    if isinstance(node, exp.NextValueFor):
        return _refuse("denied_function", "NEXT VALUE FOR advances a sequence, which is a write.")
    if isinstance(node, exp.Func):
        return _function_check(node, glot)
    if glot == "tsql" and isinstance(node, exp.Table):
        name = node.name.lower()
        for prefix, why in _TSQL_DENIED_PREFIXES:
            if name.startswith(prefix):
                return _refuse("denied_function", f"{node.name} {why}; procedures cannot be used in a query.")
    return None


def _node_name(node: exp.Expression) -> str:
    if isinstance(node, exp.Command):
        return str(node.this).upper()
    return node.key.upper()


def _function_check(node: exp.Func, glot: str) -> Verdict | None:
    # Anonymous: a name sqlglot does not know (pg_sleep, OPENROWSET); others: its canonical SQL name.
    anonymous = isinstance(node, exp.Anonymous)
    names = {node.name.lower()} if anonymous else {node.sql_name().lower(), node.key.lower()}
    for name in names:
        why = _DENIED_FUNCTIONS.get(name)
        if why is None:
            prefixes = _DENIED_PREFIXES + (_TSQL_DENIED_PREFIXES if glot == "tsql" else ())
            why = next((w for prefix, w in prefixes if name.startswith(prefix)), None)
        if why is not None:
            return _refuse("denied_function", f"the function {name.upper()} is not allowed: it {why}.")
    return None


def _short(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        desc = str(first.get("description") or "syntax error")
        line, col = first.get("line"), first.get("col")
        return f"{desc} at line {line}, column {col}" if line else desc
    text = str(exc).split("\n", 1)[0]
    return text.replace("\x1b[4m", "").replace("\x1b[0m", "")[:200]
