"""Read-only guard: a statement passes only if sqlglot proves it is exactly one read query that uses
nothing but allowlisted functions, catalog views and hints.

Policy (docs/database.md "Read-only guard" has the user-facing version):
- parse in the backend's own dialect (tsql, postgres, sqlite) once; anything that does not parse is
  refused, because what cannot be parsed cannot be proven harmless. Depth and size are limited before
  and during the parse, and any failure inside the guard is a refusal, never an exception;
- exactly one statement, whose root is a query: SELECT, a set operation (UNION/INTERSECT/EXCEPT),
  WITH ... SELECT, VALUES (or one of those in parentheses);
- nothing anywhere in the tree may write or lock: no DML/DDL nodes (this catches data-modifying CTEs),
  no SELECT ... INTO, no FOR UPDATE/SHARE;
- **allowlist**: every function call (by the name as written, after identifier normalisation: quotes,
  brackets, case, PostgreSQL U&"..." escapes), every system catalog table or view, every T-SQL table hint,
  join hint and query option must be on the dialect's list in app/db/allowlists/<dialect>.txt (or in
  GUARD_EXTRA_FUNCTIONS). Names in allowlists/never.txt are refused whatever the lists say;
- ambiguous parses are refused: a T-SQL table followed by a parenthesised list (`dbo.Orders (HOLDLOCK)`)
  that is not an allowlisted table-valued function; four-part (linked-server) names;
- lexical tricks where sqlglot and the engine could disagree are refused outright: nested block
  comments, control, invisible and lone-surrogate characters, and, for T-SQL, statement keywords that
  sqlglot would read as a bare alias (`SELECT 1 SHUTDOWN` is two statements to SQL Server).

A few T-SQL read constructs sqlglot cannot parse (OPTION (USE HINT / TABLE HINT), WITH XMLNAMESPACES,
CHANGETABLE(CHANGES ...), graph MATCH, TRY_PARSE ... USING, WITH (INDEX = ix)) are checked token by token
and then rewritten narrowly into a form sqlglot parses; `Verdict.rewritten` says so.

The guard is one layer: reads also run in a transaction that is always rolled back, SQLite opens the file
read-only and PostgreSQL sessions are read-only. Verdicts are cached by SQL text (LRU), so repeated
queries cost a dictionary lookup; a cached verdict's `tree` is shared, so callers copy it before changing it.
"""

from __future__ import annotations

import itertools
import logging
import re
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from typing import TYPE_CHECKING

from sqlglot import exp
from sqlglot.dialects.dialect import Dialect
from sqlglot.errors import ParseError, TokenError
from sqlglot.tokens import TokenType

from .dialects import DIALECTS
from .shape import SelectShape, select_shape_of
from .types import QueryRefused

if TYPE_CHECKING:
    from ..settings import Settings

# sqlglot logs a warning for every statement it falls back to parsing as a Command; the guard refuses
# those anyway, so the warning is noise.
logging.getLogger("sqlglot").setLevel(logging.ERROR)

MAX_SQL_CHARS = 100_000
MAX_NESTING = 200  # parentheses deep; real reads stay far below, the parser recurses per level
MAX_TREE_DEPTH = 1_000  # syntax-tree depth (long operator chains nest without parentheses)
_CACHE_MAX_TEXT = 16_384  # longer statements are checked every time instead of pinning memory in the cache

REASONS = (
    "empty",
    "too_long",
    "invisible_character",
    "invalid_unicode",
    "too_deep",
    "parse_error",
    "nested_comment",
    "reserved_word",
    "multiple_statements",
    "not_a_query",
    "data_modifying",
    "select_into",
    "locking_clause",
    "denied_function",
    "denied_object",
    "denied_hint",
    "ambiguous",
    "linked_server",
)

# T-SQL needs no semicolons between statements, so a statement keyword that sqlglot accepts as an alias or
# column name (`SELECT 1 SHUTDOWN`, `SELECT 1 x WAITFOR ...`) would start a second statement on the server.
# These are all reserved words in T-SQL: as unquoted identifiers SQL Server itself would reject them.
_TSQL_STATEMENT_WORDS = frozenset(
    {
        "ALTER",
        "BACKUP",
        "BEGIN",
        "BREAK",
        "BULK",
        "CHECKPOINT",
        "CLOSE",
        "COMMIT",
        "CONTINUE",
        "CREATE",
        "DBCC",
        "DEALLOCATE",
        "DECLARE",
        "DELETE",
        "DENY",
        "DROP",
        "DUMP",
        "EXEC",
        "EXECUTE",
        "FETCH",
        "GOTO",
        "GRANT",
        "IF",
        "INSERT",
        "KILL",
        "LOAD",
        "MERGE",
        "OPEN",
        "PRINT",
        "RAISERROR",
        "READTEXT",
        "RECONFIGURE",
        "RESTORE",
        "RETURN",
        "REVERT",
        "REVOKE",
        "ROLLBACK",
        "SAVE",
        "SELECT",
        "SET",
        "SETUSER",
        "SHUTDOWN",
        "TRUNCATE",
        "UPDATE",
        "UPDATETEXT",
        "USE",
        "WAITFOR",
        "WHILE",
        "WRITETEXT",
    }
)
# SQL Server table hints that take update/exclusive locks or hold locks to the end of the transaction.
_LOCK_HINTS = frozenset(
    {
        "UPDLOCK",
        "XLOCK",
        "TABLOCK",
        "TABLOCKX",
        "HOLDLOCK",
        "PAGLOCK",
        "ROWLOCK",
        "SERIALIZABLE",
        "REPEATABLEREAD",
    }
)
_JOIN_HINTS = frozenset({"MERGE", "HASH", "LOOP"})  # REMOTE (run the join on the other server) is not listed

