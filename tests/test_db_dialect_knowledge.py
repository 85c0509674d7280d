"""Each dialect owns what the service knows about its SQL; the guard and the tools read it from there."""

from __future__ import annotations

import pytest

from app.db import guard
from app.db.dialects import DIALECTS, ServerCutDialect, SqliteDialect, dialect_class
from app.tools.resources import NO_SCHEMA


@pytest.mark.parametrize("backend", sorted(DIALECTS))
def test_every_dialect_declares_its_names_limit_syntax_and_tips(backend: str) -> None:
    dialect = dialect_class(backend)
    assert dialect.name == backend
    for attribute in ("sqlglot", "label", "engine", "limit_syntax", "limit_example", "sql_tips", "schema_words"):
        assert isinstance(getattr(dialect, attribute), str) and getattr(dialect, attribute), attribute
    assert dialect.limit_syntax in dialect.sql_tips  # the tips and the tool descriptions agree
    # The guard parses with the dialect's own sqlglot name, whichever name it is given.
    assert guard.check("SELECT 1", backend) == guard.check("SELECT 1", dialect.sqlglot)


def test_read_strategies_are_explicit() -> None:
    assert {name for name, d in DIALECTS.items() if issubclass(d, ServerCutDialect)} == {"postgres", "sqlite"}
    assert dialect_class("mssql").limit_syntax == "TOP n" and not dialect_class("mssql").needs_columns


def test_sqlite_schema_words_name_the_resource_schema() -> None:
    assert f"'{NO_SCHEMA}'" in SqliteDialect.schema_words


def test_the_verdict_carries_the_statement_shape() -> None:
    shape = guard.check("SELECT TOP 5 *, 1 AS order_id FROM dbo.orders WITH (NOLOCK)", "mssql").shape
    assert shape is not None and (shape.schema, shape.name, shape.star) == ("dbo", "orders", True)
    assert guard.check("SELECT a FROM t JOIN u ON t.id = u.id", "sqlite").shape is None
    assert guard.check("DELETE FROM t", "sqlite").shape is None
