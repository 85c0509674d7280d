"""Record ids for ChatGPT's search/fetch: stable, URL-safe, readable where possible.

    table:<table>                 a table or view          e.g. table:dbo.Customers, table:customers
    row:<table>:<key>             one row by primary key   e.g. row:sales.order_lines:17,2
    sample:<table>:<limit>        the first rows of a table (tables without a primary key)
    query:~<digest>               an ad-hoc result set; lives only in the fetch cache
    more:~<b64 [query, page]>     the last result of a cut search: how to see the next page or narrow it

<table> is `schema.name` (or `name` when the backend has no schema) when both parts are plain
identifiers, otherwise `~` + base64url(JSON [schema, name]). Ids are canonical: SQLite has no
schema, so its ids are `table:customers`; `table:main.customers` is accepted too (any name the
catalog resolves is), and fetch always answers with the canonical id. <key> is the primary key values
joined by commas when they are all integers, otherwise `~` + base64url(JSON list). Table, row
and sample ids are re-queried from the database when they are not cached, so they stay valid
for as long as the record exists. Every id uses only characters that are safe in a URL path
segment, so `url` can embed it as is.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

KINDS = ("table", "row", "sample", "query", "more")
MAX_ID_LENGTH = 2048

_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_INTS = re.compile(r"^-?\d{1,19}(,-?\d{1,19})*$")
_DIGEST = re.compile(r"^~[0-9a-f]{20}$")
_B64 = re.compile(r"^[A-Za-z0-9_-]+$")


class InvalidId(ValueError):
    """The id is not one this service issues; the message says what ids look like."""


@dataclass(frozen=True)
class TableRef:
    schema: str | None
    name: str

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True)
class RecordId:
    kind: str
    table: TableRef | None = None
    key: tuple[Any, ...] = ()
    limit: int | None = None
    digest: str | None = None


def _b64encode(value: Any) -> str:
    raw = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _b64decode(text: str) -> Any:
    if not _B64.match(text):
        raise InvalidId("bad encoding")
    try:
        return json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise InvalidId("bad encoding") from None


def encode_table(schema: str | None, name: str) -> str:
    if _PLAIN.match(name) and (schema is None or _PLAIN.match(schema)):
        return f"{schema}.{name}" if schema else name
    return "~" + _b64encode([schema, name])


def decode_table(text: str) -> TableRef:
    if text.startswith("~"):
        value = _b64decode(text[1:])
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[1], str)
            or not value[1]
            or not (value[0] is None or isinstance(value[0], str))
        ):
            raise InvalidId("bad table part")
        return TableRef(value[0], value[1])
    parts = text.split(".")
    if len(parts) > 2 or not all(_PLAIN.match(part) for part in parts):
        raise InvalidId("bad table part")
    return TableRef(parts[0], parts[1]) if len(parts) == 2 else TableRef(None, parts[0])


def encode_key(values: list[Any] | tuple[Any, ...]) -> str:
    # bool is an int subclass, but True and 1 are different keys in JSON.
    if values and all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        text = ",".join(str(v) for v in values)
        if _INTS.match(text):
            return text
    return "~" + _b64encode(list(values))


def decode_key(text: str) -> tuple[Any, ...]:
    if text.startswith("~"):
        value = _b64decode(text[1:])
        if not isinstance(value, list) or not value:
            raise InvalidId("bad key part")
        return tuple(value)
    if not _INTS.match(text):
        raise InvalidId("bad key part")
    return tuple(int(part) for part in text.split(","))


def table_id(schema: str | None, name: str) -> str:
    return f"table:{encode_table(schema, name)}"


def row_id(schema: str | None, name: str, key: list[Any] | tuple[Any, ...]) -> str:
    return f"row:{encode_table(schema, name)}:{encode_key(key)}"


def sample_id(schema: str | None, name: str, limit: int) -> str:
    return f"sample:{encode_table(schema, name)}:{int(limit)}"


def query_digest(sql: str) -> str:
    """Same statement text (modulo whitespace) -> same id, so a repeated search hits the cache."""
    normalized = " ".join(sql.split()).rstrip(";").strip()
    return hashlib.sha256(normalized.encode()).hexdigest()[:20]


def query_id(sql: str) -> str:
    # Only a digest: SQL text in ids would end up in URLs and access logs (AUDIT_SQL_TEXT says no).
    return f"query:~{query_digest(sql)}"


def more_id(query: str, page: int) -> str:
    return f"more:~{_b64encode([query[:500], int(page)])}"


def decode_more(record_id: RecordId) -> tuple[str, int]:
    value = _b64decode(record_id.digest or "")
    if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int)):
        raise InvalidId("bad more part")
    return value[0], value[1]


def parse_id(text: str) -> RecordId:
    """Parse an id this service issued; raise InvalidId with a message that helps the caller."""
    try:
        return _parse(text.strip())
    except InvalidId as exc:
        raise InvalidId(
            f"'{_shorten(text)}' is not a valid id ({exc}). Ids come from search results and look like "
            "table:dbo.customers, row:dbo.customers:42, sample:dbo.logs:10 (no schema on SQLite) or query:~<digest>."
        ) from None


def _parse(text: str) -> RecordId:
    if not text or len(text) > MAX_ID_LENGTH:
        raise InvalidId("empty or too long")
    kind, sep, rest = text.partition(":")
    if not sep or kind not in KINDS:
        raise InvalidId("unknown kind")
    if kind == "table":
        return RecordId("table", decode_table(rest))
    if kind == "more":
        if not rest.startswith("~"):
            raise InvalidId("bad more part")
        record = RecordId("more", digest=rest[1:])
        decode_more(record)
        return record
    if kind == "query":
        if not _DIGEST.match(rest):
            raise InvalidId("bad query digest")
        return RecordId("query", digest=rest[1:])
    table_part, sep, last = rest.rpartition(":")
    if not sep or not table_part:
        raise InvalidId("missing part")
    table = decode_table(table_part)
    if kind == "row":
        return RecordId("row", table, key=decode_key(last))
    if not last.isdigit() or not 0 < int(last) <= 100_000:
        raise InvalidId("bad sample size")
    return RecordId("sample", table, limit=int(last))


def _shorten(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