_QUERY_ROOTS = (exp.Select, exp.SetOperation, exp.Values)
_DML = (exp.Insert, exp.Update, exp.Delete, exp.Merge)
_NOT_QUERY = (
    exp.Create,
    exp.Drop,
    exp.Alter,
    exp.TruncateTable,
    exp.Command,
    exp.Copy,
    exp.Grant,
    exp.Revoke,
    exp.Transaction,
    exp.Commit,
    exp.Rollback,
    exp.Set,
    exp.Use,
    exp.Execute,
    exp.Pragma,
    exp.Attach,
    exp.Detach,
    exp.Kill,
    exp.Analyze,
    exp.Declare,
    exp.LoadData,
    exp.Cache,
    exp.Uncache,
    exp.Refresh,
)
_ALLOWED_CONTROL = frozenset("\t\n\r\f\v")
# Each dialect names its own sqlglot dialect and engine (app.db.dialects); the guard also takes sqlglot names.
_SQLGLOT_DIALECTS = {
    **{d.name: d.sqlglot for d in DIALECTS.values()},
    **{d.sqlglot: d.sqlglot for d in DIALECTS.values()},
}
_DIALECT_NAMES = {d.sqlglot: d.engine for d in DIALECTS.values()}
_WORD = re.compile(r"^[A-Za-z_][A-Za-z0-9_$#@]*$")
# SQLite eponymous virtual tables that are not sqlite_* or pragma_* names.
_SQLITE_VIRTUAL_TABLES = frozenset({"dbstat", "fsdir", "zipfile", "generate_series", "completion", "carray"})


# --- the lists -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Allowlist:
    """One dialect's lists, lower-case; `functions` already includes the [syntax] names."""

    functions: frozenset[str]
    table_functions: frozenset[str]
    catalog: frozenset[str]
    hints: frozenset[str]
    options: frozenset[str]


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current = sections.setdefault("", [])
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip().lower()
        if not line:
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        else:
            current.append(" ".join(line.split()))
    return sections


@lru_cache(maxsize=8)
def allowlist(glot: str) -> Allowlist:
    """The built-in lists of a sqlglot dialect (tsql, postgres, sqlite), read from app/db/allowlists/."""
    name = {"tsql": "tsql", "postgres": "postgres", "sqlite": "sqlite"}.get(glot)
    if name is None:
        return Allowlist(frozenset(), frozenset(), frozenset(), frozenset(), frozenset())
    text = resources.files(__package__).joinpath("allowlists", f"{name}.txt").read_text(encoding="utf-8")
    parts = _sections(text)
    return Allowlist(
        functions=frozenset(parts.get("functions", []) + parts.get("syntax", [])),
        table_functions=frozenset(parts.get("table_functions", [])),
        catalog=frozenset(parts.get("catalog", [])),
        hints=frozenset(h.upper() for h in parts.get("hints", [])),
        options=frozenset(o.upper() for o in parts.get("options", [])),
    )


@lru_cache(maxsize=1)
def never_list() -> tuple[tuple[str, str], ...]:
    """(name or prefix*, reason) pairs refused in every dialect; GUARD_EXTRA_FUNCTIONS cannot re-allow them."""
    text = resources.files(__package__).joinpath("allowlists", "never.txt").read_text(encoding="utf-8")
    entries = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            name, _, why = line.partition(" ")
            entries.append((name.lower(), why.strip() or "is never allowed"))
    return tuple(entries)


def never_reason(name: str) -> str | None:
    """Why `name` (any case, optionally schema-qualified) can never be allowed, or None."""
    lowered = name.lower()
    candidates = {lowered, lowered.rsplit(".", 1)[-1]}
    for pattern, why in never_list():
        for candidate in candidates:
            if candidate == pattern or (pattern.endswith("*") and candidate.startswith(pattern[:-1])):
                return why
    return None


def parse_extra_functions(raw: str) -> frozenset[str]:
    """GUARD_EXTRA_FUNCTIONS: comma-separated names (optionally schema.name), lower-cased; never-list names
    are dropped (they can never be re-allowed)."""
    names = {" ".join(part.split()).lower() for part in (raw or "").split(",")}
    return frozenset(n for n in names if n and never_reason(n) is None)


def extra_functions(settings: Settings) -> frozenset[str]:
    """GUARD_EXTRA_FUNCTIONS of a settings object, parsed once per distinct value."""
    return _parsed_extra(settings.guard_extra_functions)


@lru_cache(maxsize=8)
def _parsed_extra(raw: str) -> frozenset[str]:
    return parse_extra_functions(raw)


# --- verdicts ----------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    reason: str | None = None
    message: str | None = None
    root: str | None = None  # for allowed queries: "select", "union", "intersect", "except", "values"
    # The parsed, checked statement (allowed queries only). Verdicts are cached and shared between calls:
    # copy it (`verdict.tree.copy()`) before changing it, e.g. to add a TOP/LIMIT. Rendering it gives a
    # statement equivalent to the text (PostgreSQL U& identifiers come out decoded). It is None when the
    # text had to be rewritten in a way that is not equivalent (`rewritten`): run the original text then.
    tree: exp.Expr | None = None
    # True when the checks ran on a narrowly rewritten text (see the module doc).
    rewritten: bool = False
    # For an allowed plain single-table SELECT: its table and which output columns are the table's own (from
    # the checked tree, also when `tree` is None: dropping T-SQL hints changes neither).
    shape: SelectShape | None = None

    def raise_if_refused(self) -> None:
        if not self.allowed:
            raise QueryRefused(self.reason or "refused", self.message or "refused")


