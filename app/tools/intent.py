"""What ChatGPT's single `search(query)` string asks for.

One string has to carry everything, so a few plain forms are recognised and anything else is
treated as keywords, matched against the data (app.tools.search) and table and column names.
`... page N` asks for the next slice of results of a list or a keyword search:

    list tables | show tables | tables | (empty)        -> every table and view
    describe X | schema of X | columns of X              -> table X
    sample X [limit N] | sample N rows from X | preview X  -> the first rows of X
    SELECT ... | WITH ... | VALUES ...                   -> a read-only query (after comments or `;`)
    INSERT/UPDATE/DELETE/DROP/... statements             -> refused (search never writes)
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

DEFAULT_SAMPLE = 10

_FENCE = re.compile(r"^```[A-Za-z]*\s*(?P<body>.*?)\s*```$", re.S)
_LIST = re.compile(
    r"^(?:(?:list|show|get|display)(?:\s+(?:me|all|the|every))*(?:\s+(?:tables?|views?|tables\s+and\s+views))?"
    r"|(?:all\s+)?(?:tables?|views?|tables\s+and\s+views)|schema|catalog|\*|everything)$",
    re.I,
)
_NAME = r"(?P<name>(?:\[[^\]]+\]|\"[^\"]+\"|`[^`]+`|[\w$#@]+)(?:\.(?:\[[^\]]+\]|\"[^\"]+\"|`[^`]+`|[\w$#@]+))?)"
_DESCRIBE = re.compile(
    rf"^(?:describe|desc|explain\s+table|schema\s+(?:of|for)|structure\s+of|columns\s+(?:of|in|for)|"
    rf"definition\s+of|table)\s+(?:table\s+|view\s+)?{_NAME}$",
    re.I,
)
_SAMPLE = re.compile(
    rf"^(?:sample|preview|peek(?:\s+at)?|show\s+rows\s+(?:of|from)|rows\s+(?:of|from))\s+"
    rf"(?:(?P<n1>\d+)\s+(?:rows?\s+(?:of|from)\s+)?)?(?:table\s+|view\s+)?{_NAME}"
    rf"(?:\s+(?:limit|top|n\s*=|rows?)?\s*(?P<n2>\d+)(?:\s+rows?)?)?$",
    re.I,
)
_SQL = re.compile(
    r"^\(*\s*(?:select\s|select\*|with\s+(?:recursive\s+)?(?:\[[^\]]+\]|\"[^\"]+\"|`[^`]+`|[\w$#@]+)\s*"
    r"(?:\([^)]*\)\s*)?as\s*(?:not\s+)?(?:materialized\s+)?\(|with\s+xmlnamespaces\s*\(|values\s*\()",
    re.I,
)
# Leading comments and T-SQL's habit of `;WITH` (the CTE must not continue a previous statement).
_LEADING_NOISE = re.compile(r"^(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/|;)+", re.S)
_PAGE = re.compile(r"^(?P<rest>.*?)[\s,;]+page\s*(?P<page>\d{1,6})$", re.I)
_WRITE = re.compile(
    r"^(?:insert\s+into|insert\s+\w|update\s+\S+\s+set\b|delete\s+from|delete\s+\w|merge\s+into|upsert\b|"
    r"replace\s+into|(?:drop|create|alter)\s+(?:or\s+replace\s+|unique\s+|temp(?:orary)?\s+)?"
    r"(?:table|view|index|database|schema|procedure|proc|function|trigger|user|login|role|sequence)\b|"
    r"truncate\s+(?:table\s+)?\w|exec(?:ute)?\s+\S|call\s+\w|grant\s|revoke\s|deny\s|use\s+\w+\s*;?$|"
    r"set\s+\w+\s*=|declare\s+@|begin\s+(?:tran|transaction)\b|commit\b|rollback\b|attach\s+|detach\s+|"
    r"pragma\s+\w|vacuum\b|backup\s+|restore\s+|dbcc\s+|shutdown\b|waitfor\s+|kill\s+\d)",
    re.I,
)
_WORD = re.compile(r"[^\W_]+(?:_[^\W_]+)*|\d+", re.U)
STOPWORDS = frozenset(
    {
        "a",
        "an",
        "and",
        "any",
        "are",
        "as",
        "at",
        "about",
        "all",
        "be",
        "by",
        "can",
        "do",
        "does",
        "find",
        "for",
        "from",
        "get",
        "give",
        "has",
        "have",
        "how",
        "i",
        "in",
        "info",
        "information",
        "is",
        "it",
        "list",
        "look",
        "me",
        "my",
        "of",
        "on",
        "or",
        "please",
        "record",
        "records",
        "row",
        "rows",
        "search",
        "show",
        "some",
        "that",
        "the",
        "their",
        "them",
        "there",
        "these",
        "this",
        "those",
        "to",
        "what",
        "when",
        "where",
        "which",
        "who",
        "with",
        "whose",
    }
)


@dataclass(frozen=True)
class Intent:
    kind: str  # "list" | "describe" | "sample" | "sql" | "write" | "keywords"
    table: str | None = None
    limit: int | None = None
    sql: str | None = None
    terms: tuple[str, ...] = field(default_factory=tuple)
    page: int = 1  # "list tables page 2", "tokyo page 3": which slice of MAX_SEARCH_RESULTS results


def unquote_name(name: str) -> str:
    """[dbo].[Order Details] / "public"."x" / `x` -> dbo.Order Details: the catalog resolves the rest."""
    parts = re.findall(r"\[([^\]]+)\]|\"([^\"]+)\"|`([^`]+)`|([^.]+)", name)
    return ".".join(next(p for p in groups if p) for groups in parts)


def parse_intent(query: str) -> Intent:
    text = query.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group("body").strip()
    if text.lower().startswith("sql:"):
        text = text[4:].strip()
    code = _LEADING_NOISE.sub("", text)
    if _SQL.match(code):
        return Intent("sql", sql=re.sub(r"^[\s;]+", "", text))
    if _WRITE.match(code):
        return Intent("write", sql=text)
    plain = re.sub(r"\s+", " ", text).strip().rstrip("?.!;").strip()
    page = 1
    paged = _PAGE.match(plain)
    if paged:
        plain, page = paged.group("rest").strip(), max(1, int(paged.group("page")))
    if not plain or _LIST.match(plain):
        return Intent("list", page=page)
    described = _DESCRIBE.match(plain)
    if described:
        return Intent("describe", table=unquote_name(described.group("name")))
    sampled = _SAMPLE.match(plain)
    if sampled:
        count = sampled.group("n1") or sampled.group("n2")
        return Intent(
            "sample", table=unquote_name(sampled.group("name")), limit=int(count) if count else DEFAULT_SAMPLE
        )
    return Intent("keywords", terms=keywords(plain), page=page)


def keywords(text: str) -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for word in _WORD.findall(text.lower()):
        if len(word) >= 2 and word not in STOPWORDS:
            seen.setdefault(word, None)
    return tuple(seen)


def stem(word: str) -> str:
    """Crude English singular, enough to match 'customer' with 'customers' and 'categories'."""
    word = word.lower()
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 4 and word.endswith(("sses", "xes", "ches", "shes")):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word
