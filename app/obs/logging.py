"""structlog set-up: JSON lines in production, a readable console in development.

Everything goes through one stdlib handler, so aiohttp's own loggers and any library using
`logging` come out in the same format as our `structlog.get_logger(__name__)` lines, with the
request id bound by the HTTP middleware and with secrets redacted (defence in depth: code should
not log secrets in the first place). The one exception is the line written on every tool call
(`per_call_logger`, the audit line): in JSON mode the same processors render it and it is written
to the handler's stream directly, without a LogRecord.
"""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable, Mapping
from typing import IO, TYPE_CHECKING, Any, TextIO, cast

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

if TYPE_CHECKING:
    from ..settings import Settings

REDACTED = "***"

# Keys whose values are secrets wherever they appear (compared lower-cased, '-' as '_').
_SECRET_KEYS = frozenset(
    {
        "password",
        "passwd",
        "pwd",
        "new_password",
        "old_password",
        "secret",
        "client_secret",
        "token",
        "access_token",
        "refresh_token",
        "id_token",
        "metrics_token",
        "authorization",
        "proxy_authorization",
        "cookie",
        "set_cookie",
        "code_verifier",
        "authorization_code",
        "auth_code",
        "api_key",
        "apikey",
        "private_key",
        "signing_key",
        "odbc_connection_string",
        "connection_string",
        "mssql_password",
        "pg_password",
        "oidc_client_secret",
        "assertion",
        "client_assertion",
    }
)
# Any key containing one of these words is treated as secret too (e.g. "upstream_client_secret").
_SECRET_WORDS = ("password", "secret", "passwd", "private_key")

_STRING_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # ODBC connection-string fragments: PWD=...; Password={...} (a value runs to the next ';')
    (re.compile(r"(?i)\b(pwd|password)\s*=\s*(\{[^}]*\}|[^;\n]*)"), r"\1=" + REDACTED),
    # Authorization header values.
    (re.compile(r"\b(Bearer|bearer|BEARER|Basic|BASIC) +[A-Za-z0-9._~+/-]{8,}=*"), r"\1 " + REDACTED),
    # Secrets in query strings or form bodies.
    (
        re.compile(
            r"(?i)([?&;](?:access_token|refresh_token|id_token|token|client_secret|code|code_verifier|"
            r"password|assertion)=)[^&;\s\"']*"
        ),
        r"\1" + REDACTED,
    ),
)


def _is_secret_key(key: Any) -> bool:
    return _is_secret_name(key) if isinstance(key, str) else False


@functools.lru_cache(maxsize=4096)
def _is_secret_name(key: str) -> bool:
    # Cached: log keys come from a small fixed vocabulary and this runs for every key of every line.
    k = key.lower().replace("-", "_")
    return k in _SECRET_KEYS or any(word in k for word in _SECRET_WORDS)