def _refuse(reason: str, what: str) -> Verdict:
    return Verdict(False, reason, f"Refused in read-only mode: {what}")


class _Refusal(Exception):
    def __init__(self, verdict: Verdict) -> None:
        super().__init__(verdict.message)
        self.verdict = verdict


def _fail(reason: str, what: str) -> _Refusal:
    return _Refusal(_refuse(reason, what))


def sqlglot_dialect(dialect: str) -> str:
    """sqlglot's name for a backend ("mssql" -> "tsql"), as the guard parses it."""
    return _SQLGLOT_DIALECTS.get(dialect, dialect)


def check(sql: str, dialect: str, *, extra_functions: frozenset[str] = frozenset()) -> Verdict:
    """The guard's verdict for `sql` in `dialect` ("mssql"/"tsql", "postgres", "sqlite"); never raises.

    `extra_functions` (lower-case names, see parse_extra_functions) extends the function allowlists."""
    if not isinstance(sql, str):
        return _refuse("empty", "the query must be text.")
    glot = _SQLGLOT_DIALECTS.get(dialect, dialect)
    extra = frozenset(" ".join(str(n).split()).lower() for n in extra_functions)
    if len(sql) <= _CACHE_MAX_TEXT:
        return _cached_check(sql, glot, extra)
    return _safe_check(sql, glot, extra)


def enforce(sql: str, dialect: str, *, extra_functions: frozenset[str] = frozenset()) -> None:
    """Raise QueryRefused unless `sql` is a single read query."""
    check(sql, dialect, extra_functions=extra_functions).raise_if_refused()


def is_read_only(sql: str, dialect: str, *, extra_functions: frozenset[str] = frozenset()) -> bool:
    return check(sql, dialect, extra_functions=extra_functions).allowed


@lru_cache(maxsize=2048)
def _cached_check(sql: str, glot: str, extra: frozenset[str]) -> Verdict:
    return _safe_check(sql, glot, extra)


def _safe_check(sql: str, glot: str, extra: frozenset[str]) -> Verdict:
    try:
        return _check(sql, glot, extra)
    except _Refusal as refusal:
        return refusal.verdict
    except RecursionError:
        return _refuse("too_deep", "the statement is nested too deeply to be checked; simplify it.")
    except Exception as exc:  # a guard bug must refuse, never run the statement or surface a stack trace
        logging.getLogger(__name__).warning("guard.check failed: %s", type(exc).__name__)
        return _refuse("parse_error", "the statement could not be checked, so it cannot be proven read-only.")


def _check(sql: str, glot: str, extra: frozenset[str]) -> Verdict:
    if not sql.strip():
        return _refuse("empty", "the query is empty; send one SELECT statement.")
    if len(sql) > MAX_SQL_CHARS:
        return _refuse("too_long", f"the query is longer than {MAX_SQL_CHARS:,} characters.")
    _character_checks(sql)
    dialect = Dialect.get_or_raise(glot)
    tokens = _tokenize(dialect, sql, glot)
    _nesting_check(tokens)
    _comment_checks(sql, tokens)
    original_tokens = tokens
    _lexical_checks(tokens, glot)  # on the text as sent, so nothing a rewrite removes goes unchecked
    text, rewritten, equivalent = sql, False, True
    if glot == "postgres":
        _dollar_quote_check(sql, tokens)
    if glot == "postgres":  # decoding U& identifiers keeps the meaning: the tree can be rendered and run
        text, rewritten = _decode_unicode_identifiers(sql, tokens)
    elif glot == "tsql":  # dropping hints, MATCH patterns or CHANGES does not: the tree is for checking only
        text, rewritten = _tsql_rewrites(sql, tokens)
        equivalent = not rewritten
    if rewritten:
        _character_checks(text)  # decoded identifiers may hold control characters
        tokens = _tokenize(dialect, text, glot)
        _lexical_checks(tokens, glot)
    _named_syntax_checks(tokens, glot, extra)
    try:
        statements = dialect.parser().parse(tokens, text)
    except ParseError as exc:
        return _refuse(
            "parse_error",
            f"the statement could not be parsed as {glot} SQL ({_short(exc)}), so it cannot be proven read-only.",
        )
    found = [s for s in statements if s is not None and not isinstance(s, exp.Semicolon)]
    if not found:
        return _refuse("empty", "the text contains no statement; send one SELECT statement.")
    if len(found) > 1:
        return _refuse(
            "multiple_statements", f"the text contains {len(found)} statements; send exactly one read query."
        )
    root = found[0]
    kind = _tree_checks(root, tokens, text, glot, extra)
    if glot == "tsql":
        _hidden_statement_check(original_tokens)
    return Verdict(True, root=kind, tree=root if equivalent else None, rewritten=rewritten, shape=select_shape_of(root))


def _tokenize(dialect: Dialect, text: str, glot: str) -> list:
    try:
        return dialect.tokenize(text)
    except TokenError as exc:
        raise _fail(
            "parse_error",
            f"the text could not be tokenized as {glot} SQL ({_short(exc)}), so it cannot be proven read-only.",
        ) from None


# --- lexical checks ----------------------------------------------------------------------------------


