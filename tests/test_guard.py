"""The read-only guard on its own: T-SQL-only attacks (SQL Server cannot run here), reason labels,
messages, and the parser-differential traps it closes."""

from __future__ import annotations

import pytest

from app.db import guard
from app.db.dialects.mssql import COLUMNS, FOREIGN_KEYS, INDEXES, LIST_TABLES, PRIMARY_KEY
from app.db.types import QueryRefused

TSQL_REFUSED: list[tuple[str, str]] = [
    ("EXEC xp_cmdshell 'dir'", "not_a_query"),
    ("EXECUTE sp_who", "not_a_query"),
    ("EXEC('DELETE FROM t')", "not_a_query"),
    ("EXEC sp_executesql N'DELETE FROM t'", "not_a_query"),
    ("SELECT 1 EXEC xp_cmdshell 'dir'", "parse_error"),
    ("SELECT 1; EXEC xp_cmdshell 'dir'", "multiple_statements"),
    ("WAITFOR DELAY '00:00:10'", "not_a_query"),
    ("SELECT 1 WAITFOR DELAY '00:00:10'", "reserved_word"),
    ("DBCC CHECKDB", "not_a_query"),
    ("DBCC DROPCLEANBUFFERS", "not_a_query"),
    ("SHUTDOWN", "not_a_query"),
    ("SHUTDOWN WITH NOWAIT", "not_a_query"),
    ("SELECT 1 SHUTDOWN", "reserved_word"),
    # No semicolon needed between T-SQL statements: sqlglot reads the first two as an alias, SQL Server as two
    # statements (the keyword-list servers' classic hole); sqlglot cannot parse the others at all.
    ("SELECT 1\nDELETE FROM t", "reserved_word"),
    ("SELECT GETDATE()\nDELETE FROM t", "reserved_word"),
    ("SELECT TOP 1 name\nDELETE FROM t", "reserved_word"),
    ("SELECT 1\nDROP TABLE t", "parse_error"),
    ("SELECT 1 x\nINSERT INTO t VALUES (1)", "parse_error"),
    ("SELECT 1\nUPDATE t SET a = 1", "parse_error"),
    ("SELECT 1\nTRUNCATE TABLE t", "parse_error"),
    ("SELECT 1 EXEC sp_who", "parse_error"),
    ("SELECT * FROM t\nMERGE t USING s ON 1 = 1 WHEN MATCHED THEN DELETE;", "parse_error"),
    ("SELECT 1\nGRANT SELECT ON t TO u", "parse_error"),
    ("SELECT name FROM t SHUTDOWN", "reserved_word"),
    ("BACKUP DATABASE shop TO DISK = 'c:\\x.bak'", "not_a_query"),
    ("RESTORE DATABASE shop FROM DISK = 'c:\\x.bak'", "not_a_query"),
    ("KILL 52", "not_a_query"),
    ("USE master", "not_a_query"),
    ("SET NOCOUNT ON", "not_a_query"),
    ("DECLARE @x INT", "not_a_query"),
    ("BEGIN TRAN", "not_a_query"),
    ("COMMIT TRANSACTION", "not_a_query"),
    ("GRANT SELECT ON t TO u", "not_a_query"),
    ("REVOKE SELECT ON t FROM u", "not_a_query"),
    ("DENY SELECT ON t TO u", "not_a_query"),
    ("CREATE LOGIN evil WITH PASSWORD = 'x'", "not_a_query"),
    ("ALTER LOGIN sa WITH PASSWORD = 'x'", "not_a_query"),
    ("BULK INSERT t FROM 'c:\\x.csv'", "not_a_query"),
    ("INSERT INTO t EXEC sp_who", "parse_error"),
    ("MERGE t USING s ON t.id = s.id WHEN MATCHED THEN DELETE;", "not_a_query"),
    ("TRUNCATE TABLE t", "not_a_query"),
    ("RECONFIGURE", "not_a_query"),
    ("CHECKPOINT", "not_a_query"),
    ("REVERT", "not_a_query"),
    ("RAISERROR('x', 16, 1)", "not_a_query"),
    ("PRINT 'x'", "not_a_query"),
    ("IF 1 = 1 SELECT 1", "not_a_query"),
    ("WHILE 1 = 1 SELECT 1", "not_a_query"),
    ("{call sp_who}", "parse_error"),
    ("SELECT * FROM OPENROWSET('SQLNCLI', 'Server=x;Trusted_Connection=yes;', 'SELECT 1') AS a", "denied_function"),
    ("SELECT * FROM OPENROWSET(BULK 'c:\\secret.txt', SINGLE_CLOB) AS a", "reserved_word"),
    ("SELECT * FROM OPENQUERY(linked, 'DELETE FROM t')", "denied_function"),
    ("SELECT * FROM OPENDATASOURCE('SQLNCLI', 'Data Source=x').db.dbo.t", "linked_server"),
    ("SELECT * FROM OPENXML(@h, '/root')", "denied_function"),
    ("SELECT * FROM master..xp_dirtree", "denied_function"),
    ("SELECT * FROM master.dbo.sp_configure", "denied_function"),
    ("SELECT xp_cmdshell('dir')", "denied_function"),
    ("SELECT * FROM t WHERE id IN (SELECT id FROM OPENQUERY(linked, 'SELECT 1'))", "denied_function"),
    ("SELECT * FROM sys.fn_dblog(NULL, NULL)", "denied_function"),
    ("SELECT * FROM sys.fn_get_audit_file('c:\\*.sqlaudit', DEFAULT, DEFAULT)", "denied_function"),
    ("SELECT NEXT VALUE FOR dbo.order_numbers", "denied_function"),
    ("SELECT id, NEXT VALUE FOR s AS n FROM t", "denied_function"),
    ("SELECT * FROM t WITH (UPDLOCK)", "locking_clause"),
    ("SELECT * FROM t WITH (XLOCK, ROWLOCK)", "locking_clause"),
    ("SELECT * FROM t WITH (TABLOCKX)", "locking_clause"),
    ("SELECT * FROM t WITH (HOLDLOCK)", "locking_clause"),
    ("SELECT * FROM t (UPDLOCK)", "locking_clause"),
    ("SELECT * FROM t AS a WITH (NOLOCK) JOIN u WITH (XLOCK) ON a.id = u.id", "locking_clause"),
    ("SELECT * INTO #copy FROM t", "select_into"),
    ("SELECT * INTO dbo.copy FROM t", "select_into"),
    ("WITH a AS (SELECT 1 AS x) DELETE FROM t", "not_a_query"),
    ("WITH a AS (SELECT 1 AS x) INSERT INTO t SELECT x FROM a", "not_a_query"),
    ("SELECT 1 /* /* */ ; EXEC xp_cmdshell 'dir' */", "nested_comment"),
]

