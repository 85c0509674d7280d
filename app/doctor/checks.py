"""The checks, in order, against the configured database with the service's own settings and code.

- `connect` opens one connection the way a pool worker does (the dialect's connection string, login
  timeout and session set-up) on a daemon thread with a hard time limit, so a down or silent server is
  a quick FAIL, never a hang. When it fails, every later check is SKIP.
- Everything else goes through a `Database` built from the same settings with a pool of one connection
  (so "the connection stays usable" is about the very connection that was interrupted): catalog queries
  and type round-trips through its public methods (the guard, the caps, the serializer), and the probes
  the guard would refuse as reads (sleeps, the write probe) through the pool's worker API.
- No check writes to a user table: the write probe uses a temporary table of its own inside a transaction
  that is always rolled back.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyodbc

from ..db.database import Database
from ..db.errors import clean_message, redact, sqlstate_of
from ..db.pool import Worker
from ..db.types import DatabaseError, QueryRefused, QueryTimeout, TableDescription, TableInfo
from .probes import FOR_JSON_COLUMN_PREFIXES, FOR_JSON_ROWS, MSSQL_AFTER_ROLLBACK, MSSQL_PERMISSIONS, PROBES, Probes
from .report import FAIL, PASS, SKIP, WARN, CheckResult, Report

if TYPE_CHECKING:
    from ..settings import Settings

SHORT_TIMEOUT_SECONDS = 1.0  # the time limit the timeout check sets (its sleep lasts 5 s)
CANCEL_AFTER_SECONDS = 0.5
USABLE_WITHIN_SECONDS = 3.0  # after a timeout or cancel, the next statement must run within this
UNREAD_ROWS_FAST_SECONDS = 3.0
DESCRIBE_TABLES = 3
DOCTOR_MIN_RESULT_BYTES = 100_000
CONNECT_GRACE_SECONDS = 5.0  # on top of the login timeout, for drivers that overrun it

ORDER = (
    "settings",
    "connect",
    "server",
    "tls",
    "read_only_session",
    "write_refused",
    "guard",
    "list_tables",
    "describe_table",
    "view_definition",
    "sample_and_fetch",
    "types",
    "for_json",
    "query_timeout",
    "query_cancel",
    "unread_rows",
)


# --- connection strings (to describe the target without secrets) ----------------------------------

_PAIR = re.compile(r"\s*([^=;]+?)\s*=\s*(\{(?:[^}]|\}\})*\}|[^;]*)\s*(?:;|$)")


def connection_options(connection_string: str) -> dict[str, str]:
    """`KEY=value;` pairs of an ODBC connection string, keys lower-cased, braces removed."""
    options: dict[str, str] = {}
    for key, value in _PAIR.findall(connection_string):
        if value.startswith("{") and value.endswith("}"):
            value = value[1:-1].replace("}}", "}")
        options[key.strip().lower()] = value
    return options


def describe_target(dialect_name: str, options: dict[str, str], read_only_mode: bool) -> str:
    mode = "read-only mode" if read_only_mode else "READ_ONLY_MODE=false"
    if dialect_name == "sqlite":
        where = options.get("database", "?")
    else:
        server = options.get("server", options.get("servername", "?"))
        if options.get("port"):
            server += f":{options['port']}"
        user = options.get("uid", options.get("user", options.get("username", "")))
        where = f"{user + '@' if user else ''}{server}/{options.get('database', '?')}"
    return f"{dialect_name} {where} ({mode})"


def _is_loopback(host: str) -> bool:
    host = host.strip().strip("[]").split(",")[0]
    if host.lower() in {"localhost", ""} or host.startswith("/"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# --- running driver work off the loop with a hard limit --------------------------------------------


async def _in_daemon_thread(fn: Callable[[], Any], limit: float) -> Any:
    """Run fn on a daemon thread; a driver that hangs past `limit` cannot keep the process alive."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def deliver(setter: Callable[[Any], None], value: Any) -> None:
        if not future.done():
            setter(value)

    def body() -> None:
        try:
            result = fn()
        except BaseException as exc:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, future.set_exception, exc)
        else:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(deliver, future.set_result, result)

    threading.Thread(target=body, name="doctor-connect", daemon=True).start()
    return await asyncio.wait_for(future, limit)