def _character_checks(sql: str) -> None:
    for ch in sql:
        if ch.isascii():
            if (ch < " " and ch not in _ALLOWED_CONTROL) or ch == "\x7f":
                raise _hidden(ch)
            continue
        category = unicodedata.category(ch)
        if category == "Cs":
            raise _fail(
                "invalid_unicode",
                f"the text contains a lone surrogate (U+{ord(ch):04X}), which is not "
                "valid Unicode; send the query as valid UTF-8 text.",
            )
        if category in ("Cc", "Cf"):  # C1 controls, zero-width and bidi override characters
            raise _hidden(ch)


def _hidden(ch: str) -> _Refusal:
    return _fail(
        "invisible_character",
        f"the text contains the control or invisible character U+{ord(ch):04X}, "
        "which can hide code from a reader; remove it.",
    )


def _nesting_check(tokens: list) -> None:
    depth = 0
    for token in tokens:
        if token.token_type in (TokenType.L_PAREN, TokenType.L_BRACKET):
            depth += 1
            if depth > MAX_NESTING:
                raise _fail("too_deep", f"the statement nests parentheses more than {MAX_NESTING} deep; simplify it.")
        elif token.token_type in (TokenType.R_PAREN, TokenType.R_BRACKET):
            depth -= 1


def _comment_checks(sql: str, tokens: list) -> None:
    """Refuse a block comment that contains '/*' (SQL Server and PostgreSQL nest them, SQLite and sqlglot
    do not). Comments live in the gaps between tokens, so each gap is scanned as the engine would."""
    starts = [t.start for t in tokens] + [len(sql)]
    ends = [-1] + [t.end for t in tokens]
    for end, start in zip(ends, starts, strict=True):
        gap = sql[end + 1 : start]
        position = 0
        while position < len(gap):
            if gap.startswith("--", position):
                newline = gap.find("\n", position)
                position = len(gap) if newline < 0 else newline + 1
            elif gap.startswith("/*", position):
                close = gap.find("*/", position + 2)
                body = gap[position + 2 : close if close >= 0 else len(gap)]
                if "/*" in body:
                    raise _fail(
                        "nested_comment",
                        "the text contains a nested block comment, which database "
                        "engines read differently; remove the inner '/*'.",
                    )
                position = len(gap) if close < 0 else close + 2
            else:
                position += 1


_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")


def _dollar_quote_check(sql: str, tokens: list) -> None:
    """sqlglot takes `$1a$ ... $1a$` as one dollar-quoted string; PostgreSQL does not (a tag cannot start
    with a digit: `$1` is a parameter), so it would run what sqlglot saw as text. Refuse such tags."""
    for token in tokens:
        if token.token_type == TokenType.HEREDOC_STRING:
            raw = sql[token.start : token.end + 1]
            opening = _DOLLAR_TAG.match(raw)
            if opening is None or not raw.endswith(opening.group(0)) or len(raw) < 2 * len(opening.group(0)):
                raise _fail(
                    "parse_error",
                    "a dollar-quoted string has a tag PostgreSQL does not accept (a tag "
                    "starts with a letter or _), so the text cannot be proven read-only.",
                )


def _lexical_checks(tokens: list, glot: str) -> None:
    if glot != "tsql":
        return
    for index, token in enumerate(tokens):
        if token.token_type == TokenType.VAR and token.text.upper() in _TSQL_STATEMENT_WORDS:
            if index == 0:
                raise _fail(
                    "not_a_query",
                    f"{token.text.upper()} is not a read query; only SELECT, WITH ... "
                    "SELECT, UNION/INTERSECT/EXCEPT and VALUES are allowed.",
                )
            raise _fail(
                "reserved_word",
                f"'{token.text}' is a T-SQL statement keyword; SQL Server would run it as a separate "
                "statement. Quote it as [name] if it is a column or alias.",
            )


@lru_cache(maxsize=8)
def _syntax_function_words(glot: str) -> frozenset[str]:
    return frozenset(Dialect.get_or_raise(glot).parser_class.FUNCTION_PARSERS) | {"IF"}


def _named_syntax_checks(tokens: list, glot: str, extra: frozenset[str]) -> None:
    """Functions sqlglot parses as syntax (CAST, TRIM, DECODE, ...) keep no name in the tree, so their
    names are checked here, as written, against the same lists."""
    special = _syntax_function_words(glot)
    lists = allowlist(glot)
    for token, following in itertools.pairwise(tokens):
        if following.token_type != TokenType.L_PAREN or token.token_type == TokenType.IDENTIFIER:
            continue
        word = token.text.upper()
        if word in special:
            name = word.lower()
            allowed = name in lists.functions or name in lists.table_functions or name in extra
            if not allowed or never_reason(name):
                raise _function_refusal(name, glot, never_reason(name))


# Statement words that also occur inside an ordinary read (`OFFSET ... FETCH NEXT`, subqueries).
_WORDS_INSIDE_READS = frozenset({"SELECT", "FETCH"})


def _is_use_hint(following: object, after: object) -> bool:
    word = getattr(following, "text", "").upper()
    kind = getattr(after, "token_type", None)
    return (word == "HINT" and kind == TokenType.L_PAREN) or (word == "PLAN" and "STRING" in getattr(kind, "name", ""))