def scrub_text(text: str) -> str:
    """Mask secret-looking fragments inside a free-form string."""
    if "=" not in text and " " not in text:
        return text  # fast path: every pattern needs an '=' or a space; ids, paths and names have neither
    for pattern, replacement in _STRING_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _redact_value(value: Any, depth: int = 0) -> Any:
    if depth > 6:  # bounded: log payloads are small; don't walk pathological structures
        return value
    if isinstance(value, str):
        return scrub_text(value)
    if isinstance(value, Mapping):
        return {
            k: (REDACTED if _is_secret_key(k) and v not in (None, "") else _redact_value(v, depth + 1))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return type(value)(_redact_value(v, depth + 1) for v in value)
    return value


_SCALARS = frozenset({int, float, bool, type(None)})
# Names seen that are not secret (bounded like _is_secret_name's cache): a line whose names are all in here,
# nearly every line, needs no per-name test, only the value tests.
_PLAIN_NAMES: set[str] = set()
_PLAIN_NAMES_MAX = 4096


def redact_secrets(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
    """structlog processor: mask values of secret keys and secret fragments in strings.

    Runs for every line (the audit line on every tool call), so a line of known plain names takes a short
    path, and plain strings and numbers, nearly every value, take a short path within it; replacing the
    value of an existing key while iterating is safe (same keys)."""
    if not _PLAIN_NAMES.issuperset(event_dict):
        return _redact_with_names(event_dict)
    for key, value in event_dict.items():
        kind = type(value)
        if kind is str:
            if "=" in value or " " in value:  # scrub_text's own fast-path test, without the call
                event_dict[key] = scrub_text(value)
        elif kind not in _SCALARS and isinstance(value, str | Mapping | list | tuple) and value:
            event_dict[key] = _redact_value(value)
    return event_dict


def _redact_with_names(event_dict: EventDict) -> EventDict:
    """redact_secrets for a line with a name not yet known to be plain: tests every name, learns the plain ones."""
    for key, value in event_dict.items():
        secret = _is_secret_key(key)
        if not secret and type(key) is str and len(_PLAIN_NAMES) < _PLAIN_NAMES_MAX:
            _PLAIN_NAMES.add(key)
        kind = type(value)
        if kind is str:
            if value and secret:
                event_dict[key] = REDACTED
            elif "=" in value or " " in value:
                event_dict[key] = scrub_text(value)
        elif kind in _SCALARS:
            if value is not None and secret:
                event_dict[key] = REDACTED
        elif secret and value not in (None, ""):
            event_dict[key] = REDACTED
        elif isinstance(value, str | Mapping | list | tuple):
            event_dict[key] = _redact_value(value)
    return event_dict


def _scrub_rendered(logger: WrappedLogger, method_name: str, rendered: Any) -> Any:
    # Console mode renders tracebacks itself; scrub the final text as well.
    return scrub_text(rendered) if isinstance(rendered, str) else rendered


def _resolve_format(log_format: str, stream: IO[str]) -> str:
    if log_format in {"json", "console"}:
        return log_format
    isatty = getattr(stream, "isatty", None)
    return "console" if callable(isatty) and isatty() else "json"


_HANDLER_MARK = "_mssql_mcp_handler"
_ORJSON_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS | orjson.OPT_NON_STR_KEYS


def _json_line(event_dict: Any, **_: Any) -> str:
    """One compact JSON object (orjson: a fraction of json.dumps' time); values JSON cannot carry as they
    are (dates, objects) are written as str(), as before; what orjson refuses (ints past 64 bits, lone
    surrogates) goes through json.dumps."""
    try:
        return orjson.dumps(event_dict, default=str, option=_ORJSON_OPTIONS).decode()
    except orjson.JSONEncodeError:
        return json.dumps(event_dict, default=str, separators=(",", ":"))


_RENDERED_MARK = "_mssql_mcp_rendered"


def _hand_over_rendered(
    logger: WrappedLogger, method_name: str, rendered: Any
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Last structlog processor: the rendered line becomes the record's message, marked as final."""
    return (rendered,), {"extra": {_RENDERED_MARK: True}}


class _Formatter(structlog.stdlib.ProcessorFormatter):
    """ProcessorFormatter that passes lines structlog already rendered through unchanged."""

    def format(self, record: logging.LogRecord) -> str:
        if record.__dict__.get(_RENDERED_MARK):
            return str(record.msg)
        return super().format(record)


_STDLIB_SRCFILE = logging._srcfile


def _skip_unused_record_fields(skip: bool) -> None:
    """The logging HOWTO's "Optimization" switches: no caller frame walk, thread, process or
    multiprocessing lookup per record. Our lines never show those fields (neither renderer adds them), and
    every tool call writes two lines (access, audit)."""
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = not skip
    logging._srcfile = None if skip else _STDLIB_SRCFILE


# Loggers of lines written on every call (the audit line), assembled once per configure_logging: structlog's
# lazy proxy from get_logger() assembles a new bound logger for every line. In JSON mode they are structlog's
# native loggers: the same processors render the same line and structlog's WriteLogger writes it to the
# handler's stream, without a LogRecord or the handler chain (together about a third of the line's CPU).
_per_call_loggers: dict[str, Any] = {}
_per_call_factory: Callable[[str], Any] | None = None


def per_call_logger(name: str) -> Any:
    """The logger `name` for a line written on every call; structlog's usual one when configure_logging has
    not run (or unconfigure_logging did)."""
    logger = _per_call_loggers.get(name)
    if logger is None:
        if _per_call_factory is None:
            return structlog.get_logger(name)
        logger = _per_call_loggers[name] = _per_call_factory(name)
    return logger


def _named(name: str) -> Processor:
    def add_logger_name(logger: WrappedLogger, method_name: str, event_dict: EventDict) -> EventDict:
        event_dict["logger"] = name  # what structlog.stdlib.add_logger_name writes, where it writes it
        return event_dict

    return add_logger_name


def _native_json_factory(stream: IO[str], json_final: list[Processor]) -> Callable[[str], Any]:
    """Per-call loggers for JSON mode: the stdlib chain's processors that apply outside logging (level by
    the logger's effective level, which is LOG_LEVEL and is set only by configure_logging)."""

    def build(name: str) -> Any:
        processors: list[Processor] = [
            structlog.contextvars.merge_contextvars,
            structlog.stdlib.add_log_level,
            _named(name),
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            *json_final,
        ]
        level = logging.getLogger(name).getEffectiveLevel()
        return structlog.wrap_logger(
            structlog.WriteLogger(cast(TextIO, stream)),  # any text stream: it only calls write and flush
            processors=processors,
            wrapper_class=structlog.make_filtering_bound_logger(level),
        ).bind()

    return build


def _configured_factory(name: str) -> Any:
    """Per-call loggers for console mode: the configured stdlib chain, assembled once."""
    return structlog.get_logger(name).bind()


def _set_per_call_factory(factory: Callable[[str], Any] | None) -> None:
    global _per_call_factory
    _per_call_loggers.clear()
    _per_call_factory = factory


def configure_logging(settings: Settings, *, stream: IO[str] | None = None) -> None:
    """Configure structlog and stdlib logging once per process (idempotent; tests call it again).

    `stream` defaults to stderr; tests pass a StringIO to read the lines back.
    """
    stream = stream if stream is not None else sys.stderr
    level = logging.getLevelNamesMapping().get(settings.log_level, logging.INFO)  # LOG_LEVEL is upper case
    fmt = _resolve_format(settings.log_format, stream)

    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    json_final: list[Processor] = [
        structlog.processors.format_exc_info,
        redact_secrets,
        structlog.processors.JSONRenderer(serializer=_json_line),
    ]
    # JSON lines of our own loggers are rendered by structlog's chain and handed to the handler as text
    # (two per tool call: no second LogRecord, no second pass in the formatter); lines from plain `logging`
    # users (aiohttp, libraries) still go through the formatter's foreign chain. Same processors, same text.
    own_final: list[Processor] = (
        [*json_final, _hand_over_rendered]
        if fmt == "json"
        else [structlog.stdlib.ProcessorFormatter.wrap_for_formatter]
    )
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.processors.StackInfoRenderer(),
            *own_final,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # Not cached: module-level loggers must follow a later configure_logging() (tests, reloads).
        cache_logger_on_first_use=False,
    )

    final: list[Processor]
    if fmt == "json":
        final = json_final
    else:
        final = [redact_secrets, structlog.dev.ConsoleRenderer(colors=False), _scrub_rendered]
    formatter = _Formatter(
        foreign_pre_chain=shared,
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, *final],
    )

    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    setattr(handler, _HANDLER_MARK, True)

    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    _skip_unused_record_fields(True)
    root.addHandler(handler)
    root.setLevel(level)
    # Our middleware writes the access line (without query strings); aiohttp's would duplicate it.
    logging.getLogger("aiohttp.access").setLevel(max(level, logging.WARNING))
    _set_per_call_factory(_native_json_factory(stream, json_final) if fmt == "json" else _configured_factory)


def unconfigure_logging() -> None:
    """Remove our handler and restore structlog's defaults (used by tests)."""
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    logging.getLogger("aiohttp.access").setLevel(logging.NOTSET)
    _skip_unused_record_fields(False)
    root.setLevel(logging.WARNING)  # the stdlib default
    structlog.reset_defaults()
    _set_per_call_factory(None)