def _connect_hint(dialect_name: str, state: str | None, message: str) -> str:
    lowered = message.lower()
    user_vars = {"mssql": "MSSQL_USER / MSSQL_PASSWORD", "postgres": "PG_USER / PG_PASSWORD"}.get(dialect_name, "")
    if state == "IM002" or "can't open lib" in lowered or ("driver" in lowered and "not found" in lowered):
        return (
            "the ODBC driver is not installed or misnamed: install it or set MSSQL_DRIVER / PG_DRIVER / SQLITE_DRIVER"
        )
    if "certificate" in lowered or "ssl" in lowered or "tls" in lowered:
        return (
            "TLS failed: install a certificate the VM trusts (its CA in /usr/local/share/ca-certificates, "
            "then update-ca-certificates) whose name matches MSSQL_HOST; TrustServerCertificate=true only "
            "for a test server"
        )
    if state == "28000" or "login failed" in lowered or "authentication failed" in lowered:
        return (
            f"the server refused the login: check {user_vars}, that the login is enabled and has a user in the database"
        )
    if state in {"08001", "HYT00", "08S01", "08004"}:
        if dialect_name == "sqlite":
            return "check SQLITE_PATH and that the service user may read the file"
        return (
            "the server did not answer: check the host and port, the server's firewall and the VM's egress "
            "rules (gcloud compute firewall-rules list), and that the server listens on TCP"
        )
    if "cannot open database" in lowered or ("database" in lowered and "does not exist" in lowered):
        return "check MSSQL_DATABASE / PG_DATABASE and that the login has a user in that database"
    if dialect_name == "sqlite":
        return "check SQLITE_PATH and that the service user may read the file and its directory"
    return "see the message; the settings are read from .env in this directory and from the environment"


# --- SQL Server verdicts (pure: unit-tested with rows keyed by the probes' own column aliases) ------

Verdict = tuple[str, str, str]  # status, detail, hint


def mssql_server_verdict(row: dict[str, Any]) -> Verdict:
    version = str(row["product_version"] or "")
    head = version.split(".")[0]
    major = int(head) if head.isdigit() else 0
    detail = (
        f"SQL Server {version} {row['product_level'] or ''} ({row['edition']}, engine edition "
        f"{row['engine_edition']}), database {row['database_name']} ({row['updateability']}), "
        f"login {row['login_name']} as user {row['user_name']}"
    )
    azure = row["engine_edition"] in (5, 8)  # Azure SQL Database, Azure SQL Managed Instance
    if major >= 15 or azure:
        return PASS, detail, ""
    return (
        WARN,
        detail,
        (
            "the catalog queries are written for SQL Server 2019 (15.x) and later and Azure SQL; "
            "older versions may lack columns they read"
        ),
    )


def mssql_tls_verdict(options: dict[str, str], row: dict[str, Any] | None, *, visible: bool) -> Verdict:
    """Driver 18 defaults to Encrypt=yes and validates the certificate unless told not to."""
    encrypt = options.get("encrypt", "yes").lower()
    trust = options.get("trustservercertificate", "no").lower() in {"yes", "true", "1"}
    if not visible:
        negotiated = (
            "; the negotiated encryption is not visible to this login (sys.dm_exec_connections needs VIEW SERVER STATE)"
        )
    elif row is None:
        negotiated = "; sys.dm_exec_connections shows no row for this session"
    else:
        negotiated = (
            f"; the server reports encrypt_option={row['encrypt_option']}, {row['net_transport']}, "
            f"auth {row['auth_scheme']}"
        )
        if str(row["encrypt_option"]).upper() != "TRUE":
            return (
                FAIL,
                f"Encrypt={encrypt} but the connection is not encrypted{negotiated}",
                "set MSSQL_ENCRYPT=yes (or strict) and install a certificate on the server",
            )
    if encrypt in {"no", "optional", "false"}:
        return (
            WARN,
            f"Encrypt={encrypt}: the login and the data may cross the network unencrypted{negotiated}",
            "set MSSQL_ENCRYPT=yes (or strict for TDS 8)",
        )
    if trust:
        return (
            WARN,
            f"encrypted (Encrypt={encrypt}) but TrustServerCertificate=yes: the server's certificate is "
            f"not validated{negotiated}",
            "install a certificate the VM trusts whose name matches MSSQL_HOST, then set TrustServerCertificate=false",
        )
    return (
        PASS,
        f"Encrypt={encrypt}; the certificate validated against the VM's trust store and the host name{negotiated}",
        "",
    )