def _hidden_statement_check(tokens: list) -> None:
    """Refuse a T-SQL statement keyword inside a query the tree checks allowed.

    sqlglot reads `SELECT 1\nDELETE FROM t` as `SELECT 1 AS [DELETE] FROM t`, but SQL Server runs two
    statements, so such a keyword after the first token is refused whatever token type sqlglot gave it
    (VAR, or the keyword's own type such as DELETE, DROP, EXECUTE); string literals and [quoted]
    identifiers are text, not keywords.
    """
    for index, token in enumerate(tokens[1:], start=1):
        word = token.text.upper()
        kind = token.token_type
        if word == "MERGE" and index + 1 < len(tokens) and tokens[index + 1].text.upper() in ("JOIN", "UNION"):
            continue  # the MERGE JOIN / MERGE UNION hints: JOIN and UNION are reserved, so no MERGE statement
        if word == "USE" and index + 2 < len(tokens) and _is_use_hint(tokens[index + 1], tokens[index + 2]):
            continue  # OPTION (USE HINT('...')) / (USE PLAN N'...'): no USE statement has that shape
        if (
            word in _TSQL_STATEMENT_WORDS
            and word not in _WORDS_INSIDE_READS
            and kind != TokenType.IDENTIFIER
            and "STRING" not in kind.name
        ):
            raise _fail(
                "reserved_word",
                f"'{token.text}' is a T-SQL statement keyword; SQL Server would run it as a separate "
                "statement. Quote it as [name] if it is a column or alias.",
            )


# --- identifier normalisation and narrow rewrites ----------------------------------------------------


def _adjacent(left: object, right: object) -> bool:
    return getattr(left, "end", -2) + 1 == getattr(right, "start", -1)


def _apply_edits(sql: str, edits: list[tuple[int, int, str]]) -> str:
    out, position = [], 0
    for start, end, replacement in sorted(edits):
        if start < position:
            raise _fail("parse_error", "the statement could not be normalised, so it cannot be proven read-only.")
        out.append(sql[position:start])
        out.append(replacement)
        position = end + 1
    out.append(sql[position:])
    return "".join(out)


def _decode_unicode_identifiers(sql: str, tokens: list) -> tuple[str, bool]:
    """PostgreSQL U&"..." identifiers (with \\XXXX, \\+XXXXXX and UESCAPE) become plain quoted identifiers,
    so the checks see the name PostgreSQL will use; anything PostgreSQL would decode differently is refused."""
    edits = []
    for index, token in enumerate(tokens[:-2]):
        amp, ident = tokens[index + 1], tokens[index + 2]
        if not (
            token.token_type == TokenType.VAR
            and token.text.upper() == "U"
            and amp.token_type == TokenType.AMP
            and ident.token_type == TokenType.IDENTIFIER
            and _adjacent(token, amp)
            and _adjacent(amp, ident)
        ):
            continue
        escape, end = "\\", ident.end
        if (
            index + 4 < len(tokens)
            and tokens[index + 3].text.upper() == "UESCAPE"
            and tokens[index + 4].token_type == TokenType.STRING
        ):
            escape, end = tokens[index + 4].text, tokens[index + 4].end
            if len(escape) != 1 or escape in "0123456789abcdefABCDEF+'\" \t\r\n":
                raise _fail("parse_error", "the UESCAPE character of a U& identifier is not valid.")
        body = sql[ident.start + 1 : ident.end].replace('""', '"')
        decoded = _unescape(body, escape)
        edits.append((token.start, end, '"' + decoded.replace('"', '""') + '"'))
    return (_apply_edits(sql, edits), True) if edits else (sql, False)


def _unescape(body: str, escape: str) -> str:
    out, position = [], 0
    bad = _fail("parse_error", "a U& identifier holds an escape that cannot be decoded, so it cannot be checked.")
    while position < len(body):
        ch = body[position]
        if ch != escape:
            out.append(ch)
            position += 1
            continue
        if body.startswith(escape, position + 1):
            out.append(escape)
            position += 2
            continue
        if body.startswith("+", position + 1):
            digits, position = body[position + 2 : position + 8], position + 8
        else:
            digits, position = body[position + 1 : position + 5], position + 5
        if not re.fullmatch(r"[0-9A-Fa-f]{4}|[0-9A-Fa-f]{6}", digits):
            raise bad
        code = int(digits, 16)
        if code == 0 or code > 0x10FFFF or 0xD800 <= code <= 0xDFFF:
            raise bad
        out.append(chr(code))
    return "".join(out)


def _matching_paren(tokens: list, open_index: int) -> int:
    depth = 0
    for index in range(open_index, len(tokens)):
        kind = tokens[index].token_type
        if kind == TokenType.L_PAREN:
            depth += 1
        elif kind == TokenType.R_PAREN:
            depth -= 1
            if depth == 0:
                return index
    raise _fail("parse_error", "a parenthesis is not closed.")


def _split_items(tokens: list) -> list[list]:
    items: list[list] = [[]]
    depth = 0
    for token in tokens:
        if token.token_type == TokenType.L_PAREN:
            depth += 1
        elif token.token_type == TokenType.R_PAREN:
            depth -= 1
        if token.token_type == TokenType.COMMA and depth == 0:
            items.append([])
        else:
            items[-1].append(token)
    return items


_GRAPH_TOKENS = frozenset(
    {
        TokenType.VAR,
        TokenType.IDENTIFIER,
        TokenType.DASH,
        TokenType.GT,
        TokenType.LT,
        TokenType.L_PAREN,
        TokenType.R_PAREN,
        TokenType.AND,
        TokenType.COMMA,
        TokenType.DOT,
        TokenType.PLUS,
        TokenType.L_BRACE,
        TokenType.R_BRACE,
        TokenType.NUMBER,
        TokenType.ARROW,
    }
)


