"""Resolve a user-supplied table name against the catalog; never paste user text into SQL.

Accepted forms: `orders`, `Orders`, `dbo.orders`, `[dbo].[Order Lines]`, `"public"."orders"`,
`db.dbo.orders` (the database part is ignored). Matching is exact first, then case-insensitive; an
unqualified name that exists in several schemas resolves to the default schema (dbo/public) or is
reported as ambiguous. Unknown names raise TableNotFound with close matches (difflib) so a model can
correct itself in one step.
"""

from __future__ import annotations

import difflib

from .dialects.base import Dialect
from .types import TableInfo, TableNotFound

MAX_SUGGESTIONS = 5


def resolve(name: str, tables: list[TableInfo], dialect: Dialect) -> TableInfo:
    text = str(name).strip()
    # A qualified name as this service printed it (a name may itself contain a dot).
    for table in tables:
        if table.qualified_name == text:
            return table
    parts = dialect.split_name(text)
    if not parts or not parts[-1]:
        raise TableNotFound(str(name), [])
    table_name = parts[-1]
    schema = parts[-2] if len(parts) >= 2 and parts[-2] else None
    if not dialect.has_schemas and schema is not None:
        raise TableNotFound(str(name), suggest(name, tables))

    if schema is not None:
        exact = [t for t in tables if t.schema == schema and t.name == table_name]
        if exact:
            return exact[0]
        folded = [
            t for t in tables if (t.schema or "").lower() == schema.lower() and t.name.lower() == table_name.lower()
        ]
    else:
        exact = [t for t in tables if t.name == table_name]
        if len(exact) == 1:
            return exact[0]
        folded = exact or [t for t in tables if t.name.lower() == table_name.lower()]
    if len(folded) == 1:
        return folded[0]
    if len(folded) > 1:
        preferred = [t for t in folded if t.schema == dialect.default_schema]
        if len(preferred) == 1:
            return preferred[0]
        same_case = [t for t in folded if t.name == table_name]
        if len(same_case) == 1:
            return same_case[0]
        # Ambiguous: name every candidate so the caller can qualify it.
        raise TableNotFound(str(name), [t.qualified_name for t in folded][:MAX_SUGGESTIONS])
    raise TableNotFound(str(name), suggest(name, tables))


def suggest(name: str, tables: list[TableInfo]) -> list[str]:
    """Up to five qualified names close to `name` (by similarity, then by containment)."""
    wanted = str(name).strip().lower()
    bare = wanted.rsplit(".", 1)[-1].strip('[]"` ')
    by_key: dict[str, str] = {}
    for t in tables:
        by_key.setdefault(t.qualified_name.lower(), t.qualified_name)
        by_key.setdefault(t.name.lower(), t.qualified_name)
    out: list[str] = []
    for key in difflib.get_close_matches(
        wanted, by_key.keys(), n=MAX_SUGGESTIONS * 2, cutoff=0.6
    ) + difflib.get_close_matches(bare, by_key.keys(), n=MAX_SUGGESTIONS * 2, cutoff=0.6):
        if by_key[key] not in out:
            out.append(by_key[key])
    if len(bare) >= 3:
        for t in tables:
            if bare in t.name.lower() and t.qualified_name not in out:
                out.append(t.qualified_name)
    return out[:MAX_SUGGESTIONS]