def mssql_write_verdict(
    perms: dict[str, Any], server_row: dict[str, Any], *, gone: Any, refused: str | None
) -> Verdict:
    """SQL Server has no read-only session: whether user tables could be written is the login's permissions."""
    if refused is not None:
        rollback_note = f"the temporary-table probe was refused ({refused})"
    elif gone == 1:
        rollback_note = "a temporary-table write inside a transaction left nothing after rollback"
    else:
        rollback_note = "the rollback probe could not confirm its temporary table was gone"
    if str(server_row["updateability"]).upper() == "READ_ONLY":
        return PASS, f"the database is READ_ONLY: the server refuses every write; {rollback_note}", ""
    powers = [
        name
        for name, flag in (
            ("sysadmin", perms["is_sysadmin"]),
            ("db_owner", perms["is_db_owner"]),
            ("ALTER on the database", perms["can_alter_database"]),
            ("CREATE TABLE", perms["can_create_table"]),
        )
        if flag == 1
    ]
    writable = int(perms["writable_tables"] or 0)
    if not powers and writable == 0:
        return (
            PASS,
            f"the login may not change any of the {perms['visible_tables']} tables it sees (no INSERT, "
            f"UPDATE or DELETE); {rollback_note}",
            "",
        )
    what = ", ".join(powers + ([f"INSERT/UPDATE/DELETE on {_count(writable, 'table')}"] if writable else []))
    return (
        WARN,
        f"the login could write ({what}): only the service's guard and its rolled-back transactions "
        f"stop writes; {rollback_note}",
        "use a login with db_datareader (or GRANT SELECT ON SCHEMA::dbo) only; see docs/database.md",
    )


def mssql_view_definition_verdict(perms: dict[str, Any], seen: str) -> Verdict:
    if perms["view_definition"] == 1:
        return PASS, f"the login has VIEW DEFINITION; {seen}", ""
    return (
        WARN,
        f"no VIEW DEFINITION: column defaults show as null; {seen}",
        "GRANT VIEW DEFINITION ON SCHEMA::dbo TO [login] (or on the database) to show defaults",
    )


_ERROR_HINTS = {
    "timeout": "the check ran past QUERY_TIMEOUT_SECONDS: the server is slow or blocked (locks?)",
    "unavailable": "the connection was lost during the checks: see the connect line and the server's log",
    "busy": "the doctor's one connection stayed busy: a cancel did not stop the statement before",
    "query_failed": "the server refused the doctor's query: see the message (permissions, version)",
}


# --- the run ---------------------------------------------------------------------------------------