def _tsql_rewrites(sql: str, tokens: list) -> tuple[str, bool]:
    """Rewrite, after checking them token by token, the T-SQL read constructs sqlglot cannot parse."""
    edits: list[tuple[int, int, str]] = []
    words = [t.text.upper() if t.token_type != TokenType.IDENTIFIER else "" for t in tokens]
    hints = allowlist("tsql").hints
    count = len(tokens)
    for index, word in enumerate(words):
        following = words[index + 1] if index + 1 < count else ""
        opens = index + 1 < count and tokens[index + 1].token_type == TokenType.L_PAREN
        if word == "INDEX" and index + 2 < count and tokens[index + 1].token_type == TokenType.EQ:
            target = tokens[index + 2]  # WITH (INDEX = ix) -> WITH (INDEX(ix))
            if target.token_type in (TokenType.VAR, TokenType.IDENTIFIER, TokenType.NUMBER):
                edits.append((tokens[index].start, target.end, f"INDEX({sql[target.start : target.end + 1]})"))
        elif word == "OPTION" and opens:
            close = _matching_paren(tokens, index + 1)
            edit = _option_rewrite(sql, tokens, index, close, hints)
            if edit:
                edits.append(edit)
        elif (
            word == "WITH"
            and index == 0
            and following == "XMLNAMESPACES"
            and count > 2
            and tokens[2].token_type == TokenType.L_PAREN
        ):
            close = _matching_paren(tokens, 2)
            for token in tokens[3:close]:
                if not (
                    "STRING" in token.token_type.name
                    or token.token_type
                    in (TokenType.ALIAS, TokenType.VAR, TokenType.IDENTIFIER, TokenType.DEFAULT, TokenType.COMMA)
                ):
                    raise _fail("parse_error", "WITH XMLNAMESPACES may only hold 'uri' AS prefix pairs.")
            if close + 1 < count and tokens[close + 1].token_type == TokenType.COMMA:
                edits.append((tokens[0].start, tokens[close + 1].end, "WITH"))
            else:
                edits.append((tokens[0].start, tokens[close].end, ""))
        elif word == "CHANGETABLE" and opens and index + 2 < count and words[index + 2] in ("CHANGES", "VERSION"):
            edits.append((tokens[index + 2].start, tokens[index + 2].end, ""))
        elif word in ("PARSE", "TRY_PARSE") and opens:
            close = _matching_paren(tokens, index + 1)
            for inner in range(index + 2, close - 1):
                if words[inner] == "USING" and "STRING" in tokens[inner + 1].token_type.name:
                    edits.append((tokens[inner].start, tokens[inner + 1].end, ""))
        elif word == "MATCH" and opens:
            close = _matching_paren(tokens, index + 1)
            pattern = tokens[index + 2 : close]
            if not pattern or any(t.token_type not in _GRAPH_TOKENS for t in pattern):
                raise _fail("parse_error", "MATCH may only hold a graph pattern (node-(edge)->node).")
            edits.append((tokens[index].start, tokens[close].end, "(1 = 1)"))
        elif word == "FOR" and following == "PATH":
            edits.append((tokens[index].start, tokens[index + 1].end, ""))
        elif (
            word == "WITHIN"
            and following == "GROUP"
            and index + 5 < count
            and words[index + 3] == "GRAPH"
            and words[index + 4] == "PATH"
            and tokens[index + 5].token_type == TokenType.R_PAREN
        ):
            edits.append((tokens[index].start, tokens[index + 5].end, ""))
    return (_apply_edits(sql, edits), True) if edits else (sql, False)


def _option_rewrite(
    sql: str, tokens: list, index: int, close: int, hints: frozenset[str]
) -> tuple[int, int, str] | None:
    items = _split_items(tokens[index + 2 : close])
    kept, changed = [], False
    for item in items:
        words = [t.text.upper() for t in item]
        if words[:2] == ["USE", "HINT"] or words[:2] == ["USE", "PLAN"]:
            if not all(
                "STRING" in t.token_type.name or t.token_type in (TokenType.L_PAREN, TokenType.R_PAREN, TokenType.COMMA)
                for t in item[2:]
            ):
                raise _fail("denied_hint", f"OPTION ({' '.join(words[:2])} ...) may only hold string literals.")
            changed = True
        elif words[:2] == ["TABLE", "HINT"]:
            inner = _split_items(item[3:-1]) if len(item) > 3 else []
            if len(inner) < 2 or words[2:3] != ["("] or not item[-1].token_type == TokenType.R_PAREN:
                raise _fail("denied_hint", "OPTION (TABLE HINT(object, hint, ...)) needs an object and hints.")
            for hint in inner[1:]:
                name = hint[0].text.upper() if hint else ""
                if name in _LOCK_HINTS:
                    raise _lock_hint(name)
                if name not in hints or not _plain_hint(hint):
                    raise _hint_refusal(name)
            changed = True
        else:
            kept.append(sql[item[0].start : item[-1].end + 1] if item else "")
    if not changed:
        return None
    replacement = f"OPTION ({', '.join(kept)})" if kept else ""
    return tokens[index].start, tokens[close].end, replacement


def _plain_hint(hint: list) -> bool:
    """NAME, or NAME(...) holding only names, numbers and commas (INDEX(ix), FORCESEEK(ix(a, b)))."""
    if len(hint) == 1:
        return True
    rest = hint[1:]
    return (
        rest[0].token_type == TokenType.L_PAREN
        and rest[-1].token_type == TokenType.R_PAREN
        and all(
            t.token_type
            in (
                TokenType.VAR,
                TokenType.IDENTIFIER,
                TokenType.NUMBER,
                TokenType.COMMA,
                TokenType.L_PAREN,
                TokenType.R_PAREN,
            )
            for t in rest
        )
    )


