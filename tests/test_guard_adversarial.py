"""An adversarial corpus of 300+ statements for the allowlist guard, run for real.

Each SQLite and PostgreSQL statement goes through `Database.read` with READ_ONLY_MODE on and must be
refused by the guard (QueryRefused). Afterwards every table, the schema and a sequence are compared with a
snapshot taken by an independent connection, a sentinel file the corpus tries to read and overwrite is
unchanged, no file it tries to create exists, and (PostgreSQL) no advisory lock is held and settings are
as they were. T-SQL statements (no SQL Server here) are checked by the guard alone. Denial-of-service
reads that are legitimately reads (deep recursion, huge series) run and are stopped by the time cap.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from app.db import guard
from app.db.types import DatabaseError, QueryRefused
from tests.fixtures.databases import open_database, pg_snapshot, sqlite_snapshot

# {secret} is a sentinel file holding a secret, {target} a path that must never be created,
# {db} the database file itself (SQLite).

FILE_FUNCTIONS_SQLITE = [
    "blob_import('{secret}')",
    "blob_export(x'6f776e6564', '{target}')",
    "blob_export(x'00', '{secret}')",
    "readfile('{secret}')",
    "writefile('{target}', 'owned')",
    "load_extension('/tmp/evil.so')",
    "load_extension('{secret}', 'entry')",
    "fts3_tokenizer('simple', x'0000000000000000')",
    "edit('x', 'vi')",
    "blob_import('/proc/self/environ')",
    "blob_import('/proc/self/cmdline')",
    "blob_import('/etc/passwd')",
    "blob_import('{db}-wal')",
    "zeroblob(1000000000)",
    "randomblob(1000000000)",
    "sqlite_log(1, 'x')",
    "last_insert_rowid()",
    "changes()",
    "total_changes()",
    "optimize('x')",
]
SQLITE_WRAPPERS = [
    "SELECT {f}",
    "SELECT {f} AS x FROM customers",
    "SELECT name FROM customers WHERE id = (SELECT length({f}))",
    "WITH c AS (SELECT {f} AS v) SELECT * FROM c",
    "SELECT id FROM customers ORDER BY {f}",
    "SELECT count(*) FROM customers GROUP BY id HAVING {f} IS NULL",
    "SELECT CASE WHEN 1 = 1 THEN {f} END",
]
QUOTED_SQLITE = [
    "SELECT \"blob_import\"('{secret}')",
    "SELECT [blob_import]('{secret}')",
    "SELECT `blob_import`('{secret}')",
    "SELECT BLOB_IMPORT('{secret}')",
    "SELECT Blob_Export(x'00', '{target}')",
    "SELECT \"BLOB_EXPORT\"(x'00', '{target}')",
    "SELECT main.blob_import('{secret}')",
    "SELECT * FROM customers WHERE name IN (SELECT [readfile]('{secret}'))",
    "SELECT coalesce(NULL, blob_import('{secret}'))",
    "SELECT upper(hex(blob_import('{secret}')))",
    "SELECT json_object('k', blob_import('{secret}'))",
    "SELECT group_concat(blob_import('{secret}')) FROM customers",
    "SELECT row_number() OVER (ORDER BY blob_import('{secret}')) FROM customers",
    "SELECT * FROM json_each(blob_import('{secret}'))",
]
SQLITE_ONLY = [
    "ATTACH DATABASE '{target}' AS evil",
    "ATTACH '{secret}' AS s",
    "DETACH DATABASE main",
    "SELECT * FROM pragma_database_list",
    "SELECT * FROM pragma_compile_options",
    "SELECT * FROM dbstat",
    "SELECT * FROM sqlite_dbpage",
    "SELECT * FROM fsdir('/')",
    "SELECT * FROM zipfile('{secret}')",
    "SELECT * FROM generate_series(1, 10)",
    "SELECT * FROM pragma_writable_schema",
    "SELECT * FROM sqlite_temp_master WHERE blob_import('{secret}')",
    "PRAGMA writable_schema = ON",
    "PRAGMA journal_mode = DELETE",
    "PRAGMA query_only = 0",
    "PRAGMA main.page_size = 1024",
    "VACUUM INTO '{target}'",
    "REINDEX customers",
    "INSERT INTO customers (id, name) SELECT 99, hex(blob_import('{secret}'))",
    "REPLACE INTO products (id, sku, name) VALUES (1, 'x', 'y')",
    "UPDATE customers SET name = blob_import('{secret}')",
    "CREATE TRIGGER t AFTER INSERT ON customers BEGIN SELECT blob_export(x'00', '{target}'); END",
    "CREATE VIRTUAL TABLE v USING fts5(a)",
    "SELECT 1; ATTACH '{target}' AS x",
    "SELECT 1 /* /* */ ; ATTACH '{target}' AS x; /* */ */",
    "SELECT unlikely(1), blob_import('{secret}')",
    "SELECT * FROM (SELECT * FROM (SELECT blob_import('{secret}')))",
    "VALUES (blob_import('{secret}'))",
    "SELECT 1 UNION SELECT blob_import('{secret}')",
    "SELECT x FROM (VALUES (1)) AS v(x) WHERE EXISTS (SELECT readfile('{secret}'))",
]

PG_FUNCTIONS = [
    "pg_read_file('{secret}')",
    "pg_read_file('/etc/passwd', 0, 100)",
    "pg_read_binary_file('{secret}')",
    "pg_read_file('/proc/self/environ')",
    "pg_read_file('/proc/self/cmdline')",
    "pg_stat_file('{secret}')",
    "pg_ls_dir('/')",
    "pg_ls_logdir()",
    "pg_ls_waldir()",
    "lo_import('{secret}')",
    "lo_export(1, '{target}')",
    "lo_from_bytea(0, 'x')",
    "lo_get(1)",
    "pg_sleep(30)",
    "pg_sleep_for('30 seconds')",
    "pg_sleep_until(now() + interval '30 seconds')",
    "set_config('default_transaction_read_only', 'off', false)",
    "set_config('statement_timeout', '0', false)",
    "current_setting('data_directory')",
    "current_setting('hba_file')",
    "pg_terminate_backend(pg_backend_pid())",
    "pg_cancel_backend(1)",
    "pg_advisory_lock(42)",
    "pg_advisory_lock_shared(42)",
    "pg_try_advisory_lock(42)",
    "pg_advisory_xact_lock(42)",
    "pg_advisory_unlock_all()",
    "nextval('order_numbers')",
    "setval('order_numbers', 1000)",
    "currval('order_numbers')",
    "ts_stat('SELECT to_tsvector(name) FROM customers')",
    "ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, ''b''::tsquery')",
    "query_to_xml('SELECT * FROM customers', true, true, '')",
    "query_to_xml_and_xmlschema('SELECT 1', true, true, '')",
    "cursor_to_xml('c', 1, true, true, '')",
    "table_to_xml('customers', true, true, '')",
    "database_to_xml(true, true, '')",
    "schema_to_xml('public', true, true, '')",
    "brin_summarize_new_values('ix_orders_customer')",
    "brin_summarize_range('ix_orders_customer', 0)",
    "gin_clean_pending_list('ix_orders_customer')",
    "pg_notify('c', 'x')",
    "txid_current()",
    "pg_current_xact_id()",
    "pg_reload_conf()",
    "pg_rotate_logfile()",
    "pg_switch_wal()",
    "pg_create_restore_point('x')",
    "pg_logical_emit_message(true, 'p', 'x')",
    "pg_export_snapshot()",
    "pg_stat_reset()",
    "pg_stat_get_activity(NULL)",
    "inet_server_addr()",
    "inet_server_port()",
    "pg_relation_filepath('customers')",
    "pg_backend_pid()",
    "dblink('host=127.0.0.1', 'DELETE FROM customers')",
    "pg_import_system_collations('pg_catalog')",
    "pg_log_backend_memory_contexts(pg_backend_pid())",
    "pg_promote()",
    "setseed(0.5)",
]
PG_WRAPPERS = [
    "SELECT {f}",
    "SELECT name FROM customers WHERE id = (SELECT count(*) FROM (SELECT {f}) s)",
    "WITH c AS (SELECT {f} AS v) SELECT * FROM c",
]
PG_ESCAPES = [
    'SELECT U&"\\0070g_sleep"(30)',
    'SELECT u&"\\0070g_sleep"(30)',
    'SELECT U&"\\+000070g_sleep"(30)',
    "SELECT U&\"!0070g_sleep\" UESCAPE '!'(30)",
    "SELECT U&\"pg_re!0061d_file\" UESCAPE '!'('{secret}')",
    "SELECT U&\"pg_read_\\0066ile\"('{secret}')",
    "SELECT U&\"\\0073et_config\"('default_transaction_read_only', 'off', false)",
    'SELECT U&"pg_\\0061dvisory_lock"(42)',
    'SELECT U&"pg_terminate_b\\0061ckend"(1)',
    "SELECT U&\"lo_\\0069mport\"('{secret}')",
    "SELECT U&\"lo_export\"(1, '{target}')",
    "SELECT U&\"ts_st\\0061t\"('SELECT 1')",
    "SELECT U&\"nextv\\0061l\"('order_numbers')",
    'SELECT pg_catalog.U&"\\0070g_sleep"(30)',
    'SELECT U&"pg_catalog".U&"pg_read_file"(\'{secret}\')',
    "SELECT * FROM U&\"\\0070g_ls_dir\"('/')",
    'SELECT * FROM U&"pg_\\0061uthid"',
    'SELECT "pg_sleep"(30)',
    'SELECT "pg_catalog"."pg_sleep"(30)',
    "SELECT pg_catalog.\"pg_read_file\"('{secret}')",
    'SELECT "PG_SLEEP"(30)',
    "SELECT PG_SLEEP(30)",
    "SELECT Pg_Sleep(30)",
    "SELECT pg_catalog.pg_sleep(30)",
    "SELECT public.pg_sleep(30)",
    'SELECT U&"\\d800"(1)',
    'SELECT U&"\\00"(1)',
    "SELECT U&\"x\" UESCAPE 'a'",
    'SELECT U&"\\0000"(1)',
    "SELECT $1a$, pg_sleep(30), $1a$",
    'SELECT "a\\", pg_sleep(30) --"',
]
PG_ONLY = [
    "SELECT * FROM pg_authid",
    "SELECT * FROM pg_catalog.pg_authid",
    "SELECT rolpassword FROM pg_shadow",
    "SELECT * FROM pg_settings",
    "SELECT * FROM pg_file_settings",
    "SELECT * FROM pg_hba_file_rules",
    "SELECT * FROM pg_stat_activity",
    "SELECT * FROM pg_locks",
    "SELECT * FROM pg_largeobject",
    "SELECT * FROM pg_user_mappings",
    "SELECT * FROM pg_toast.pg_toast_1255",
    "SELECT * FROM pg_ls_dir('/') AS f",
    "SELECT * FROM pg_read_file('{secret}') AS f",
    "SELECT * FROM generate_series(1, 3) g, LATERAL pg_sleep(30) s",
    "SELECT * FROM ts_stat('SELECT to_tsvector(name) FROM customers')",
    "SELECT * FROM customers FOR UPDATE",
    "SELECT * FROM customers FOR KEY SHARE",
    "SELECT * FROM customers FOR UPDATE SKIP LOCKED",
    "SELECT * FROM customers FOR NO KEY UPDATE NOWAIT",
    "LOCK TABLE customers IN ACCESS EXCLUSIVE MODE",
    "WITH d AS (DELETE FROM order_lines RETURNING *) SELECT count(*) FROM d",
    "WITH s AS (SELECT setval('order_numbers', 99)) SELECT * FROM s",
    "SELECT * INTO TEMP copy FROM customers",
    "CREATE TEMP TABLE t AS SELECT 1 AS a",
    "COPY customers TO '{target}'",
    "COPY (SELECT 1) TO PROGRAM 'touch {target}'",
    "COPY customers FROM '{secret}'",
    "DO $$ BEGIN PERFORM pg_sleep(30); END $$",
    "SET ROLE postgres",
    "SET SESSION AUTHORIZATION postgres",
    "RESET ROLE",
    "DISCARD ALL",
    "LISTEN c",
    "NOTIFY c, 'x'",
    "PREPARE p AS SELECT 1",
    "EXECUTE p",
    "DECLARE c CURSOR FOR SELECT 1",
    "FETCH ALL FROM c",
    "SECURITY LABEL ON TABLE customers IS 'x'",
    "COMMENT ON TABLE customers IS 'x'",
    "REFRESH MATERIALIZED VIEW v",
    "CLUSTER customers",
    "VACUUM FULL customers",
    "CHECKPOINT",
    "LOAD 'plpgsql'",
    "CREATE EXTENSION dblink",
    "ALTER SYSTEM SET fsync = off",
    "SELECT 1; SELECT pg_sleep(30)",
    "SELECT xmlparse(document (SELECT pg_read_file('{secret}')))",
    "SELECT array_agg(x) FROM (SELECT pg_ls_dir('/') AS x) s",
    "SELECT to_json(pg_stat_file('{secret}'))",
    "SELECT c.name FROM customers c WHERE pg_try_advisory_lock(c.id)",
    "SELECT * FROM customers ORDER BY pg_advisory_lock(id)",
    "SELECT ARRAY(SELECT nextval('order_numbers') FROM generate_series(1, 3))",
    "VALUES (pg_sleep(30))",
    "SELECT 1 UNION ALL SELECT pg_advisory_lock(1)::text::int",
    "SELECT (SELECT set_config('search_path', 'evil', false))",
    "SELECT format('%s', current_setting('config_file'))",
    "SELECT length(pg_read_binary_file('/proc/self/maps'))",
    "SELECT public.evil_function()",
    "SELECT evil_schema.f(1)",
    "TABLE pg_authid",
    "SELECT * FROM ONLY pg_catalog.pg_authid",
    "SELECT * FROM pg_catalog.pg_stat_activity",
    "SELECT * FROM information_schema.user_mapping_options",
    "SELECT * FROM information_schema._pg_user_mappings",
    "SELECT sum(x) FROM generate_series(1, 10) x WHERE pg_sleep(1) IS NULL",
]

COMMON = [
    "DELETE FROM customers",
    "UPDATE customers SET name = 'x'",
    "INSERT INTO customers (id, name) VALUES (100, 'x')",
    "DROP TABLE order_lines",
    "CREATE TABLE evil (a INTEGER)",
    "ALTER TABLE customers ADD COLUMN evil INTEGER",
    "CREATE INDEX evil ON customers (name)",
    "SELECT 1; DELETE FROM customers",
    "SELECT 1;\nUPDATE customers SET name = NULL",
    "SELECT 1 /* /* */ ; DELETE FROM customers; /* */ */",
    "WITH x AS (SELECT 1) DELETE FROM customers",
    "SELECT * INTO evil FROM customers",
    "BEGIN; DELETE FROM customers; COMMIT",
    "COMMIT",
    "ROLLBACK; DELETE FROM customers",
    "SAVEPOINT s",
    "SELECT 1\u200b; DELETE FROM customers",
    "SELECT '\ud800'",
    "SELECT 1 FROM customers WHERE name = '\udfff'",
    "SELECT " + "(" * 20_000 + "1" + ")" * 20_000,
    "SELECT " + "(" * 1_000 + "1" + ")" * 1_000,
    "SELECT 1 " + "-" * 100_001,
    "",
    "  ",
    "SELECT",
    "SELECT * FROM customers WHERE",
    "EXPLAIN ANALYZE DELETE FROM customers",
    "ANALYZE customers",
    "GRANT ALL ON customers TO PUBLIC",
    "TRUNCATE TABLE orders",
]

TSQL = [
    "SELECT * FROM OPENROWSET('SQLNCLI', 'Server=x;Trusted_Connection=yes;', 'SELECT 1') AS a",
    "SELECT * FROM OPENROWSET(BULK 'c:\\secret.txt', SINGLE_CLOB) AS a",
    "SELECT * FROM OPENQUERY(linked, 'DELETE FROM t')",
    "SELECT * FROM OPENDATASOURCE('SQLNCLI', 'Data Source=x').db.dbo.t",
    "SELECT * FROM linked.shop.dbo.customers",
    "SELECT * FROM [linked].[shop].[dbo].[customers]",
    "SELECT c.* FROM dbo.t JOIN linked.shop.dbo.customers AS c ON 1 = 1",
    "SELECT * FROM sys.dm_os_enumerate_filesystem('c:\\', '*')",
    "SELECT * FROM sys.dm_os_file_exists('c:\\secret.txt')",
    "SELECT file_exists FROM sys.dm_os_file_exists('c:\\secret.txt')",
    "SELECT * FROM sys.dm_os_volume_stats(DB_ID(), 1)",
    "SELECT * FROM sys.dm_exec_sessions",
    "SELECT * FROM sys.dm_exec_requests CROSS APPLY sys.dm_exec_sql_text(sql_handle)",
    "SELECT * FROM sys.sql_logins",
    "SELECT password_hash FROM sys.sql_logins",
    "SELECT * FROM sys.server_principals",
    "SELECT * FROM sys.linked_servers",
    "SELECT * FROM sys.credentials",
    "SELECT * FROM sys.master_files",
    "SELECT * FROM master.sys.sql_logins",
    "SELECT * FROM sysprocesses",
    "SELECT * FROM master..syslogins",
    "SELECT * FROM fn_dblog(NULL, NULL)",
    "SELECT * FROM sys.fn_get_audit_file('c:\\*.sqlaudit', DEFAULT, DEFAULT)",
    "SELECT * FROM sys.fn_xe_file_target_read_file('c:\\*.xel', NULL, NULL, NULL)",
    "SELECT * FROM fn_trace_gettable('c:\\t.trc', DEFAULT)",
    "SELECT xp_cmdshell('dir')",
    "SELECT [xp_cmdshell]('dir')",
    "SELECT \"xp_cmdshell\"('dir')",
    "SELECT * FROM master..xp_dirtree",
    "SELECT * FROM master.dbo.sp_configure",
    "SELECT * FROM sp_who",
    "SELECT * FROM sys.sp_who2",
    "SELECT * FROM xp_fileexist",
    "EXEC xp_cmdshell 'dir'",
    "EXEC sp_configure 'show advanced options', 1",
    "SELECT 1 EXEC xp_cmdshell 'dir'",
    "SELECT 1\nDELETE FROM t",
    "SELECT 1 SHUTDOWN",
    "SELECT 1 WAITFOR DELAY '00:00:10'",
    "WAITFOR DELAY '00:00:10'",
    "SELECT * FROM dbo.Orders (HOLDLOCK)",
    "SELECT * FROM dbo.Orders (UPDLOCK)",
    "SELECT * FROM dbo.Orders (XLOCK, ROWLOCK)",
    "SELECT * FROM dbo.Orders o (TABLOCKX)",
    "SELECT * FROM t WITH (UPDLOCK)",
    "SELECT * FROM t WITH (XLOCK)",
    "SELECT * FROM t WITH (TABLOCK)",
    "SELECT * FROM t WITH (TABLOCKX)",
    "SELECT * FROM t WITH (HOLDLOCK)",
    "SELECT * FROM t WITH (SERIALIZABLE)",
    "SELECT * FROM t WITH (REPEATABLEREAD)",
    "SELECT * FROM t WITH (PAGLOCK)",
    "SELECT * FROM t WITH (NOLOCK, XLOCK)",
    "SELECT * FROM t WITH (INDEX = ix, UPDLOCK)",
    "SELECT * FROM t OPTION (TABLE HINT(t, XLOCK))",
    "SELECT * FROM t OPTION (TABLE HINT(t, HOLDLOCK))",
    "SELECT * FROM t OPTION (TABLE HINT(t, NOLOCK DELETE FROM x))",
    "SELECT * FROM t OPTION (QUERYTRACEON 8649)",
    "SELECT * FROM t OPTION (USE HINT('x'); DROP TABLE t)",
    "SELECT * FROM a INNER REMOTE JOIN b ON a.id = b.id",
    "SELECT NEXT VALUE FOR dbo.order_numbers",
    "SELECT * INTO #copy FROM t",
    "SELECT dbo.fn_anything(1)",
    "SELECT SERVERPROPERTY('InstanceDefaultDataPath')",
    "SELECT SCOPE_IDENTITY()",
    "SELECT SESSION_CONTEXT(N'k')",
    "SELECT CONTEXT_INFO()",
    "SELECT DECRYPTBYKEY(x) FROM t",
    "SELECT CERTENCODED(CERT_ID('c'))",
    "SELECT FILE_NAME(1)",
    "SELECT p.a FROM p WHERE MATCH(p-(f)->SHUTDOWN)",
    "WITH XMLNAMESPACES ('urn:x' AS x, (SELECT 1) AS y) SELECT 1",
    "SELECT 1 /* /* */ ; EXEC xp_cmdshell 'dir' */",
    "SELECT '\ud800'",
    "SELECT " + "(" * 20_000 + "1" + ")" * 20_000,
    "BULK INSERT t FROM 'c:\\x.csv'",
    "BACKUP DATABASE shop TO DISK = 'c:\\x.bak'",
    "DBCC CHECKDB",
    "RECONFIGURE",
    "SELECT * FROM t FOR SYSTEM_TIME ALL; DROP TABLE t",
]

LEGITIMATE_COMPLEX: list[tuple[str, int | None]] = [
    (
        "SELECT c.name, COUNT(o.id) AS n, SUM(l.qty) AS items, MAX(o.ordered_on) AS last FROM customers c "
        "LEFT JOIN orders o ON o.customer_id = c.id LEFT JOIN order_lines l ON l.order_id = o.id "
        "GROUP BY c.name HAVING COUNT(o.id) >= 0 ORDER BY items DESC, c.name",
        5,
    ),
    (
        "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 100) "
        "SELECT COUNT(*), SUM(x), MIN(x), MAX(x) FROM n",
        1,
    ),
    (
        "SELECT id, status, DENSE_RANK() OVER (ORDER BY status) AS r, NTILE(2) OVER (ORDER BY id) AS half, "
        "FIRST_VALUE(id) OVER (PARTITION BY status ORDER BY id) AS first, "
        "LEAD(id, 1) OVER (ORDER BY id) AS next FROM orders ORDER BY id",
        5,
    ),
    (
        "SELECT UPPER(SUBSTR(name, 1, 3)) AS p, LOWER(TRIM(name)) AS l, REPLACE(name, ' ', '_') AS u, "
        "LENGTH(name) AS n, COALESCE(email, 'none') AS e, NULLIF(status, 'new') AS s "
        "FROM customers JOIN orders ON orders.customer_id = customers.id ORDER BY orders.id",
        5,
    ),
    (
        "SELECT CASE WHEN qty > 2 THEN 'many' WHEN qty = 2 THEN 'two' ELSE 'one' END AS size, ABS(qty - 5) AS d, "
        "ROUND(qty * 1.5, 1) AS r FROM order_lines ORDER BY order_id, line_no",
        7,
    ),
    (
        "SELECT o.status, COUNT(DISTINCT o.customer_id) AS c FROM orders o WHERE o.id IN "
        "(SELECT order_id FROM order_lines WHERE qty > 1) GROUP BY o.status ORDER BY o.status",
        None,
    ),
]
SQLITE_LEGITIMATE = [
    ("SELECT name, type FROM sqlite_master WHERE type = 'table' ORDER BY name", 4),
    ("SELECT name FROM pragma_table_info('customers') ORDER BY cid", 5),
    ("SELECT * FROM pragma_foreign_key_list('orders')", 1),
    ("SELECT json_extract('{\"a\": [1, 2]}', '$.a[1]') AS v, json_array_length('[1,2,3]') AS n", 1),
    ("SELECT value FROM json_each('[1, 2, 3]') ORDER BY value", 3),
    (
        "SELECT strftime('%Y', ordered_on) AS y, date(ordered_on, '+1 day') AS d, printf('%05d', id) AS p "
        "FROM orders ORDER BY id",
        5,
    ),
    (
        "SELECT iif(id > 2, 'big', 'small'), ifnull(email, '-'), instr(name, 'a'), typeof(balance), hex(name) "
        "FROM customers ORDER BY id",
        5,
    ),
]
PG_LEGITIMATE = [
    ("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1", None),
    (
        "SELECT c.relname FROM pg_catalog.pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
        "WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 1",
        4,
    ),
    (
        "SELECT pg_catalog.format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
        "WHERE a.attrelid = 'customers'::regclass AND a.attnum > 0 ORDER BY a.attnum",
        5,
    ),
    ("SELECT jsonb_build_object('id', id, 'name', name) ->> 'name' AS n FROM customers ORDER BY id", 5),
    ("SELECT g, g * 2 AS d FROM generate_series(1, 5) AS g", 5),
    (
        "SELECT to_char(ordered_on, 'YYYY-MM') AS m, date_trunc('month', ordered_on) AS t, "
        "extract(year FROM ordered_on) AS y, ordered_on + interval '1 day' AS next FROM orders ORDER BY id",
        5,
    ),
    ("SELECT string_agg(name, ', ' ORDER BY name) AS names, array_agg(id ORDER BY id) AS ids FROM customers", 1),
    (
        "SELECT regexp_replace(name, '[aeiou]', '', 'g') AS c, split_part(email, '@', 2) AS d, "
        "lpad(id::text, 4, '0') AS p, md5(name) AS h FROM customers ORDER BY id",
        5,
    ),
    ('SELECT "Name" FROM sales."Regions" ORDER BY id', 2),
    ('SELECT U&"N\\0061me" FROM sales."Regions" ORDER BY id', 2),
    ("SELECT pg_size_pretty(pg_total_relation_size('customers')) IS NOT NULL AS sized, version() IS NOT NULL", 1),
]


def _fill(sql: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        sql = sql.replace("{" + key + "}", value)
    return sql


def _sqlite_corpus() -> list[str]:
    wrapped = [w.replace("{f}", f) for f in FILE_FUNCTIONS_SQLITE for w in SQLITE_WRAPPERS]
    return wrapped + QUOTED_SQLITE + SQLITE_ONLY + COMMON


def _pg_corpus() -> list[str]:
    wrapped = [w.replace("{f}", f) for f in PG_FUNCTIONS for w in PG_WRAPPERS]
    return wrapped + PG_ESCAPES + PG_ONLY + COMMON


def test_corpus_holds_at_least_300_statements() -> None:
    total = len(set(_sqlite_corpus()) | set(_pg_corpus()) | set(TSQL))
    assert total >= 300, total
    assert len(TSQL) >= 80


@pytest.mark.parametrize("sql", TSQL)
def test_tsql_corpus_is_refused(sql: str) -> None:
    verdict = guard.check(sql, "tsql")
    assert not verdict.allowed, sql
    assert verdict.reason in guard.REASONS and (verdict.message or "").startswith("Refused in read-only mode:")


def _files(tmp_path: Path) -> dict[str, Path]:
    secret = tmp_path / "sentinel-secret.txt"
    secret.write_text("sentinel: the signing key would be here\n")
    secret.chmod(0o644)
    tmp_path.chmod(0o755)  # the PostgreSQL server runs as another user: let it see (and fail to change) it
    return {"secret": secret, "target": tmp_path / "written-by-attacker.bin"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


async def _run_all(database: Any, corpus: list[str]) -> list[str]:
    leaked = []
    for sql in corpus:
        started = time.monotonic()
        try:
            await database.read(sql)
        except QueryRefused as exc:
            assert exc.reason in guard.REASONS, (sql[:80], exc.reason)
            assert "internal error" not in str(exc).lower()
        except Exception as exc:  # anything else means the statement reached the database
            leaked.append(f"{sql[:120]!r} -> {type(exc).__name__}: {exc}")
        else:
            leaked.append(f"{sql[:120]!r} -> ran")
        assert time.monotonic() - started < 2, sql[:80]  # refusals are instant, never a hang
    return leaked


async def test_sqlite_corpus_is_refused_and_changes_nothing(sqlite_db: Path, tmp_path: Path) -> None:
    files = _files(tmp_path)
    before, secret_digest = sqlite_snapshot(sqlite_db), _digest(files["secret"])
    values = {"secret": str(files["secret"]), "target": str(files["target"]), "db": str(sqlite_db)}
    corpus = [_fill(sql, values) for sql in _sqlite_corpus()]
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        assert await _run_all(database, corpus) == []
        # the pooled connections still work, and still read the same data
        assert (await database.read("SELECT COUNT(*) FROM customers")).rows == [[5]]
    assert sqlite_snapshot(sqlite_db) == before
    assert _digest(files["secret"]) == secret_digest
    assert not files["target"].exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("written")) == []


async def test_postgres_corpus_is_refused_and_changes_nothing(
    postgres_server: Any, pg_db: dict[str, Any], tmp_path: Path
) -> None:
    files = _files(tmp_path)
    name = pg_db["pg_database"]
    before, secret_digest = pg_snapshot(postgres_server, name), _digest(files["secret"])
    corpus = [
        _fill(sql, {"secret": str(files["secret"]), "target": str(files["target"]), "db": name}) for sql in _pg_corpus()
    ]
    async with open_database(**pg_db) as database:
        assert await _run_all(database, corpus) == []
        assert (await database.read("SELECT COUNT(*) AS n FROM customers")).rows == [[5]]
        locks = postgres_server.execute("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'")
        assert locks == [(0,)]
    assert pg_snapshot(postgres_server, name) == before
    assert _digest(files["secret"]) == secret_digest
    assert not files["target"].exists()
    assert postgres_server.execute("SELECT count(*) FROM pg_largeobject_metadata", database=name) == [(0,)]


async def test_legitimate_complex_reads_run_on_sqlite(sqlite_db: Path) -> None:
    async with open_database(db_backend="sqlite", sqlite_path=str(sqlite_db)) as database:
        for sql, rows in LEGITIMATE_COMPLEX + SQLITE_LEGITIMATE:
            verdict = guard.check(sql, "sqlite")
            assert verdict.allowed, verdict
            result = await database.read(sql)
            if rows is not None:
                assert result.row_count == rows, (sql, result.rows)


async def test_legitimate_complex_reads_run_on_postgres(pg_db: dict[str, Any]) -> None:
    async with open_database(**pg_db) as database:
        for sql, rows in [(s.replace("SUBSTR(", "SUBSTRING("), r) for s, r in LEGITIMATE_COMPLEX] + PG_LEGITIMATE:
            verdict = guard.check(sql, "postgres")
            assert verdict.allowed, verdict
            result = await database.read(sql)
            if rows is not None:
                assert result.row_count == rows, (sql, result.rows)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_huge_recursive_reads_are_allowed_but_time_capped(
    backend: str, sqlite_db: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        settings: dict[str, Any] = {"db_backend": "sqlite", "sqlite_path": str(sqlite_db)}
    else:
        settings = dict(request.getfixturevalue("pg_db"))
    sql = "WITH RECURSIVE n(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM n WHERE x < 1000000000) SELECT COUNT(*) FROM n"
    assert guard.check(sql, backend).allowed  # a read: the guard lets it through, the time cap stops it
    async with open_database(query_timeout_seconds=1.0, **settings) as database:
        started = time.monotonic()
        with pytest.raises(DatabaseError) as info:
            await database.read(sql)
        assert time.monotonic() - started < 10
        assert "internal error" not in str(info.value).lower()
        assert (await database.read("SELECT 1 AS ok")).rows == [[1]]  # the connection is usable after


def test_the_driver_functions_the_corpus_probes_are_real(sqlite_db: Path, tmp_path: Path) -> None:
    """Control: without the guard, the {SQLite3} ODBC driver's blob_import does read the sentinel and
    blob_export does write a file, so the corpus tests above would notice a guard that let them through."""
    import pyodbc

    files = _files(tmp_path)
    conn = pyodbc.connect(f"DRIVER={{SQLite3}};Database={sqlite_db}", timeout=5)
    try:
        cursor = conn.cursor()
        read = cursor.execute(f"SELECT blob_import('{files['secret']}')").fetchone()[0]
        assert bytes(read) == files["secret"].read_bytes()
        cursor.execute(f"SELECT blob_export(x'6f776e6564', '{files['target']}')").fetchall()
    finally:
        conn.close()
    assert files["target"].read_bytes() == b"owned"
    files["target"].unlink()
    assert not guard.check(f"SELECT blob_import('{files['secret']}')", "sqlite").allowed