TSQL_ALLOWED = [
    "SELECT TOP (10) * FROM dbo.Orders ORDER BY OrderDate DESC",
    "SELECT TOP 5 PERCENT name FROM sys.tables",
    "SELECT [Order Id], [key], [file] FROM [dbo].[Order Lines]",
    "SELECT a FROM t ORDER BY a OFFSET 10 ROWS FETCH NEXT 5 ROWS ONLY",
    "SELECT * FROM t WITH (NOLOCK)",
    "SELECT * FROM t CROSS APPLY (SELECT 1 AS y) AS z",
    "SELECT * FROM t PIVOT (SUM(v) FOR k IN ([a], [b])) AS p",
    "SELECT id FROM t FOR JSON AUTO",
    "SELECT id FROM t FOR XML PATH('row')",
    "SELECT STRING_AGG(name, ', ') WITHIN GROUP (ORDER BY name) FROM t",
    "SELECT IIF(qty > 1, 'many', 'one'), TRY_CONVERT(INT, code), CONVERT(VARCHAR(10), GETDATE(), 120) FROM t",
    "SELECT @@VERSION, DB_NAME(), SUSER_SNAME()",
    "SELECT s.name, t.name FROM sys.tables AS t JOIN sys.schemas AS s ON s.schema_id = t.schema_id",
    "SELECT * FROM INFORMATION_SCHEMA.COLUMNS WHERE TABLE_NAME = 'Orders'",
    "SELECT 'EXEC xp_cmdshell ''dir''' AS harmless_text",
    "SELECT [SHUTDOWN] FROM t",
    "SELECT [DELETE], N'UPDATE t SET a = 1' AS text FROM t",
    "SELECT a FROM t ORDER BY a OFFSET 10 ROWS FETCH NEXT 5 ROWS ONLY",
    # one bracketed identifier to SQL Server too (']]' is an escaped ']'): nothing is executed
    "SELECT 1 AS [x]]; EXEC xp_cmdshell 'dir'; --]",
    "WITH c AS (SELECT 1 AS n UNION ALL SELECT n + 1 FROM c WHERE n < 5) SELECT n FROM c OPTION (MAXRECURSION 10)",
    "SELECT x.* FROM (VALUES (1, 'a'), (2, 'b')) AS x(id, name)",
]