def _lock_hint(name: str) -> _Refusal:
    return _fail(
        "locking_clause", f"the table hint {name} takes or holds locks meant for writing; use no hint or NOLOCK."
    )


def _hint_refusal(name: str) -> _Refusal:
    return _fail("denied_hint", f"the hint {name} is not allowed: it is not on the read-only hint allowlist.")


# --- tree checks -------------------------------------------------------------------------------------


def _statement_kind(root: exp.Expr, tokens: list) -> str:
    if isinstance(root, _DML + _NOT_QUERY) and not isinstance(root, exp.Command):
        return root.key.upper()
    if isinstance(root, exp.Command):
        return str(root.this).upper()
    return tokens[0].text.upper() if tokens else root.key.upper()


def _tree_checks(root: exp.Expr, tokens: list, text: str, glot: str, extra: frozenset[str]) -> str:
    body = root
    while isinstance(body, exp.Subquery | exp.Paren):
        body = body.this
    if not isinstance(body, _QUERY_ROOTS):
        kind = _statement_kind(root, tokens)
        if isinstance(root, _DML):
            kind = f"{kind} (a data-modifying statement)"
        raise _fail(
            "not_a_query",
            f"{kind} is not a read query; only SELECT, WITH ... SELECT, UNION/INTERSECT/EXCEPT and VALUES are allowed.",
        )
    if isinstance(body, exp.Select) and not body.expressions:
        raise _fail("parse_error", "the SELECT has no select list, so it is incomplete.")
    lists = allowlist(glot)
    stack: list[tuple[exp.Expr, int]] = [(root, 0)]
    while stack:  # iterative: a deep tree must not exhaust the interpreter stack here
        node, depth = stack.pop()
        if depth > MAX_TREE_DEPTH:
            raise _fail("too_deep", f"the statement nests more than {MAX_TREE_DEPTH} levels deep; simplify it.")
        if _node_check(node, text, glot, lists, extra):
            continue
        stack.extend((child, depth + 1) for child in node.iter_expressions())
    return body.key


def _node_check(node: exp.Expr, text: str, glot: str, lists: Allowlist, extra: frozenset[str]) -> bool:
    """Raise for a refused node; True when its subtree needs no further look."""
    if isinstance(node, _DML):
        raise _fail(
            "data_modifying",
            f"the query contains a {node.key.upper()} (for example inside a WITH "
            "clause); data-modifying statements are not allowed.",
        )
    if isinstance(node, _NOT_QUERY):
        name = str(node.this).upper() if isinstance(node, exp.Command) else node.key.upper()
        raise _fail("not_a_query", f"the query contains a {name} statement; only reads are allowed.")
    if isinstance(node, exp.Into):
        raise _fail("select_into", "SELECT ... INTO creates a table; remove INTO to read the rows.")
    if isinstance(node, exp.Lock):
        raise _fail(
            "locking_clause", "FOR UPDATE/FOR SHARE takes row locks meant for writing; remove the locking clause."
        )
    if isinstance(node, exp.NextValueFor):
        raise _fail("denied_function", "NEXT VALUE FOR advances a sequence, which is a write.")
    if isinstance(node, exp.WithTableHint):
        for hint in node.expressions:
            name = (hint.name or hint.sql(glot)).upper()
            if name in _LOCK_HINTS:
                raise _lock_hint(name)
            if name not in lists.hints:
                raise _hint_refusal(name)
        return True
    if isinstance(node, exp.QueryOption) and node.arg_key == "options":  # not FOR XML/JSON modes
        name = " ".join(str(node.this.name if isinstance(node.this, exp.Expression) else node.this).upper().split())
        if name not in lists.options:
            raise _fail(
                "denied_hint", f"the query option {name} is not allowed: it is not on the read-only option allowlist."
            )
        return True
    if isinstance(node, exp.TableSample) and node.args.get("method") is not None:
        method = _ident(node.args["method"])[0].upper()
        if method not in ("BERNOULLI", "SYSTEM"):  # extension methods (tsm_system_time) are functions too
            raise _fail("denied_function", f"the TABLESAMPLE method {method} is not allowed; use BERNOULLI or SYSTEM.")
    if isinstance(node, exp.Join) and node.args.get("hint"):
        hint = str(node.args["hint"]).upper()
        if hint not in _JOIN_HINTS:
            raise _hint_refusal(f"{hint} JOIN")
    if isinstance(node, exp.Table):
        _table_check(node, glot, lists)
    elif isinstance(node, exp.Func):
        _function_check(node, text, glot, lists, extra)
    return False


def _ident(value: object) -> tuple[str, bool]:
    if isinstance(value, exp.Identifier):
        return str(value.this), bool(value.quoted)
    if isinstance(value, exp.Expression):
        return value.name, False
    return ("" if value is None else str(value)), False


def _qualifier(node: exp.Expr) -> list[str]:
    """Schema (and database) names a function call is qualified with, lower-case, outermost first."""
    parent = node.parent
    if isinstance(parent, exp.Table) and node.arg_key == "this":
        return [_ident(parent.args.get(key))[0].lower() for key in ("catalog", "db") if parent.args.get(key)]
    if isinstance(parent, exp.Dot) and parent.expression is node:
        parts = [p for p in parent.this.parts] if isinstance(parent.this, exp.Column | exp.Dot) else [parent.this]
        return [_ident(p)[0].lower() for p in parts]
    return []