class Doctor:
    def __init__(self, settings: Settings, report: Report) -> None:
        self.settings = settings
        self.report = report
        self.database: Database | None = None
        self.probes: type[Probes] = PROBES[settings.db_backend]
        self.tables: list[TableInfo] = []
        self.descriptions: list[TableDescription] = []

    @property
    def db(self) -> Database:
        assert self.database is not None
        return self.database

    @property
    def engine(self) -> str:
        return self.probes.engine

    def secrets(self) -> tuple[str, ...]:
        return self.db.pool.secrets if self.database else ()

    # -- helpers ----------------------------------------------------------------------------------
    def _result(self, name: str, status: str, detail: str, hint: str = "") -> CheckResult:
        secrets = self.secrets()
        # Hints are the doctor's own fixed text: never secret, and masking them only garbles them.
        return self.report.add(CheckResult(name, status, redact(detail, secrets), hint))

    async def _job(self, fn: Callable[[Worker], Any], timeout: float | None = None) -> Any:
        limit = self.settings.query_timeout_seconds if timeout is None else timeout
        return await self.db.pool.run(fn, timeout=limit)

    async def _rows(self, sql: str) -> list[dict[str, Any]]:
        """Rows of one of the doctor's own small catalog queries (never user data), as dicts."""

        def job(session: Worker) -> list[dict[str, Any]]:
            cursor = session.cursor()
            try:
                cursor.execute(sql)
                names = [str(d[0]) for d in cursor.description or ()]
                rows = [dict(zip(names, row, strict=False)) for row in cursor.fetchmany(100)]
            finally:
                session.connection.rollback()
            return rows

        return await self._job(job)

    async def _same_connection_after(self, before: Any) -> tuple[bool, float]:
        started = time.perf_counter()
        after = await self._job(_connection_of, timeout=USABLE_WITHIN_SECONDS)
        return after is before, time.perf_counter() - started

    # -- the checks -------------------------------------------------------------------------------
    async def run(self) -> None:
        if not await self.connect():
            for name in ORDER[2:]:
                self._result(name, SKIP, "not run: no connection")
            return
        # One connection; and room for the type probe's 9,000-byte value even under a small MAX_RESULT_BYTES
        # (the checks are about the service's behaviour, not its caps).
        settings = self.settings.replace(
            db_pool_size=1, max_result_bytes=max(self.settings.max_result_bytes, DOCTOR_MIN_RESULT_BYTES)
        )
        from ..obs.metrics import Metrics

        self.database = Database(settings, Metrics())
        await self.db.start()
        try:
            for name in ORDER[2:]:  # each check is the method of the same name
                step: Callable[[], Awaitable[None]] = getattr(self, name)
                try:
                    await step()
                except DatabaseError as exc:
                    self._result(name, FAIL, str(exc), _ERROR_HINTS.get(exc.code, _ERROR_HINTS["query_failed"]))
                except Exception as exc:  # a doctor bug must still end in a report, not a traceback
                    message = clean_message(exc, self.secrets()) if isinstance(exc, pyodbc.Error) else str(exc)
                    self._result(
                        name,
                        FAIL,
                        f"unexpected {type(exc).__name__}: {message}",
                        "please report this with the rest of the report",
                    )
        finally:
            await self.db.close()

    async def connect(self) -> bool:
        from ..db.dialects import get_dialect

        dialect = get_dialect(self.settings)
        connection_string = dialect.connection_string()
        secrets = dialect.secrets()
        limit = float(self.settings.db_connect_timeout_seconds) + CONNECT_GRACE_SECONDS
        if dialect.name == "sqlite" and not self.settings.odbc_connection_string:
            path = Path(self.settings.sqlite_path).resolve()
            if not path.is_file():  # the driver itself only says "connect failed"
                self.report.add(
                    CheckResult(
                        "connect",
                        FAIL,
                        f"SQLITE_PATH {path} does not exist or is not a file",
                        "set SQLITE_PATH to the database file (the service never creates it)",
                    )
                )
                return False

        def open_and_close() -> float:
            started = time.perf_counter()
            conn = pyodbc.connect(connection_string, **dialect.connect_kwargs())
            try:
                dialect.setup_connection(conn)
            finally:
                conn.close()
            return time.perf_counter() - started

        try:
            elapsed = await _in_daemon_thread(open_and_close, limit)
        except TimeoutError:
            self.report.add(
                CheckResult("connect", FAIL, f"no answer within {limit:g} s", _connect_hint(dialect.name, "HYT00", ""))
            )
            return False
        except pyodbc.Error as exc:
            message = clean_message(exc, secrets)
            state = sqlstate_of(exc)
            self.report.add(
                CheckResult(
                    "connect",
                    FAIL,
                    f"{message} (SQLSTATE {state or 'unknown'})",
                    _connect_hint(dialect.name, state, message),
                )
            )
            return False
        self.report.add(CheckResult("connect", PASS, f"connected and set up the session in {elapsed * 1000:.0f} ms"))
        return True

    async def server(self) -> None:
        row = (await self._rows(self.probes.server_sql))[0]
        if self.engine == "mssql":
            self._result("server", *mssql_server_verdict(row))
        elif self.engine == "postgres":
            self._result(
                "server",
                PASS,
                f"PostgreSQL {row['product_version']}, database {row['database_name']}, "
                f"user {row['login_name']}, time zone {row['time_zone']}",
            )
        else:
            path = connection_options(self.db.pool.connection_string).get("database", "")
            self._result("server", PASS, f"SQLite {row['product_version']}, file {path}")

    async def tls(self) -> None:
        options = connection_options(self.db.pool.connection_string)
        if self.engine == "sqlite":
            self._result("tls", SKIP, "a local file: no network connection to encrypt")
            return
        if self.engine == "postgres":
            rows = await self._rows(self.probes.tls_sql or "")
            host = options.get("server", "")
            if rows and rows[0]["ssl"]:
                self._result("tls", PASS, f"TLS {rows[0]['version']} ({rows[0]['cipher']})")
            elif _is_loopback(host):
                self._result("tls", PASS, f"not encrypted, on a loopback connection to {host}")
            else:
                self._result(
                    "tls",
                    WARN,
                    f"the connection to {host} is not encrypted",
                    "require TLS: ODBC_CONNECTION_STRING with SSLmode=verify-full (psqlODBC), and "
                    "hostssl lines in the server's pg_hba.conf",
                )
            return
        visible: list[dict[str, Any]] | None
        try:
            visible = await self._rows(self.probes.tls_sql or "")
        except DatabaseError:
            visible = None  # sys.dm_exec_connections needs VIEW SERVER STATE
        self._result("tls", *mssql_tls_verdict(options, visible[0] if visible else None, visible=visible is not None))

    async def read_only_session(self) -> None:
        if not self.settings.read_only_mode:
            self._result("read_only_session", SKIP, "READ_ONLY_MODE=false: sessions accept writes by design")
            return
        if self.engine == "mssql":
            row = (await self._rows(self.probes.server_sql))[0]
            intent = connection_options(self.db.pool.connection_string).get("applicationintent", "ReadWrite")
            detail = (
                f"database {row['updateability']}, ApplicationIntent={intent}; SQL Server has no read-only "
                "session, so every read runs in a transaction that is rolled back"
            )
            self._result("read_only_session", PASS, detail)
            return
        row = (await self._rows(self.probes.read_only_sql or ""))[0]
        values = [str(v).lower() for v in row.values()]
        if self.engine == "postgres":
            ok = values[0] == "on" and values[1] == "on"
            detail = f"default_transaction_read_only={values[0]}, transaction_read_only={values[1]}"
        else:
            mode_ro = "mode=ro" in connection_options(self.db.pool.connection_string).get("database", "")
            ok = values[0] == "1"
            detail = f"PRAGMA query_only={values[0]}, file opened {'mode=ro' if mode_ro else 'read-write'}"
        self._result(
            "read_only_session",
            PASS if ok else FAIL,
            detail,
            "" if ok else "the session set-up did not make the session read-only; please report this",
        )

    async def write_refused(self) -> None:
        if not self.settings.read_only_mode:
            self._result("write_refused", SKIP, "READ_ONLY_MODE=false: writes are allowed by design")
            return
        statements = self.probes.write_probe
        after = MSSQL_AFTER_ROLLBACK if self.engine == "mssql" else None
        secrets = self.secrets()

        def job(session: Worker) -> tuple[str | None, Any]:
            """(the refusal's message, or None if every statement ran; whether the temp table is gone)."""
            cursor = session.cursor()
            refusal: str | None = None
            try:
                for statement in statements:
                    cursor.execute(statement)
            except pyodbc.Error as exc:
                refusal = clean_message(exc, secrets)
            finally:
                session.connection.rollback()  # whatever happened, nothing stays
            gone = None
            if after:
                cursor = session.cursor()
                cursor.execute(after)
                gone = cursor.fetchone()[0]
                session.connection.rollback()
            return refusal, gone

        refusal, gone = await self._job(job)
        if self.engine != "mssql":
            if refusal is not None:
                self._result("write_refused", PASS, f"the session refused a temporary-table write: {refusal}")
            else:
                self._result(
                    "write_refused",
                    FAIL,
                    "the session accepted a write (rolled back, nothing kept)",
                    "the read-only session set-up is not in effect; please report this",
                )
            return
        perms = (await self._rows(MSSQL_PERMISSIONS))[0]
        server_row = (await self._rows(self.probes.server_sql))[0]
        self._result("write_refused", *mssql_write_verdict(perms, server_row, gone=gone, refused=refusal))

    async def guard(self) -> None:
        if not self.settings.read_only_mode:
            self._result("guard", SKIP, "READ_ONLY_MODE=false: statements the guard would refuse run as writes")
            return
        try:
            await self.db.read("DELETE FROM mcp_doctor_probe")
        except QueryRefused as exc:
            self._result("guard", PASS, f"the guard refused a DELETE before it reached the server ({exc})")
            return
        self._result("guard", FAIL, "the guard let a DELETE through", "please report this")

    async def list_tables(self) -> None:
        self.tables = await self.db.list_tables()
        views = sum(1 for t in self.tables if t.kind == "view")
        if not self.tables:
            self._result(
                "list_tables",
                WARN,
                "the login sees no tables or views",
                "grant read access: ALTER ROLE db_datareader ADD MEMBER [login] or GRANT SELECT ON "
                "SCHEMA::dbo TO [login] (PostgreSQL: GRANT SELECT ON ALL TABLES IN SCHEMA public)",
            )
            return
        tables = len(self.tables) - views
        self._result("list_tables", PASS, f"sees {_count(tables, 'table')} and {_count(views, 'view')}")

    async def describe_table(self) -> None:
        if not self.tables:
            self._result("describe_table", SKIP, "no table to describe")
            return
        described = []
        # Tables before views: defaults, keys and indexes live on tables.
        for table in sorted(self.tables, key=lambda t: t.kind != "table")[:DESCRIBE_TABLES]:
            description = await self.db.describe_table(table)
            self.descriptions.append(description)
            described.append(f"{table.qualified_name} ({len(description.columns)} columns)")
        empty = [d.table.qualified_name for d in self.descriptions if not d.columns]
        if empty:
            self._result(
                "describe_table",
                WARN,
                f"no columns visible for {', '.join(empty)}",
                "the login needs SELECT (or VIEW DEFINITION) on those objects",
            )
            return
        self._result("describe_table", PASS, "described " + ", ".join(described))

    async def view_definition(self) -> None:
        defaults = sum(1 for d in self.descriptions for c in d.columns if c.default is not None)
        seen = f"{_count(defaults, 'column default')} visible in the described tables"
        if self.engine != "mssql":
            self._result("view_definition", PASS, f"{seen}; column defaults come from catalogs every login reads")
            return
        perms = (await self._rows(MSSQL_PERMISSIONS))[0]
        self._result("view_definition", *mssql_view_definition_verdict(perms, seen))

    async def sample_and_fetch(self) -> None:
        if not self.descriptions:
            self._result("sample_and_fetch", SKIP, "no table to sample")
            return
        first = self.descriptions[0]
        sample = await self.db.sample(first.table, 1)
        keyed = next((d for d in self.descriptions if d.primary_key), None)
        if keyed is None:
            self._result(
                "sample_and_fetch",
                PASS,
                f"sampled {first.table.qualified_name} ({sample.row_count} "
                "rows); no described table has a primary key to fetch a row by",
            )
            return
        keyed_sample = sample if keyed is first else await self.db.sample(keyed.table, 1)
        if not keyed_sample.rows:
            self._result("sample_and_fetch", PASS, f"sampled {keyed.table.qualified_name}: empty, no row to fetch")
            return
        row = dict(zip(keyed_sample.columns, keyed_sample.rows[0], strict=False))
        key = {name: row[name] for name in keyed.primary_key}
        found = await self.db.fetch_row(keyed.table, key)
        if found is None:
            self._result(
                "sample_and_fetch",
                FAIL,
                f"{keyed.table.qualified_name}: the sampled row was not found again by its key {sorted(key)}",
                "fetching rows by key (ChatGPT fetch) will not work "
                "for this table; please report the key's column types",
            )
            return
        self._result(
            "sample_and_fetch",
            PASS,
            f"sampled {keyed.table.qualified_name} and fetched the row again by "
            f"its key ({', '.join(keyed.primary_key)})",
        )

    async def types(self) -> None:
        result = await self.db.read(self.probes.types_sql(), max_rows=1)
        values = dict(zip(result.columns, result.rows[0], strict=False)) if result.rows else {}
        wrong = [f"the result was cut ({result.truncated_reason})"] if result.truncated else []
        hints = []
        for probe in self.probes.type_probes:
            value = values.get(probe.column)
            if not probe.accept(value):
                shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
                wrong.append(f"{probe.column}: got {shown}, expected {probe.expected}")
                if probe.hint:
                    hints.append(probe.hint)
        if wrong:
            self._result(
                "types",
                WARN,
                f"{len(wrong)} of {len(self.probes.type_probes)} values differ: " + "; ".join(wrong),
                "; ".join(hints)
                or "the service's serialization differs from the documented one (docs/database.md); please report this",
            )
            return
        names = ", ".join(p.column for p in self.probes.type_probes)
        self._result("types", PASS, f"{len(self.probes.type_probes)} values round-trip as documented ({names})")

    async def for_json(self) -> None:
        if self.probes.for_json_sql is None:
            self._result("for_json", SKIP, "SQL Server only")
            return
        result = await self.db.read(self.probes.for_json_sql)
        column = result.columns[0] if result.columns else ""
        if result.row_count == 1:
            try:
                document = json.loads(result.rows[0][0])
            except (TypeError, ValueError):
                document = None
            if isinstance(document, list) and len(document) == FOR_JSON_ROWS:
                self._result("for_json", PASS, f"FOR JSON PATH arrived as one value ({len(result.rows[0][0])} chars)")
                return
        if column.startswith(FOR_JSON_COLUMN_PREFIXES) and result.row_count > 1:
            self._result(
                "for_json",
                WARN,
                f"FOR JSON PATH arrived split over {result.row_count} rows of about 2,033 "
                "characters: the model sees fragments, and the caps may cut mid-document",
                "the service joins these rows into one value (issue 15 item 3): please report this",
            )
            return
        self._result(
            "for_json",
            WARN,
            f"unexpected FOR JSON result: {result.row_count} rows, column {column!r}",
            "please report this",
        )

    async def query_timeout(self) -> None:
        before = await self._job(_connection_of)
        sql = self.probes.sleep_sql
        started = time.perf_counter()
        try:
            await self._job(lambda session: _run_to_end(session, sql), timeout=SHORT_TIMEOUT_SECONDS)
        except QueryTimeout:
            pass
        else:
            self._result(
                "query_timeout",
                FAIL,
                f"a 5 s statement finished despite a {SHORT_TIMEOUT_SECONDS:g} s time limit",
                "the time limit is not enforced; please report this",
            )
            return
        stopped = time.perf_counter() - started
        same, next_took = await self._same_connection_after(before)
        detail = (
            f"a 5 s statement was stopped after {stopped:.1f} s (limit {SHORT_TIMEOUT_SECONDS:g} s); the next "
            f"statement ran {next_took * 1000:.0f} ms later on {'the same' if same else 'a new'} connection"
        )
        if stopped > SHORT_TIMEOUT_SECONDS + USABLE_WITHIN_SECONDS:
            self._result("query_timeout", WARN, detail, "cancelling is slow on this server or network")
        elif not same:
            self._result(
                "query_timeout",
                WARN,
                detail,
                "the driver dropped the connection on cancel: each timeout costs a reconnect",
            )
        else:
            self._result("query_timeout", PASS, detail)

    async def query_cancel(self) -> None:
        before = await self._job(_connection_of)
        sql = self.probes.sleep_sql
        task = asyncio.ensure_future(self._job(lambda session: _run_to_end(session, sql), timeout=30.0))
        await asyncio.sleep(CANCEL_AFTER_SECONDS)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, DatabaseError):
            await task
        same, next_took = await self._same_connection_after(before)
        detail = (
            f"a statement cancelled after {CANCEL_AFTER_SECONDS:g} s (as when a client goes away); the next "
            f"statement ran {next_took * 1000:.0f} ms later on {'the same' if same else 'a new'} connection"
        )
        self._result(
            "query_cancel",
            PASS if same else WARN,
            detail,
            "" if same else "the driver dropped the connection on cancel: each cancel costs a reconnect",
        )

    async def unread_rows(self) -> None:
        before = await self._job(_connection_of)
        started = time.perf_counter()
        result = await self.db.read(self.probes.big_result_sql)  # the service's own row and byte caps
        took = time.perf_counter() - started
        same, next_took = await self._same_connection_after(before)
        detail = (
            f"a big read of wide rows cut at {result.row_count} rows "
            f"({result.truncated_reason or 'not cut'}) returned in {took * 1000:.0f} ms; the next statement "
            f"ran {next_took * 1000:.0f} ms later on {'the same' if same else 'a new'} connection"
        )
        if not result.truncated:
            self._result(
                "unread_rows",
                WARN,
                detail,
                "the result was expected to be cut by MAX_ROWS or MAX_RESULT_BYTES; please report this",
            )
        elif took > UNREAD_ROWS_FAST_SECONDS or not same:
            self._result(
                "unread_rows",
                WARN,
                detail,
                "the driver reads or discards the unread rows slowly, or "
                "drops the connection: big SELECTs cost time (issue 15 item 5)",
            )
        else:
            self._result("unread_rows", PASS, detail)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _connection_of(session: Worker) -> Any:
    """The worker's connection object itself: comparing it by identity tells whether it was replaced."""
    return session.conn


def _run_to_end(session: Worker, sql: str) -> None:
    cursor = session.cursor()
    try:
        cursor.execute(sql)
        while cursor.description is not None and cursor.fetchmany(1000):
            pass
    finally:
        session.connection.rollback()