@pytest.mark.parametrize(("sql", "reason"), TSQL_REFUSED)
def test_tsql_attacks_are_refused(sql: str, reason: str) -> None:
    verdict = guard.check(sql, "tsql")
    assert not verdict.allowed, sql
    assert verdict.reason == reason, (sql, verdict)
    assert verdict.reason in guard.REASONS
    assert verdict.message and verdict.message.startswith("Refused in read-only mode:")


@pytest.mark.parametrize("sql", TSQL_ALLOWED)
def test_tsql_reads_are_allowed(sql: str) -> None:
    verdict = guard.check(sql, "mssql")  # the backend name maps to sqlglot's tsql
    assert verdict.allowed, verdict


@pytest.mark.parametrize("sql", [LIST_TABLES, COLUMNS, PRIMARY_KEY, FOREIGN_KEYS, INDEXES])
def test_generated_catalog_sql_is_a_single_tsql_read(sql: str) -> None:
    assert guard.check(sql, "tsql").allowed


@pytest.mark.parametrize(
    ("sql", "dialect", "reason", "fragment"),
    [
        ("SELECT 1; DELETE FROM t", "postgres", "multiple_statements", "2 statements"),
        ("DELETE FROM t", "sqlite", "not_a_query", "DELETE"),
        ("WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x", "postgres", "data_modifying", "DELETE"),
        ("SELECT * INTO t2 FROM t", "postgres", "select_into", "INTO"),
        ("SELECT * FROM t FOR UPDATE", "postgres", "locking_clause", "FOR UPDATE"),
        ("SELECT pg_sleep(5)", "postgres", "denied_function", "PG_SLEEP"),
        ("SELECT load_extension('x')", "sqlite", "denied_function", "LOAD_EXTENSION"),
        ("SELECT FROM WHERE", "postgres", "parse_error", "could not be parsed"),
        ("", "sqlite", "empty", "empty"),
        ("SELECT 1 /* /* */ */", "postgres", "nested_comment", "nested"),
        ("SELECT 1\u200b", "postgres", "invisible_character", "U+200B"),
        ("SELECT 1 " + "-" * guard.MAX_SQL_CHARS, "postgres", "too_long", "longer"),
    ],
)
def test_refusals_say_what_and_why(sql: str, dialect: str, reason: str, fragment: str) -> None:
    verdict = guard.check(sql, dialect)
    assert (verdict.allowed, verdict.reason) == (False, reason)
    assert fragment in (verdict.message or "")
    with pytest.raises(QueryRefused) as info:
        guard.enforce(sql, dialect)
    assert info.value.reason == reason
    assert str(info.value) == verdict.message


def test_allowed_verdict_reports_the_root_kind() -> None:
    assert guard.check("SELECT 1", "sqlite").root == "select"
    assert guard.check("VALUES (1)", "postgres").root == "values"
    assert guard.check("SELECT 1 UNION SELECT 2", "postgres").root == "union"
    assert guard.check("(SELECT 1)", "postgres").allowed


def test_is_read_only_never_raises() -> None:
    assert guard.is_read_only("SELECT 1", "sqlite")
    assert not guard.is_read_only("DROP TABLE t", "sqlite")
    assert not guard.is_read_only("SELECT (", "postgres")
    assert not guard.is_read_only(None, "postgres")  # type: ignore[arg-type]


def test_verdicts_are_cached_by_text() -> None:
    guard._cached_check.cache_clear()
    sql = "SELECT id FROM customers WHERE id = 7"
    first = guard.check(sql, "postgres")
    assert guard.check(sql, "postgres") is first
    assert guard._cached_check.cache_info().hits >= 1
    # the same text in another dialect is a different entry
    assert guard.check(sql, "tsql") is not first


def test_backslash_in_standard_strings_cannot_hide_a_second_statement() -> None:
    # PostgreSQL (standard_conforming_strings=on, which the session sets) and SQLite end the string at
    # the second quote, so this is two statements: the guard must see two as well.
    for dialect in ("postgres", "sqlite"):
        verdict = guard.check("SELECT 'a\\'; DELETE FROM t; --'", dialect)
        assert verdict.reason == "multiple_statements", dialect
    # ... while an escape string really is one literal
    assert guard.check("SELECT E'a\\'; DELETE FROM t; --'", "postgres").allowed