def _function_check(node: exp.Func, text: str, glot: str, lists: Allowlist, extra: frozenset[str]) -> None:
    if isinstance(node, exp.Anonymous):
        raw, quoted = _ident(node.this)
    else:
        start, end = node.meta.get("start"), node.meta.get("end")
        if start is None or end is None:
            return  # syntax (CAST, CASE, ->, ::); a named form was checked on the tokens
        raw, quoted = text[start : end + 1], False
        if len(raw) > 2 and (raw[0], raw[-1]) in (('"', '"'), ("[", "]"), ("`", "`")):
            raw, quoted = raw[1:-1], True  # sqlglot also types quoted names ("upper"(x) is Upper)
        if not _WORD.match(raw):
            raise _fail("denied_function", "a function name could not be read, so the call cannot be checked.")
    why = never_reason(raw)
    if why is not None:
        raise _function_refusal(raw.lower(), glot, why)
    name = raw if (quoted and glot == "postgres") else raw.lower()  # PostgreSQL keeps quoted names' case
    qualifier = _qualifier(node)
    parent = node.parent
    in_from = isinstance(parent, exp.Table | exp.Lateral) and node.arg_key == "this"  # FROM f(), APPLY f()
    # PostgreSQL has one function namespace; SQLite and SQL Server keep table-valued functions apart.
    pool = lists.table_functions if in_from and glot != "postgres" else lists.functions
    qualified = ".".join([*qualifier, name.lower()])
    if qualifier and never_reason(qualified):
        raise _function_refusal(qualified, glot, never_reason(qualified))
    if qualified in extra:
        return
    if not qualifier and name in pool:
        return
    if glot == "postgres" and qualifier == ["pg_catalog"] and name in pool:
        return
    if glot == "tsql" and qualifier == ["sys"] and qualified in pool:
        return
    if (
        glot == "tsql"
        and in_from
        and isinstance(node, exp.Anonymous)
        and node.expressions
        and all(isinstance(arg, exp.Column) and not arg.table for arg in node.expressions)
    ):
        listed = ", ".join(arg.name.upper() for arg in node.expressions)
        table = ".".join([*qualifier, raw])
        raise _fail(
            "ambiguous",
            f"'{table} ({listed})' is ambiguous: sqlglot reads a table followed by a "
            f"parenthesised list as a function call, SQL Server as table hints. Write the "
            f"hints as WITH ({listed}); only NOLOCK-style hints are allowed.",
        )
    raise _function_refusal(qualified, glot, None)


def _function_refusal(name: str, glot: str, why: str | None) -> _Refusal:
    if why:
        return _fail("denied_function", f"the function {name.upper()} is not allowed: it {why}.")
    engine = _DIALECT_NAMES.get(glot, glot)
    return _fail(
        "denied_function",
        f"the function {name.upper()} is not allowed: it is not on the {engine} "
        "read-only allowlist (docs/database.md; an operator can add names with "
        "GUARD_EXTRA_FUNCTIONS).",
    )


def _table_check(table: exp.Table, glot: str, lists: Allowlist) -> None:
    if isinstance(table.this, exp.Dot):  # server.database.schema.table
        raise _fail(
            "linked_server",
            f"'{table.sql(glot)}' is a four-part name, which reads through a linked "
            "server; only tables of this server can be read.",
        )
    if isinstance(table.this, exp.Func) or not isinstance(table.this, exp.Identifier):
        return  # table-valued function: checked as a function
    name = table.name.lower()
    schema = _ident(table.args.get("db"))[0].lower()
    database = _ident(table.args.get("catalog"))[0].lower()
    shown = ".".join(p for p in (database, schema, table.name) if p)
    if glot == "postgres":
        if schema == "information_schema":
            # internal helper views and user-mapping options (which can hold remote passwords) stay out
            if name.startswith(("_pg_", "user_mapping")):
                raise _object_refusal(shown, glot)
            return
        if schema.startswith("pg_") and schema != "pg_catalog":
            raise _object_refusal(shown, glot)
        if (schema == "pg_catalog" or (not schema and name.startswith("pg_"))) and name not in lists.catalog:
            raise _object_refusal(shown, glot)
    elif glot == "sqlite":
        if (
            (name.startswith(("sqlite_", "pragma_")) or name in _SQLITE_VIRTUAL_TABLES)
            and name not in lists.catalog
            and name not in lists.table_functions
        ):
            raise _object_refusal(shown, glot)
    elif glot == "tsql":
        if schema == "information_schema":
            return
        # A procedure is never a table source; sp_/xp_ names resolve to system procedures when bare, in sys,
        # or in another database (master..xp_dirtree), so only schema.sp_name in this database is a user table.
        if name.startswith(("sp_", "xp_")) and (not schema or schema == "sys" or database):
            why = "an extended stored procedure" if name.startswith("xp_") else "a system stored procedure"
            raise _fail("denied_function", f"{shown} is {why}; procedures cannot be used in a query.")
        if (schema == "sys" or (not schema and name.startswith("sys"))) and name not in lists.catalog:
            raise _object_refusal(shown, glot)


def _object_refusal(shown: str, glot: str) -> _Refusal:
    engine = _DIALECT_NAMES.get(glot, glot)
    return _fail(
        "denied_object",
        f"the system table or view {shown} is not allowed: it is not on the {engine} "
        "read-only catalog allowlist (docs/database.md).",
    )


def _short(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if errors:
        first = errors[0]
        desc = str(first.get("description") or "syntax error")
        line, col = first.get("line"), first.get("col")
        return f"{desc} at line {line}, column {col}" if line else desc
    text = str(exc).split("\n", 1)[0]
    return text.replace("\x1b[4m", "").replace("\x1b[0m", "")[:200]
