"""The allowlist guard on its own: T-SQL read constructs (issue 15 item 11), identifier normalisation
(PostgreSQL U&"..." escapes, quotes, brackets), ambiguous parses, robustness limits, the extension
setting, the tree handed on, and the data files shipping with the package."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

import pytest

from app.db import guard
from tests.fixtures.calls import MODERN, MODERN_META

TSQL_ITEM_11_READS = [
    "SELECT * FROM a INNER MERGE JOIN b ON a.id = b.id",
    "SELECT * FROM a INNER HASH JOIN b ON a.id = b.id LEFT LOOP JOIN c ON c.id = a.id",
    "SELECT * FROM a JOIN b ON a.id = b.id OPTION (MERGE JOIN)",
    "SELECT a FROM t UNION SELECT a FROM u OPTION (MERGE UNION)",
    "SELECT a, COUNT(*) AS n FROM t GROUP BY a OPTION (HASH GROUP)",
    "SELECT * FROM t OPTION (USE HINT('DISABLE_OPTIMIZER_ROWGOAL'))",
    "SELECT * FROM t OPTION (RECOMPILE, MAXDOP 2, USE HINT('A', 'B'))",
    "SELECT * FROM t OPTION (RECOMPILE)",
    "SELECT * FROM t OPTION (MAXDOP 1)",
    "SELECT * FROM t OPTION (TABLE HINT(t, NOLOCK))",
    "SELECT * FROM t OPTION (TABLE HINT(t, INDEX(ix_a), NOLOCK), MAXDOP 4)",
    "WITH XMLNAMESPACES ('urn:x' AS x) SELECT 1 AS [x:a] FOR XML PATH('r')",
    "WITH XMLNAMESPACES ('urn:x' AS x), c AS (SELECT 1 AS n) SELECT n FROM c FOR XML RAW",
    "SELECT c.id FROM CHANGETABLE(CHANGES dbo.Orders, 0) AS c",
    "SELECT p.name, p2.name FROM Person p, friendOf f, Person p2 WHERE MATCH(p-(f)->p2)",
    "SELECT p1.name, STRING_AGG(p2.name, '->') WITHIN GROUP (GRAPH PATH) AS friends FROM Person AS p1, "
    "friendOf FOR PATH AS fo, Person FOR PATH AS p2 WHERE MATCH(SHORTEST_PATH(p1(-(fo)->p2)+)) AND p1.name = 'A'",
    "SELECT TRY_PARSE('1' AS INT USING 'en-US') AS n",
    "SELECT PARSE('01/02/2024' AS DATE USING 'fr-FR') AS d",
    "SELECT * FROM t WITH (INDEX = ix)",
    "SELECT * FROM t WITH (INDEX(ix1, ix2), FORCESEEK)",
    "SELECT * FROM t WITH (NOLOCK, NOEXPAND)",
    "SELECT * FROM t WITH (READPAST)",
    "SELECT * FROM dbo.sp_orders",
    "SELECT o.id FROM sales.xp_export AS o",
    "SELECT 1 AS one -- a comment with /* inside\n",
    "SELECT * FROM dbo.Orders (NOLOCK)",
    "SELECT * FROM OPENJSON(N'[1,2]') WITH (v INT '$')",
    "SELECT value FROM STRING_SPLIT('a,b', ',')",
    "SELECT value FROM GENERATE_SERIES(1, 10)",
    "SELECT OBJECT_ID('dbo.Orders'), SCHEMA_NAME(1), COL_NAME(OBJECT_ID('dbo.Orders'), 1)",
    "SELECT * FROM sys.dm_db_partition_stats",
    "SELECT * FROM master.sys.databases",
    "SELECT * FROM INFORMATION_SCHEMA.TABLES",
    "SELECT * FROM t OPTION (USE PLAN N'<ShowPlanXML/>')",
]

TSQL_REFUSED = [
    ("SELECT * FROM srv.db.dbo.t", "linked_server"),
    ("SELECT * FROM [srv].[db].[dbo].[t]", "linked_server"),
    ("SELECT a.* FROM t JOIN linked.shop.dbo.Orders AS a ON 1 = 1", "linked_server"),
    ("SELECT * FROM dbo.Orders (HOLDLOCK)", "ambiguous"),
    ("SELECT * FROM dbo.Orders (XLOCK, ROWLOCK)", "ambiguous"),
    ("SELECT * FROM Orders o (TABLOCKX)", "locking_clause"),
    ("SELECT * FROM sys.dm_os_enumerate_filesystem('c:\\', '*')", "denied_function"),
    ("SELECT * FROM sys.dm_os_file_exists('c:\\secret.txt')", "denied_function"),
    ("SELECT sys.dm_os_file_exists('c:\\secret.txt')", "denied_function"),
    ("SELECT * FROM sys.dm_os_volume_stats(1, 1)", "denied_function"),
    ("SELECT * FROM sys.dm_exec_sessions", "denied_object"),
    ("SELECT * FROM sys.sql_logins", "denied_object"),
    ("SELECT * FROM sys.server_principals", "denied_object"),
    ("SELECT * FROM sys.master_files", "denied_object"),
    ("SELECT * FROM sysprocesses", "denied_object"),
    ("SELECT * FROM sp_who", "denied_function"),
    ("SELECT * FROM sys.sp_who", "denied_function"),
    ("SELECT * FROM master.dbo.sp_configure", "denied_function"),
    ("SELECT * FROM t OPTION (TABLE HINT(t, XLOCK))", "locking_clause"),
    ("SELECT * FROM t OPTION (TABLE HINT(t, UPDLOCK, NOLOCK))", "locking_clause"),
    ("SELECT * FROM t OPTION (TABLE HINT(t, KEEPIDENTITY))", "denied_hint"),
    ("SELECT * FROM t OPTION (QUERYTRACEON 8649)", "denied_hint"),
    ("SELECT * FROM t WITH (INDEX = ix, XLOCK)", "locking_clause"),
    ("SELECT * FROM t WITH (ROWLOCK)", "locking_clause"),
    ("SELECT * FROM t WITH (TABLOCK)", "locking_clause"),
    ("SELECT * FROM t WITH (KEEPDEFAULTS)", "denied_hint"),
    ("SELECT * FROM a INNER REMOTE JOIN b ON a.id = b.id", "denied_hint"),
    ("SELECT [xp_cmdshell]('dir')", "denied_function"),
    ("SELECT \"xp_cmdshell\"('dir')", "denied_function"),
    ("SELECT dbo.fn_secret(1)", "denied_function"),
    ("SELECT SERVERPROPERTY('InstanceDefaultDataPath')", "denied_function"),
    ("SELECT SCOPE_IDENTITY()", "denied_function"),
    ("SELECT SESSION_CONTEXT(N'k')", "denied_function"),
    ("SELECT LENGTH('a')", "denied_function"),
    ("SELECT * FROM OPENROWSET(BULK 'c:\\x', SINGLE_CLOB) AS x", "reserved_word"),
    ("SELECT * FROM OPENQUERY(srv, 'SELECT 1')", "denied_function"),
    ("SELECT p.name FROM Person p WHERE MATCH(p-(f)->p2; DROP TABLE t)", "parse_error"),
    ("WITH XMLNAMESPACES ('urn:x' AS x, (SELECT 1) AS y) SELECT 1", "parse_error"),
    ("SELECT 1 /* a /* nested */ comment */", "nested_comment"),
]


# Ordinary reads that use each dialect's built-in functions and syntax: no false positives.
ORDINARY_POSTGRES = [
    "SELECT ARRAY(SELECT 1)",
    "SELECT ARRAY[1,2]",
    "SELECT ROW(1, 2)",
    "SELECT 1 = ANY(ARRAY[1])",
    "SELECT 1 = ALL(ARRAY[1])",
    "SELECT 1 = SOME(ARRAY[1])",
    "SELECT EXISTS(SELECT 1)",
    "SELECT a, b, count(*) FROM t GROUP BY GROUPING SETS ((a), (b))",
    "SELECT a FROM t GROUP BY CUBE(a, b)",
    "SELECT a FROM t GROUP BY ROLLUP(a, b)",
    "SELECT now() AT TIME ZONE 'UTC'",
    "SELECT date '2024-01-01' + 1",
    "SELECT int4range(1, 5) @> 3",
    "SELECT (1, 2) OVERLAPS (3, 4)",
    "SELECT x IS DISTINCT FROM 1 FROM t",
    "SELECT NULLIF(1, 2), GREATEST(1, 2), LEAST(1, 2), COALESCE(NULL, 1)",
    "SELECT CURRENT_DATE, CURRENT_TIME, LOCALTIMESTAMP, CURRENT_USER, SESSION_USER, CURRENT_SCHEMA",
    "SELECT 'a' || 'b', 'abc' ~ 'b', 'abc' ILIKE 'A%', 'a' SIMILAR TO 'a'",
    "SELECT jsonb_path_query('{\"a\":1}', '$.a')",
    "SELECT to_tsvector('english', 'a b') @@ to_tsquery('a')",
    "SELECT xmlelement(name a, 'b'), xmlforest(1 AS x), xmlagg(xmlelement(name a))",
    "SELECT generate_subscripts(ARRAY[1,2], 1)",
    "SELECT unnest(ARRAY[1,2])",
    "SELECT * FROM unnest(ARRAY[1,2]) WITH ORDINALITY",
    "SELECT * FROM jsonb_to_recordset('[{\"a\":1}]') AS x(a int)",
    "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY x) FROM t",
    "SELECT mode() WITHIN GROUP (ORDER BY x) FROM t",
    "SELECT count(*) FILTER (WHERE x > 1) FROM t",
    "SELECT bool_and(true), bit_or(1), every(true)",
    "SELECT interval '1 day', '1 day'::interval, make_date(2024, 1, 1), age(now())",
    "SELECT substring('abc' FROM 2 FOR 1), position('b' IN 'abc'), overlay('abc' PLACING 'x' FROM 2), "
    "trim(both 'x' FROM 'xax')",
    "SELECT EXTRACT(epoch FROM now()), date_part('year', now())",
    "SELECT cast('1' AS int), '1'::int, CAST('{}' AS jsonb)",
    "SELECT regexp_matches('abc', 'b')",
    "SELECT * FROM regexp_split_to_table('a,b', ',')",
    "SELECT format('%s', 1), concat('a', 1), concat_ws(',', 1, 2)",
    "SELECT encode(sha256('a'::bytea), 'hex'), md5('a'), gen_random_uuid()",
    "SELECT width_bucket(5, 0, 10, 5), random(), floor(1.5), ceil(1.5), trunc(1.5), round(1.5, 1)",
    "SELECT string_to_array('a,b', ','), array_to_string(ARRAY[1], ','), array_length(ARRAY[1], 1), "
    "cardinality(ARRAY[1])",
    "SELECT x FROM t ORDER BY x NULLS LAST",
    "SELECT to_char(now(), 'YYYY'), to_date('2024', 'YYYY'), to_timestamp(0), to_number('1', '9')",
    "SELECT current_database(), version(), pg_typeof(1), pg_get_viewdef('v'::regclass)",
    "SELECT obj_description('t'::regclass), col_description('t'::regclass, 1), format_type(23, NULL)",
    "SELECT has_table_privilege('t', 'SELECT'), pg_table_is_visible(1)",
    "SELECT json_build_object('a', 1), json_agg(x), jsonb_agg(x), jsonb_object_agg(x, x) FROM t",
    "SELECT '{\"a\":1}'::json ->> 'a', '{\"a\":1}'::jsonb #> '{a}', '{\"a\":1}'::jsonb ? 'a'",
    "SELECT * FROM generate_series('2024-01-01'::date, '2024-02-01'::date, interval '1 day')",
    "SELECT xmltable.* FROM XMLTABLE('/a' PASSING '<a/>'::xml COLUMNS x int PATH '.')",
    "SELECT normalize('a'), initcap('a b'), chr(65), ascii('a'), decode('61', 'hex'), translate('a', 'a', "
    "'b'), left('ab', 1), right('ab', 1), reverse('ab')",
]
ORDINARY_SQLITE = [
    "SELECT EXISTS(SELECT 1)",
    "SELECT CAST('1' AS INTEGER)",
    "SELECT 1 IN (1, 2)",
    "SELECT x FROM t WHERE x LIKE 'a%' ESCAPE '\\'",
    "SELECT x FROM t WHERE x GLOB 'a*'",
    "SELECT substr('abc', 2), substring('abc', 2, 1), trim(' a '), ltrim('a'), rtrim('a'), replace('a', 'a', "
    "'b'), upper('a'), lower('A'), length('a'), instr('ab', 'b')",
    "SELECT date('now'), time('now'), datetime('now'), julianday('now'), strftime('%s', 'now'), unixepoch()",
    "SELECT abs(-1), round(1.5), max(1, 2), min(1, 2), random(), coalesce(NULL, 1), ifnull(NULL, 1), nullif(1, 1)",
    "SELECT json('{}'), json_array(1), json_object('a', 1), json_extract('{\"a\":1}', '$.a'), "
    "'{\"a\":1}' -> '$.a', '{\"a\":1}' ->> '$.a'",
    "SELECT group_concat(x, ','), total(x), avg(x), count(DISTINCT x) FROM t",
    "SELECT x, row_number() OVER w FROM t WINDOW w AS (ORDER BY x)",
    "SELECT CASE x WHEN 1 THEN 'a' ELSE 'b' END FROM t",
    "SELECT typeof(1), quote('a'), hex('a'), unicode('a'), char(65), printf('%d', 1), format('%d', 1)",
    "SELECT likely(1), unlikely(1), likelihood(1, 0.5), iif(1, 2, 3), sign(-1), sqrt(4), pow(2, 2), ln(1), "
    "log(10), exp(1), pi(), mod(5, 2), ceil(1.2), floor(1.2), trunc(1.2)",
    "SELECT current_date, current_time, current_timestamp",
    "SELECT x COLLATE NOCASE FROM t",
    "SELECT x FROM t WHERE x IS NOT NULL AND x BETWEEN 1 AND 2",
    "SELECT * FROM json_tree('{\"a\":1}')",
    "SELECT name FROM pragma_index_list('t')",
    "SELECT x FROM t LIMIT 1 OFFSET 1",
    "SELECT sqlite_version()",
]
ORDINARY_TSQL = [
    "SELECT EXISTS(SELECT 1) AS x",
    "SELECT a, b, COUNT(*) FROM t GROUP BY CUBE(a, b)",
    "SELECT a FROM t GROUP BY ROLLUP(a, b)",
    "SELECT a FROM t GROUP BY GROUPING SETS ((a), (b))",
    "SELECT SYSDATETIMEOFFSET() AT TIME ZONE 'UTC'",
    "SELECT IIF(1 = 1, 'a', 'b'), CHOOSE(1, 'a', 'b'), ISNULL(NULL, 1), COALESCE(NULL, 1), NULLIF(1, 1)",
    "SELECT CONVERT(INT, '1'), TRY_CONVERT(INT, 'x'), CAST('1' AS INT), TRY_CAST('x' AS INT), "
    "CONVERT(VARCHAR(10), GETDATE(), 120)",
    "SELECT DATEADD(day, 1, GETDATE()), DATEDIFF(day, '2024-01-01', GETDATE()), DATEPART(year, GETDATE()), "
    "DATENAME(month, GETDATE()), EOMONTH(GETDATE()), DATEFROMPARTS(2024, 1, 1)",
    "SELECT LEN('a'), LEFT('ab', 1), RIGHT('ab', 1), CHARINDEX('b', 'ab'), PATINDEX('%b%', 'ab'), "
    "REPLICATE('a', 3), SPACE(2), STUFF('abc', 2, 1, 'x'), REVERSE('ab'), UPPER('a'), LOWER('A'), LTRIM(' a'), "
    "RTRIM('a '), TRIM(' a ')",
    "SELECT FORMAT(GETDATE(), 'yyyy'), CONCAT('a', 1), CONCAT_WS(',', 1, 2), STRING_AGG(x, ',') WITHIN GROUP "
    "(ORDER BY x) FROM t",
    "SELECT JSON_VALUE(N'{\"a\":1}', '$.a'), JSON_QUERY(N'{\"a\":[1]}', '$.a'), ISJSON(N'{}'), "
    "JSON_MODIFY(N'{}', '$.a', 1)",
    "SELECT PERCENTILE_CONT(0.5) WITHIN GROUP (ORDER BY x) OVER (PARTITION BY y) FROM t",
    "SELECT COUNT_BIG(*), STDEV(x), VAR(x), APPROX_COUNT_DISTINCT(x), CHECKSUM_AGG(x) FROM t",
    "SELECT NEWID(), CURRENT_TIMESTAMP, GETDATE(), SYSDATETIME(), GETUTCDATE(), SYSUTCDATETIME()",
    "SELECT CHECKSUM(x), BINARY_CHECKSUM(x), HASHBYTES('SHA2_256', 'a') FROM t",
    "SELECT SQUARE(2), ATN2(1, 1), LOG(10, 2), LOG10(10), CEILING(1.2), FLOOR(1.2), ROUND(1.25, 1, 1), "
    "POWER(2, 3), SQRT(4), ABS(-1), SIGN(-1), PI(), RAND()",
    "SELECT OBJECT_ID('dbo.t'), OBJECT_NAME(1), SCHEMA_NAME(), DB_NAME(), USER_NAME(), SUSER_SNAME(), "
    "COL_NAME(1, 1), TYPE_NAME(56), OBJECTPROPERTY(1, 'IsTable')",
    "SELECT * FROM t AS a CROSS APPLY STRING_SPLIT(a.x, ',') AS s",
    "SELECT * FROM t AS a OUTER APPLY (SELECT TOP 1 * FROM u WHERE u.id = a.id) AS b",
    "SELECT x FROM t ORDER BY x OFFSET 0 ROWS",
    "SELECT TOP (5) WITH TIES x FROM t ORDER BY x",
    "SELECT * FROM t FOR SYSTEM_TIME AS OF '2024-01-01'",
    "SELECT x, ROW_NUMBER() OVER (ORDER BY x), LAG(x) OVER (ORDER BY x), NTILE(4) OVER (ORDER BY x), "
    "CUME_DIST() OVER (ORDER BY x) FROM t",
    "SELECT CASE WHEN x LIKE 'a%' THEN 1 END, x COLLATE Latin1_General_CI_AS FROM t",
    "SELECT * FROM t UNPIVOT (v FOR k IN (a, b)) AS u",
    "SELECT SWITCHOFFSET(SYSDATETIMEOFFSET(), '+01:00'), TODATETIMEOFFSET(GETDATE(), '+01:00'), "
    "DATETRUNC(month, GETDATE())",
    "SELECT GREATEST(1, 2), LEAST(1, 2)",
    "SELECT DATEDIFF_BIG(second, '2024-01-01', GETDATE()), ISDATE('2024-01-01'), ISNUMERIC('1')",
    "SELECT QUOTENAME('a'), STRING_ESCAPE('a', 'json'), TRANSLATE('a', 'a', 'b'), SOUNDEX('a'), "
    "DIFFERENCE('a', 'b'), UNICODE('a'), NCHAR(65), CHAR(65), ASCII('a')",
    "SELECT * FROM sys.objects o JOIN sys.schemas s ON s.schema_id = o.schema_id",
    "SELECT * FROM sys.fn_listextendedproperty(NULL, NULL, NULL, NULL, NULL, NULL, NULL)",
]


@pytest.mark.parametrize(
    ("dialect", "sql"),
    [("postgres", s) for s in ORDINARY_POSTGRES]
    + [("sqlite", s) for s in ORDINARY_SQLITE]
    + [("tsql", s) for s in ORDINARY_TSQL],
)
def test_ordinary_reads_with_builtin_functions_are_allowed(dialect: str, sql: str) -> None:
    verdict = guard.check(sql, dialect)
    assert verdict.allowed, verdict


def test_app_catalog_queries_pass_their_own_guard() -> None:
    from app.db.dialects import mssql, postgres, sqlite

    for module, dialect in ((postgres, "postgres"), (sqlite, "sqlite"), (mssql, "tsql")):
        queries = [
            v
            for k, v in vars(module).items()
            if k.lstrip("_").isupper() and isinstance(v, str) and v.lstrip().upper().startswith(("SELECT", "WITH"))
        ]
        assert queries, module
        for sql in queries:
            assert guard.check(sql, dialect).allowed, (dialect, sql[:80], guard.check(sql, dialect).message)


@pytest.mark.parametrize("sql", TSQL_ITEM_11_READS)
def test_item_11_tsql_reads_are_allowed(sql: str) -> None:
    verdict = guard.check(sql, "tsql")
    assert verdict.allowed, verdict
    # a rewritten text is checked, but its tree would not run the same statement, so none is handed on
    assert (verdict.tree is None) == verdict.rewritten


@pytest.mark.parametrize(("sql", "reason"), TSQL_REFUSED)
def test_tsql_refusals_name_what_is_refused(sql: str, reason: str) -> None:
    verdict = guard.check(sql, "tsql")
    assert (verdict.allowed, verdict.reason) == (False, reason), verdict
    assert verdict.message and verdict.message.startswith("Refused in read-only mode:")


def test_refusals_say_the_name() -> None:
    assert "DM_OS_FILE_EXISTS" in guard.check("SELECT sys.dm_os_file_exists('c:\\x')", "tsql").message
    assert "BLOB_IMPORT" in guard.check("SELECT blob_import('/etc/passwd')", "sqlite").message
    assert "LENGTH" in guard.check("SELECT LENGTH('a')", "tsql").message
    assert "HOLDLOCK" in guard.check("SELECT * FROM dbo.Orders (HOLDLOCK)", "tsql").message
    assert "sys.sql_logins" in guard.check("SELECT * FROM sys.sql_logins", "tsql").message
    assert "pg_authid" in guard.check("SELECT * FROM pg_authid", "postgres").message


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT U&"\\0070g_sleep"(1)',
        'SELECT u&"\\0070g_sleep"(1)',
        'SELECT U&"\\+000070g_sleep"(1)',
        "SELECT U&\"!0070g_sleep\" UESCAPE '!'(1)",
        'SELECT U&"pg_\\0073leep"(1)',
        'SELECT pg_catalog.U&"\\0070g_sleep"(1)',
        'SELECT U&"pg_catalog".U&"pg_read_file"(\'/etc/passwd\')',
        "SELECT U&\"\\0073et_config\"('default_transaction_read_only', 'off', false)",
        'SELECT "pg_sleep"(1)',
        'SELECT "PG_SLEEP"(1)',
        'SELECT "pg_catalog"."pg_sleep"(1)',
        "SELECT * FROM U&\"\\0070g_ls_dir\"('.')",
        'SELECT * FROM U&"pg_\\0061uthid"',
    ],
)
def test_postgres_identifier_escapes_are_decoded_before_the_check(sql: str) -> None:
    verdict = guard.check(sql, "postgres")
    assert not verdict.allowed, sql
    assert verdict.reason in ("denied_function", "denied_object"), verdict


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT U&"\\00"(1)',  # too few hex digits
        'SELECT U&"\\d800"(1)',  # a surrogate
        'SELECT U&"\\+110000"(1)',  # beyond Unicode
        "SELECT U&\"x\" UESCAPE 'a'",  # a hex digit cannot be the escape character
        'SELECT U&"\\0000"(1)',
    ],
)
def test_undecodable_unicode_identifiers_are_refused(sql: str) -> None:
    assert not guard.check(sql, "postgres").allowed


def test_decoded_unicode_identifiers_that_are_harmless_still_read() -> None:
    verdict = guard.check('SELECT U&"d\\0061t\\+000061" FROM t', "postgres")
    assert verdict.allowed and verdict.rewritten
    assert verdict.tree is not None and '"data"' in verdict.tree.sql("postgres")
    assert guard.check("SELECT U&\"\\0075pper\"('a')", "postgres").allowed


def test_dollar_quote_tags_postgres_rejects_cannot_hide_calls() -> None:
    # PostgreSQL reads `$1a$` as the parameter $1 followed by a$, so pg_sleep would be a real call
    for sql in ("SELECT $1a$, pg_sleep(1), $1a$", "SELECT $9$, pg_sleep(1), $9$"):
        assert not guard.check(sql, "postgres").allowed, sql
    assert guard.check("SELECT $a$x$a$, $_b1$y$_b1$, $$z$$", "postgres").allowed


def test_pure_syntax_sqlglot_cannot_parse_is_refused_honestly() -> None:
    verdict = guard.check("SELECT COLLATION FOR ('a')", "postgres")  # pure, but sqlglot has no parse for it
    assert (verdict.allowed, verdict.reason) == (False, "parse_error")


def test_tablesample_methods_are_allowlisted() -> None:
    assert guard.check("SELECT * FROM t TABLESAMPLE BERNOULLI (10)", "postgres").allowed
    assert guard.check("SELECT * FROM t TABLESAMPLE SYSTEM (10) REPEATABLE (1)", "postgres").allowed
    verdict = guard.check("SELECT * FROM t TABLESAMPLE system_time (1000)", "postgres")
    assert (verdict.allowed, verdict.reason) == (False, "denied_function")


def test_quoted_and_bracketed_names_are_normalised() -> None:
    assert not guard.check("SELECT [xp_cmdshell]('x')", "tsql").allowed
    assert not guard.check("SELECT \"blob_import\"('/etc/passwd')", "sqlite").allowed
    assert not guard.check("SELECT [blob_import]('/etc/passwd')", "sqlite").allowed
    assert not guard.check("SELECT `load_extension`('x')", "sqlite").allowed
    assert guard.check("SELECT \"upper\"('a'), [lower]('B')", "sqlite").allowed
    # PostgreSQL keeps the case of quoted names: "UPPER" is not upper, so it is not on the list
    assert not guard.check("SELECT \"UPPER\"('a')", "postgres").allowed
    assert guard.check("SELECT \"upper\"('a'), pg_catalog.upper('a')", "postgres").allowed
    assert not guard.check("SELECT public.upper('a')", "postgres").allowed


def test_twenty_thousand_parentheses_and_deep_trees_are_refused_clearly() -> None:
    deep = "SELECT " + "(" * 20_000 + "1" + ")" * 20_000
    verdict = guard.check(deep, "postgres")
    assert (verdict.allowed, verdict.reason) == (False, "too_deep")
    assert "nests parentheses" in (verdict.message or "")
    long_chain = "SELECT " + " + ".join(["1"] * 15_000)
    assert guard.check(long_chain, "sqlite").reason in ("too_deep", None)
    unary = "SELECT " + "NOT " * 5_000 + "1"
    assert guard.check(unary, "postgres").reason in ("too_deep", None)
    for dialect in ("sqlite", "tsql"):
        assert guard.check(deep, dialect).reason == "too_deep"


def test_lone_surrogate_is_refused_clearly() -> None:
    for dialect in ("postgres", "sqlite", "tsql"):
        verdict = guard.check("SELECT '\ud800' AS x", dialect)
        assert (verdict.allowed, verdict.reason) == (False, "invalid_unicode")
        assert "surrogate" in (verdict.message or "")


def test_check_never_raises_on_odd_input() -> None:
    odd = [
        "SELECT 1" + ")" * 50,
        "SELECT (" * 300,
        "U&",
        'SELECT U&"',
        "SELECT 'unterminated",
        "\udfff",
        "SELECT * FROM t OPTION (",
        "WITH XMLNAMESPACES (",
        "SELECT MATCH(",
        "SELECT TRY_PARSE(1 USING",
    ]
    for sql in odd:
        for dialect in ("postgres", "sqlite", "tsql", "mssql", "unknown"):
            verdict = guard.check(sql, dialect)
            assert not verdict.allowed and verdict.reason in guard.REASONS, (sql, dialect, verdict)


def test_extra_functions_extend_the_list_but_never_the_never_list() -> None:
    extra = guard.parse_extra_functions(" my_udf, public.tax , blob_import, PG_SLEEP, xp_cmdshell ,")
    assert extra == frozenset({"my_udf", "public.tax"})
    assert not guard.check("SELECT my_udf(1)", "postgres").allowed
    assert guard.check("SELECT my_udf(1)", "postgres", extra_functions=extra).allowed
    assert guard.check("SELECT public.tax(1)", "postgres", extra_functions=extra).allowed
    assert not guard.check("SELECT tax(1)", "postgres", extra_functions=frozenset({"public.tax"})).allowed
    forced = frozenset({"blob_import", "pg_sleep", "xp_cmdshell", "pg_read_file"})  # even if passed directly
    assert not guard.check("SELECT blob_import('/x')", "sqlite", extra_functions=forced).allowed
    assert not guard.check("SELECT pg_sleep(1)", "postgres", extra_functions=forced).allowed
    assert not guard.check("SELECT xp_cmdshell('dir')", "tsql", extra_functions=forced).allowed


def test_extra_functions_setting_reaches_the_guard() -> None:
    from app.settings import load_settings

    settings = load_settings(
        environ={
            "GUARD_EXTRA_FUNCTIONS": "dbo.fn_tax, blob_export",
            "DB_BACKEND": "sqlite",
            "SQLITE_PATH": "/tmp/x.db",
        },
        env_file=None,
    )
    assert guard.extra_functions(settings) == frozenset({"dbo.fn_tax"})


def test_verdict_carries_the_checked_tree() -> None:
    verdict = guard.check("SELECT id FROM customers WHERE id > 2", "postgres")
    assert verdict.allowed and verdict.tree is not None and not verdict.rewritten
    assert verdict.tree.sql("postgres") == "SELECT id FROM customers WHERE id > 2"
    copy = verdict.tree.copy().limit(5)  # callers copy before changing: the cached tree stays as it was
    assert "LIMIT 5" in copy.sql("postgres")
    again = guard.check("SELECT id FROM customers WHERE id > 2", "postgres")
    assert again.tree is not None and "LIMIT" not in again.tree.sql("postgres")
    assert guard.check("DELETE FROM t", "postgres").tree is None


def test_allowlist_files_ship_with_the_package() -> None:
    folder = resources.files("app.db").joinpath("allowlists")
    for name in ("sqlite.txt", "postgres.txt", "tsql.txt", "never.txt"):
        assert folder.joinpath(name).is_file(), name
    import tomllib
    from pathlib import Path

    project = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    assert "allowlists/*.txt" in project["tool"]["setuptools"]["package-data"]["app.db"]
    for glot in ("sqlite", "postgres", "tsql"):
        lists = guard.allowlist(glot)
        assert len(lists.functions) > 80
        assert not [n for n in lists.functions | lists.table_functions if guard.never_reason(n)], glot


async def test_mcp_tool_refuses_deep_nesting_and_lone_surrogates_clearly(app_client: Any) -> None:
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "MCP-Protocol-Version": MODERN,
        "Mcp-Method": "tools/call",
        "Mcp-Name": "execute_sql",
    }
    cases = [
        ("SELECT " + "(" * 20_000 + "1" + ")" * 20_000, "nests parentheses"),
        ("SELECT '\ud800' AS x", "surrogate"),
    ]
    for query, fragment in cases:
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 1,
                "method": "tools/call",
                "params": {"name": "execute_sql", "arguments": {"query": query}, "_meta": MODERN_META},
            }
        )
        response = await app_client.post("/mcp", data=body.encode("utf-8"), headers=headers)
        assert response.status == 200, await response.text()
        payload = await response.json()
        result = payload.get("result") or {}
        text = json.dumps(payload)
        assert result.get("isError") is True, payload
        assert fragment in text and "internal error" not in text.lower(), text[:500]
