"""Every setting in one table: the fields of `Settings`, each with its environment variable(s), default, help.

Values come from the process environment and, below it, a `.env` file (the seed system's
format). The first environment variable listed for a setting is its canonical name; the others
are accepted aliases so a seed `.env` keeps working. Bad values stop start-up with one line
naming the setting, and secrets are never echoed back.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from dotenv import dotenv_values


class SettingsError(ValueError):
    """A setting is missing or malformed; the message names it and never contains its value if secret."""


def _bool(raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on", "y", "t"}:
        return True
    if value in {"0", "false", "no", "off", "n", "f", ""}:
        return False
    raise ValueError("expected true or false")


def _int(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        try:
            value = int(raw.strip())
        except ValueError:
            raise ValueError("expected an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = f" and {maximum}" if maximum is not None else ""
            raise ValueError(
                f"expected a value >= {minimum}{upper}" if not upper else f"expected a value between {minimum}{upper}"
            )
        return value

    return parse


def _float(minimum: float) -> Callable[[str], float]:
    def parse(raw: str) -> float:
        try:
            value = float(raw.strip())
        except ValueError:
            raise ValueError("expected a number") from None
        if value < minimum:
            raise ValueError(f"expected a number >= {minimum}")
        return value

    return parse


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        value = raw.strip().lower()
        if value not in options:
            raise ValueError(f"expected one of {', '.join(options)}")
        return value

    return parse


def _list(raw: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in raw.replace(";", ",").split(",") if item.strip())


MSSQL_AUTHENTICATIONS = ("ActiveDirectoryServicePrincipal", "ActiveDirectoryMsi", "AccessToken")


def _mssql_authentication(raw: str) -> str:
    value = raw.strip()
    for option in MSSQL_AUTHENTICATIONS:
        if value.lower() == option.lower():
            return option
    if value:
        raise ValueError(f"expected one of {', '.join(MSSQL_AUTHENTICATIONS)} (or empty)")
    return ""


def _str(raw: str) -> str:
    return raw.strip()


def _path_prefix(raw: str) -> str:
    value = raw.strip().strip("/")
    return f"/{value}" if value else ""


def _url(raw: str) -> str:
    value = raw.strip().rstrip("/")
    if value and not (value.startswith("http://") or value.startswith("https://")):
        raise ValueError("expected an http:// or https:// URL")
    return value


_T = TypeVar("_T")
_SPEC = "setting"  # the dataclasses.field metadata key holding a field's _Spec


# The annotation of each field (strings under `from __future__ import annotations`) -> the runtime type.
_FIELD_TYPES: dict[str, type] = {"str": str, "int": int, "float": float, "bool": bool, "tuple[str, ...]": tuple}


@dataclass(frozen=True)
class _Spec:
    """What a Settings field needs beyond its name, type and default: where it comes from and how it is read."""

    env: tuple[str, ...]
    help: str
    parse: Callable[[str], object]
    secret: bool
    group: str


def setting(
    env: tuple[str, ...],
    default: _T,
    help: str,
    parse: Callable[[str], _T] | None = None,
    *,
    secret: bool = False,
    group: str = "general",
) -> _T:
    """A Settings field: its default, plus the environment names, help, parser, secret flag and group."""
    spec = _Spec(env=env, help=help, parse=parse or _str, secret=secret, group=group)
    return field(default=default, metadata={_SPEC: spec})


@dataclass(frozen=True)
class Setting:
    """One row of the settings table (derived from a Settings field): what `mssql-mcp settings` and README show."""

    name: str
    env: tuple[str, ...]
    default: object
    help: str
    parse: Callable[[str], object]
    secret: bool
    group: str


# The one table: the fields themselves carry their environment names and help (no second list to keep in
# step). README's settings section is generated from / checked against SETTINGS, which is derived from it.
@dataclass(frozen=True)
class Settings:
    """Every setting, typed; build with load_settings(), change with replace()."""

    # --- database -------------------------------------------------------------------------
    db_backend: str = setting(
        ("DB_BACKEND",),
        "mssql",
        "Which database to serve: mssql (SQL Server), postgres or sqlite (demo and tests).",
        _choice("mssql", "postgres", "sqlite"),
        group="database",
    )
    mssql_host: str = setting(
        ("MSSQL_HOST", "MSSQL_SERVER"),
        "",
        "SQL Server host name or address (required for mssql unless ODBC_CONNECTION_STRING is set).",
        group="database",
    )
    mssql_port: int = setting(("MSSQL_PORT",), 1433, "SQL Server TCP port.", _int(1, 65535), group="database")
    mssql_user: str = setting(("MSSQL_USER",), "", "SQL login name (empty with Trusted_Connection).", group="database")
    mssql_password: str = setting(("MSSQL_PASSWORD",), "", "SQL login password.", secret=True, group="database")
    mssql_database: str = setting(
        ("MSSQL_DATABASE",), "", "Database to connect to (required for mssql).", group="database"
    )
    mssql_driver: str = setting(
        ("MSSQL_DRIVER",),
        "ODBC Driver 18 for SQL Server",
        "ODBC driver name, or an absolute path to the driver library.",
        group="database",
    )
    trust_server_certificate: bool = setting(
        ("TrustServerCertificate", "MSSQL_TRUST_SERVER_CERTIFICATE"),
        False,
        "Accept the server's TLS certificate without validation (self-signed servers).",
        _bool,
        group="database",
    )
    trusted_connection: bool = setting(
        ("Trusted_Connection", "MSSQL_TRUSTED_CONNECTION"),
        False,
        "Use integrated (Kerberos) authentication instead of a SQL login.",
        _bool,
        group="database",
    )
    mssql_encrypt: str = setting(
        ("MSSQL_ENCRYPT",),
        "yes",
        "Driver 18 Encrypt= value: yes, no or strict.",
        _choice("yes", "no", "strict", "mandatory", "optional"),
        group="database",
    )
    mssql_read_only_intent: bool = setting(
        ("MSSQL_READ_ONLY_INTENT",),
        False,
        "Connect with ApplicationIntent=ReadOnly (routes to a readable secondary in an AG).",
        _bool,
        group="database",
    )
    mssql_lock_timeout_ms: int = setting(
        ("MSSQL_LOCK_TIMEOUT_MS",),
        5000,
        "SET LOCK_TIMEOUT for each session, in milliseconds (-1 waits forever).",
        _int(-1),
        group="database",
    )
    mssql_authentication: str = setting(
        ("MSSQL_AUTHENTICATION",),
        "",
        "Entra ID sign-in: ActiveDirectoryServicePrincipal (MSSQL_USER = client id, MSSQL_PASSWORD = secret), "
        "ActiveDirectoryMsi (managed identity; MSSQL_USER = its client id, optional) or AccessToken "
        "(MSSQL_ACCESS_TOKEN_FILE); empty for a SQL login or Trusted_Connection.",
        _mssql_authentication,
        group="database",
    )
    mssql_access_token_file: str = setting(
        ("MSSQL_ACCESS_TOKEN_FILE",),
        "",
        "File holding an Entra ID access token for MSSQL_AUTHENTICATION=AccessToken, read at every new "
        "connection (a workload identity federation helper keeps it fresh).",
        group="database",
    )
    mssql_multi_subnet_failover: bool = setting(
        ("MSSQL_MULTI_SUBNET_FAILOVER",),
        True,
        "MultiSubnetFailover=Yes: try every address of an availability group listener at once (faster "
        "failover; harmless on a single server).",
        _bool,
        group="database",
    )
    sqlite_path: str = setting(("SQLITE_PATH",), "", "SQLite database file (DB_BACKEND=sqlite).", group="database")
    sqlite_driver: str = setting(("SQLITE_DRIVER",), "SQLite3", "ODBC driver name for SQLite.", group="database")
    sqlite_inline_read_ms: int = setting(
        ("SQLITE_INLINE_READ_MS",),
        5,
        "SQLite (WAL files): a read runs on the event loop when it ends within this many ms, saving two "
        "thread hand-offs per driver call; a longer one is stopped and runs again on a worker thread; a statement "
        "that does so (computing, not waiting) in one of five runs goes to a worker for the next minute. 0: every "
        "read on a worker thread.",
        _int(0, 20),
        group="database",
    )
    pg_host: str = setting(("PG_HOST",), "127.0.0.1", "PostgreSQL host (DB_BACKEND=postgres).", group="database")
    pg_port: int = setting(("PG_PORT",), 5432, "PostgreSQL port.", _int(1, 65535), group="database")
    pg_user: str = setting(("PG_USER",), "postgres", "PostgreSQL user.", group="database")
    pg_password: str = setting(("PG_PASSWORD",), "", "PostgreSQL password.", secret=True, group="database")
    pg_database: str = setting(("PG_DATABASE",), "postgres", "PostgreSQL database.", group="database")
    pg_driver: str = setting(("PG_DRIVER",), "PostgreSQL Unicode", "ODBC driver name for PostgreSQL.", group="database")
    odbc_connection_string: str = setting(
        ("ODBC_CONNECTION_STRING",),
        "",
        "Raw ODBC connection string; overrides the host/user/password settings of the backend.",
        secret=True,
        group="database",
    )
    db_pool_size: int = setting(
        ("DB_POOL_SIZE",), 4, "Number of database connections (one worker thread each).", _int(1, 64), group="database"
    )
    db_pool_wait_seconds: float = setting(
        ("DB_POOL_WAIT_SECONDS",),
        5.0,
        "How long a call waits for a free connection before failing with 'database busy, retry'.",
        _float(0.0),
        group="database",
    )
    db_pool_max_waiting: int = setting(
        ("DB_POOL_MAX_WAITING",),
        100,
        "Most calls waiting for a free connection at once; more are refused at once with 'database busy'.",
        _int(0),
        group="database",
    )
    db_connect_timeout_seconds: int = setting(
        ("DB_CONNECT_TIMEOUT_SECONDS",),
        0,
        "Login timeout for each new connection; 0 picks 20 s for SQL Server (Azure SQL serverless resume, "
        "availability group failover) and 5 s otherwise.",
        _int(0, 120),
        group="database",
    )
    query_timeout_seconds: float = setting(
        ("QUERY_TIMEOUT_SECONDS",),
        30.0,
        "Time limit for every query; a call may ask for less, never more.",
        _float(0.1),
        group="database",
    )
    max_rows: int = setting(
        ("MAX_ROWS",), 1000, "Most rows a query returns before it is cut (truncated: true).", _int(1), group="database"
    )
    max_result_bytes: int = setting(
        ("MAX_RESULT_BYTES",),
        100_000,
        "Most bytes of JSON row data in one result. Claude Code keeps results up to MAX_RESULT_BYTES + "
        "20,000 characters inline (the tools declare that in _meta; 50,000 otherwise, larger ones go to a "
        "file) and refuses results over its MAX_MCP_OUTPUT_TOKENS (25,000 tokens by default): see docs/tools.md.",
        _int(1000),
        group="database",
    )
    sample_max_rows: int = setting(
        ("SAMPLE_MAX_ROWS",), 100, "Cap on get_table_sample's limit.", _int(1), group="database"
    )
    read_only_mode: bool = setting(
        ("READ_ONLY_MODE",),
        True,
        "Refuse anything but a single read query (parsed with sqlglot) and run reads in a rolled-back "
        "transaction on a read-only session.",
        _bool,
        group="database",
    )
    guard_extra_functions: str = setting(
        ("GUARD_EXTRA_FUNCTIONS",),
        "",
        "Comma list of extra function names (or schema.name) the read-only guard allows beyond its built-in "
        "allowlists; names on its never list stay refused.",
        group="database",
    )
    access_policy_file: str = setting(
        ("ACCESS_POLICY_FILE",),
        "",
        "YAML file of per-role table and column access (docs/policy.md); empty: every role reads everything. "
        "An invalid file stops start-up with one line; SIGHUP reloads it (an invalid new file keeps the old).",
        group="database",
    )
    # --- MCP ------------------------------------------------------------------------------
    host: str = setting(("HOST", "BIND_HOST"), "127.0.0.1", "Address the HTTP server binds to.", group="server")
    port: int = setting(("PORT",), 8008, "HTTP port.", _int(1, 65535), group="server")
    public_base_url: str = setting(
        ("PUBLIC_BASE_URL", "BASE_URL"),
        "",
        "Public https URL users enter (without /mcp); derived from the request when empty.",
        _url,
        group="server",
    )
    environment_path: str = setting(
        ("ENVIRONMENT_PATH",),
        "",
        "Path prefix the service is published under behind a proxy (the seed's X-Environment-Path).",
        _path_prefix,
        group="server",
    )
    trusted_proxies: tuple[str, ...] = setting(
        ("TRUSTED_PROXIES",),
        ("127.0.0.1", "::1"),
        "Peers whose X-Forwarded-Proto/Host and X-Environment-Path headers are believed.",
        _list,
        group="server",
    )
    allowed_origins: tuple[str, ...] = setting(
        ("ALLOWED_ORIGINS",),
        (),
        "Extra browser Origins allowed on MCP endpoints (the public URL, loopback, chatgpt.com and "
        "claude.ai are always allowed).",
        _list,
        group="server",
    )
    max_request_bytes: int = setting(
        ("MAX_REQUEST_BYTES",),
        1_048_576,
        "Largest request body accepted; larger ones get 413.",
        _int(1024),
        group="server",
    )
    max_search_results: int = setting(
        ("MAX_SEARCH_RESULTS",), 20, "Most results ChatGPT's search returns.", _int(1, 500), group="server"
    )
    cache_ttl_seconds: int = setting(
        ("CACHE_TTL_SECONDS",), 300, "How long fetch results found by search stay cached.", _int(0), group="server"
    )
    search_columns: tuple[str, ...] = setting(
        ("SEARCH_COLUMNS",),
        (),
        "Columns ChatGPT's keyword search reads (table.column, schema.table.column or table.*, comma-"
        "separated); empty: text columns named like names, titles, descriptions, cities, emails, ...",
        _list,
        group="search",
    )
    search_rows_per_table: int = setting(
        ("SEARCH_ROWS_PER_TABLE",),
        50,
        "Most rows one keyword search reads from each table.",
        _int(1, 1000),
        group="search",
    )
    search_max_tables: int = setting(
        ("SEARCH_MAX_TABLES",), 50, "Most tables one keyword search reads.", _int(1, 1000), group="search"
    )
    search_time_budget_seconds: float = setting(
        ("SEARCH_TIME_BUDGET_SECONDS",),
        5.0,
        "Time one keyword search may spend reading data; what is found by then is returned.",
        _float(0.1),
        group="search",
    )
    records_session_seconds: int = setting(
        ("RECORDS_SESSION_SECONDS",),
        900,
        "Lifetime of the browser session a person gets by signing in on a record page (citation links).",
        _int(60, 86400),
        group="search",
    )
    records_roles: tuple[str, ...] = setting(
        ("RECORDS_ROLES",),
        ("reader", "writer"),
        "Roles whose users may open record pages in a browser; others get a 'No access' page.",
        _list,
        group="search",
    )
    chatgpt_include_claude_tools: bool = setting(
        ("CHATGPT_INCLUDE_CLAUDE_TOOLS",),
        False,
        "Also offer the Claude tool set under /chatgpt (ChatGPT developer mode accepts any tools).",
        _bool,
        group="server",
    )
    session_idle_seconds: int = setting(
        ("MCP_SESSION_IDLE_SECONDS",),
        3600,
        "Streamable HTTP sessions idle longer than this are forgotten.",
        _int(10),
        group="server",
    )
    session_active_seconds: int = setting(
        ("MCP_SESSION_ACTIVE_SECONDS",),
        300,
        "A session used within this many seconds (or streaming, or running a call) counts as active in "
        "mssql_mcp_sessions; older ones count as idle until MCP_SESSION_IDLE_SECONDS forgets them.",
        _int(1),
        group="server",
    )
    max_sessions: int = setting(
        ("MCP_MAX_SESSIONS",), 10_000, "Most concurrent MCP sessions kept.", _int(1), group="server"
    )
    stream_max_messages: int = setting(
        ("MCP_STREAM_MAX_MESSAGES",),
        1000,
        "Most messages queued for one SSE stream whose client is not reading; more drop that stream.",
        _int(1),
        group="server",
    )
    stream_max_bytes: int = setting(
        ("MCP_STREAM_MAX_BYTES",),
        8_388_608,
        "Most bytes queued for one SSE stream whose client is not reading; more drop that stream.",
        _int(65_536),
        group="server",
    )
    allow_unauth_methods: bool = setting(
        ("ALLOW_UNAUTH_METHODS",),
        False,
        "Testing only: allow MCP methods other than tools/call without a token.",
        _bool,
        group="auth",
    )
    allow_unauth_tools_call: bool = setting(
        ("ALLOW_UNAUTH_TOOLS_CALL",), False, "Testing only: allow tools/call without a token.", _bool, group="auth"
    )
    # --- OAuth ----------------------------------------------------------------------------
    data_dir: str = setting(
        ("DATA_DIR",),
        "./var",
        "Directory for the service's state (users, clients, tokens, signing keys).",
        group="auth",
    )
    allowed_redirect_hosts: tuple[str, ...] = setting(
        ("ALLOWED_REDIRECT_HOSTS",),
        ("chatgpt.com", "openai.com", "claude.ai", "claude.com", "anthropic.com", "vscode.dev"),
        "Hosts (and their subdomains) OAuth clients may redirect to over https; loopback is always allowed.",
        _list,
        group="auth",
    )
    allowed_redirect_schemes: tuple[str, ...] = setting(
        ("ALLOWED_REDIRECT_SCHEMES",),
        ("cursor",),
        "Private-use URI schemes native apps may redirect to (RFC 8252), e.g. cursor; empty allows none.",
        _list,
        group="auth",
    )
    access_token_ttl_seconds: int = setting(
        ("ACCESS_TOKEN_TTL_SECONDS",), 3600, "Access token lifetime.", _int(60), group="auth"
    )
    refresh_token_ttl_seconds: int = setting(
        ("REFRESH_TOKEN_TTL_SECONDS",), 30 * 86400, "Refresh token lifetime.", _int(300), group="auth"
    )
    auth_code_ttl_seconds: int = setting(
        ("AUTH_CODE_TTL_SECONDS",), 300, "Authorization code lifetime.", _int(10, 600), group="auth"
    )
    login_max_failures: int = setting(
        ("LOGIN_MAX_FAILURES",),
        5,
        "Failed sign-ins per user and address before that pair is locked.",
        _int(1),
        group="auth",
    )
    login_lockout_seconds: int = setting(
        ("LOGIN_LOCKOUT_SECONDS",),
        300,
        "How long a lock lasts; also the window failures are counted in.",
        _int(1),
        group="auth",
    )
    login_address_max_failures: int = setting(
        ("LOGIN_ADDRESS_MAX_FAILURES",),
        20,
        "Failed sign-ins from one address (any user names) before that address is locked.",
        _int(1),
        group="auth",
    )
    login_user_slow_after: int = setting(
        ("LOGIN_USER_SLOW_AFTER",),
        20,
        "Failed sign-ins for one user from all addresses after which that user's attempts are slowed (never locked).",
        _int(1),
        group="auth",
    )
    login_user_slow_seconds: int = setting(
        ("LOGIN_USER_SLOW_SECONDS",),
        5,
        "While slowed, one sign-in attempt per this many seconds is admitted for the user.",
        _int(1, 3600),
        group="auth",
    )
    refresh_reuse_leeway_seconds: int = setting(
        ("REFRESH_REUSE_LEEWAY_SECONDS",),
        10,
        "A spent refresh token presented again by the same client this soon still works (parallel "
        "refreshes); later it is reuse and revokes the sign-in. 0 turns the leeway off.",
        _int(0, 300),
        group="auth",
    )
    registrations_per_hour: int = setting(
        ("REGISTRATIONS_PER_HOUR",),
        60,
        "Dynamic client registrations accepted per address per hour.",
        _int(1),
        group="auth",
    )
    unused_client_seconds: int = setting(
        ("UNUSED_CLIENT_SECONDS",),
        86400,
        "Registered clients never used for an authorization this long after registering are removed.",
        _int(60),
        group="auth",
    )
    state_encryption_key: str = setting(
        ("STATE_ENCRYPTION_KEY",),
        "",
        "Key (32+ characters) that encrypts the signing keys in DATA_DIR; empty: read from STATE_ENCRYPTION_KEY_FILE.",
        secret=True,
        group="auth",
    )
    state_encryption_key_file: str = setting(
        ("STATE_ENCRYPTION_KEY_FILE",),
        "",
        "File holding the state encryption key (outside DATA_DIR); empty: the systemd credential "
        "state_encryption_key, else ~/.config/mssql-mcp/state-encryption.key (created if missing).",
        group="auth",
    )
    state_database_url: str = setting(
        ("STATE_DATABASE_URL",),
        "",
        "Where users, clients, tokens and signing keys live: empty: the SQLite file in DATA_DIR (one VM); "
        "postgresql://user:password@host/db: PostgreSQL shared by every node (needs PUBLIC_BASE_URL).",
        secret=True,
        group="auth",
    )
    cimd_allow_private: bool = setting(
        ("CIMD_ALLOW_PRIVATE_ADDRESSES",),
        False,
        "Allow Client ID Metadata Documents on private or loopback addresses (tests only).",
        _bool,
        group="auth",
    )
    oidc_provider: str = setting(
        ("OIDC_PROVIDER",),
        "",
        "Upstream sign-in: empty (local users only), google, microsoft, or an issuer URL.",
        group="auth",
    )
    oidc_client_id: str = setting(("OIDC_CLIENT_ID",), "", "Upstream OpenID Connect client id.", group="auth")
    oidc_client_secret: str = setting(
        ("OIDC_CLIENT_SECRET",), "", "Upstream OpenID Connect client secret.", secret=True, group="auth"
    )
    oidc_tenant: str = setting(("OIDC_TENANT",), "common", "Microsoft Entra ID tenant.", group="auth")
    oidc_allowed_domains: tuple[str, ...] = setting(
        ("OIDC_ALLOWED_DOMAINS",), (), "Email domains allowed to sign in upstream.", _list, group="auth"
    )
    oidc_allowed_emails: tuple[str, ...] = setting(
        ("OIDC_ALLOWED_EMAILS",), (), "Email addresses allowed to sign in upstream.", _list, group="auth"
    )
    oidc_default_role: str = setting(
        ("OIDC_DEFAULT_ROLE",),
        "reader",
        "Role of users who sign in upstream.",
        _choice("reader", "writer", "admin"),
        group="auth",
    )
    # --- observability ----------------------------------------------------------------------
    log_level: str = setting(
        ("LOG_LEVEL",),
        "INFO",
        "DEBUG, INFO, WARNING or ERROR.",
        lambda raw: _choice("debug", "info", "warning", "error", "critical")(raw).upper(),
        group="observability",
    )
    log_format: str = setting(
        ("LOG_FORMAT",),
        "auto",
        "json (production), console (development) or auto (console on a terminal).",
        _choice("json", "console", "auto"),
        group="observability",
    )
    event_loop: str = setting(
        ("EVENT_LOOP",),
        "uvloop",
        "uvloop (libuv, less loop time per call) or asyncio (the standard library's).",
        _choice("uvloop", "asyncio"),
        group="server",
    )
    workers: int = setting(
        ("WORKERS",),
        1,
        "Server processes sharing the port (each with its own database pool); more than 1 needs REDIS_URL.",
        _int(1, 64),
        group="server",
    )
    redis_url: str = setting(
        ("REDIS_URL",),
        "",
        "Shared ephemeral state (MCP sessions, stream relay, fetch cache, sign-in codes, throttling): "
        "empty: in this process only; redis://[:password@]host:port/db or rediss://... for TLS.",
        secret=True,
        group="server",
    )
    audit_sql_text: bool = setting(
        ("AUDIT_SQL_TEXT",),
        False,
        "Put the SQL text in audit lines (otherwise only its fingerprint).",
        _bool,
        group="observability",
    )
    metrics_host: str = setting(
        ("METRICS_HOST",), "127.0.0.1", "Address of the separate /metrics listener.", group="observability"
    )
    metrics_port: int = setting(
        ("METRICS_PORT",),
        9108,
        "Port of the separate /metrics listener (0 disables it).",
        _int(0, 65535),
        group="observability",
    )
    metrics_token: str = setting(
        ("METRICS_TOKEN",),
        "",
        "If set, /metrics on the main port is served to requests with this bearer token.",
        secret=True,
        group="observability",
    )

    def __post_init__(self) -> None:
        # Values from the environment are parsed to their types; these checks make keyword overrides (tests,
        # replace()) hold to the same types, so no reader needs an int() or tuple() of its own.
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _FIELD_TYPES[f.type] if isinstance(f.type, str) else f.type
            if expected is float and isinstance(value, int) and not isinstance(value, bool):
                object.__setattr__(self, f.name, float(value))
            elif expected is tuple and isinstance(value, list):
                object.__setattr__(self, f.name, tuple(value))
            elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
                raise SettingsError(f"{f.name}: expected {expected.__name__}, got {type(value).__name__}")

    def replace(self, **changes: Any) -> Settings:
        unknown = set(changes) - _NAMES
        if unknown:
            raise AttributeError(f"unknown settings: {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def redacted(self) -> dict[str, Any]:
        """For logs and /health: secrets replaced by '***' when set."""
        shown: dict[str, Any] = {}
        for s in SETTINGS:
            value = getattr(self, s.name)
            shown[s.name] = "***" if s.secret and value else value
        return shown

    # Convenience derived values -------------------------------------------------------------
    @property
    def auth_enabled(self) -> bool:
        return not (self.allow_unauth_methods and self.allow_unauth_tools_call)


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(f.name, spec.env, f.default, spec.help, spec.parse, spec.secret, spec.group)
    for f in dataclasses.fields(Settings)
    for spec in [f.metadata[_SPEC]]
)
_NAMES = frozenset(s.name for s in SETTINGS)


# Login timeouts when DB_CONNECT_TIMEOUT_SECONDS is 0. SQL Server's is longer: a paused Azure SQL serverless
# database takes ~10-60 s to resume and an availability group failover ~10-30 s.
MSSQL_LOGIN_TIMEOUT_SECONDS = 20
DEFAULT_LOGIN_TIMEOUT_SECONDS = 5


def load_settings(
    environ: Mapping[str, str] | None = None,
    env_file: str | os.PathLike[str] | None = ".env",
    *,
    require_database: bool = True,
    **overrides: Any,
) -> Settings:
    """Environment wins over the .env file, keyword overrides win over both (tests).

    require_database=False is for commands that never connect (user management).
    """
    source: dict[str, str] = {}
    if env_file and Path(env_file).is_file():
        # No ${VAR} expansion: a password containing "${" must arrive as written.
        source.update({k: v for k, v in dotenv_values(env_file, interpolate=False).items() if v is not None})
    source.update(os.environ if environ is None else environ)

    values: dict[str, Any] = {}
    for setting in SETTINGS:
        for var in setting.env:
            if var in source:
                raw = source[var]
                try:
                    values[setting.name] = setting.parse(raw)
                except ValueError as exc:
                    shown = "" if setting.secret else f" (got {raw!r})"
                    raise SettingsError(f"{var}: {exc}{shown}") from None
                break
    unknown = set(overrides) - _NAMES
    if unknown:
        raise SettingsError(f"unknown settings: {', '.join(sorted(unknown))}")
    values.update(overrides)
    settings = Settings(**values)
    if not settings.db_connect_timeout_seconds:  # 0: the backend's own sane login timeout
        login_timeout = MSSQL_LOGIN_TIMEOUT_SECONDS if settings.db_backend == "mssql" else DEFAULT_LOGIN_TIMEOUT_SECONDS
        settings = settings.replace(db_connect_timeout_seconds=login_timeout)
    if settings.state_database_url:
        _validate_state_database(settings)
    if settings.redis_url or settings.workers > 1:
        _validate_redis(settings)
    if require_database:
        _validate_database(settings)
    return settings


def _validate_state_database(s: Settings) -> None:
    """Checked after parsing, so the message never repeats the URL (it may hold a password)."""
    scheme = s.state_database_url.split("://", 1)[0].lower() if "://" in s.state_database_url else ""
    if scheme not in {"postgresql", "postgres", "postgresql+psycopg"}:
        raise SettingsError("STATE_DATABASE_URL: expected empty (the SQLite file in DATA_DIR) or postgresql://...")
    if not s.public_base_url:
        # Every node must put the same issuer in its tokens and metadata, so it cannot come from the request.
        raise SettingsError("PUBLIC_BASE_URL: required when STATE_DATABASE_URL is set (every node must agree on it)")


def _validate_redis(s: Settings) -> None:
    """Checked after parsing, so the message never repeats the URL (it may hold a password)."""
    if s.workers > 1 and not s.redis_url:
        # Workers share sessions, streams and sign-in codes only through Redis: without it a session
        # started on one worker would be unknown to the next.
        raise SettingsError(f"WORKERS={s.workers}: needs REDIS_URL (the workers share sessions through Redis)")
    scheme = s.redis_url.split("://", 1)[0].lower() if "://" in s.redis_url else ""
    if scheme not in {"redis", "rediss", "unix"}:
        raise SettingsError("REDIS_URL: expected redis://host:port/db, rediss://... (TLS) or unix:///path")
    if not s.public_base_url:
        raise SettingsError("PUBLIC_BASE_URL: required when REDIS_URL is set (every node must agree on it)")


def _validate_database(s: Settings) -> None:
    if s.odbc_connection_string:
        return
    if s.db_backend == "mssql":
        if not s.mssql_host:
            raise SettingsError("MSSQL_HOST: required when DB_BACKEND=mssql (or set ODBC_CONNECTION_STRING)")
        if not s.mssql_database:
            raise SettingsError("MSSQL_DATABASE: required when DB_BACKEND=mssql")
        if "," in s.mssql_host:
            raise SettingsError(f"MSSQL_HOST: a host name without ',port' (set MSSQL_PORT; got {s.mssql_host!r})")
        auth = s.mssql_authentication
        if auth and s.trusted_connection:
            raise SettingsError("MSSQL_AUTHENTICATION: cannot be combined with Trusted_Connection=yes")
        if auth == "ActiveDirectoryServicePrincipal" and not (s.mssql_user and s.mssql_password):
            raise SettingsError(
                "MSSQL_AUTHENTICATION=ActiveDirectoryServicePrincipal: needs MSSQL_USER (the "
                "application's client id) and MSSQL_PASSWORD (its client secret)"
            )
        if auth == "AccessToken" and not s.mssql_access_token_file:
            raise SettingsError("MSSQL_AUTHENTICATION=AccessToken: needs MSSQL_ACCESS_TOKEN_FILE")
        if not auth and not s.trusted_connection and not s.mssql_user:
            raise SettingsError("MSSQL_USER: required unless Trusted_Connection=yes or MSSQL_AUTHENTICATION is set")
    elif s.db_backend == "sqlite" and not s.sqlite_path:
        raise SettingsError("SQLITE_PATH: required when DB_BACKEND=sqlite")
