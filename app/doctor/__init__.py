"""`mssql-mcp doctor`: check the configured database from this machine with the service's own settings.

It reads the same settings as the service (.env in the working directory, then the environment), runs
the checks in app.doctor.checks and prints one line per check; `--json` prints the report as JSON.
Exit code 0 when nothing failed (warnings allowed; `--strict` makes them fail), 1 otherwise.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import TextIO

from ..settings import Settings, SettingsError, load_settings
from .checks import Doctor, connection_options, describe_target
from .report import FAIL, CheckResult, Report

__all__ = ["doctor_main", "run_doctor"]


async def run_doctor(settings: Settings) -> Report:
    from ..db.dialects import get_dialect

    dialect = get_dialect(settings)
    options = connection_options(dialect.connection_string())
    report = Report(dialect=dialect.name, target=describe_target(dialect.name, options, settings.read_only_mode))
    redacted = settings.redacted()
    report.add(
        CheckResult(
            "settings",
            "PASS",
            f"DB_BACKEND={redacted['db_backend']}, "
            f"QUERY_TIMEOUT_SECONDS={redacted['query_timeout_seconds']:g}, "
            f"DB_CONNECT_TIMEOUT_SECONDS={redacted['db_connect_timeout_seconds']}, "
            f"MAX_ROWS={redacted['max_rows']}",
        )
    )
    await Doctor(settings, report).run()
    return report


def _quiet_logging() -> None:
    """The report is the output: the database layer's log lines would only repeat it (and break --json)."""
    import structlog

    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    logging.getLogger().setLevel(logging.CRITICAL + 10)


def doctor_main(
    *,
    json_output: bool = False,
    strict: bool = False,
    out: TextIO | None = None,
    environ: dict[str, str] | None = None,
    env_file: str | None = ".env",
) -> int:
    out = out or sys.stdout
    _quiet_logging()
    try:
        settings = load_settings(environ=environ, env_file=env_file)
    except SettingsError as exc:
        report = Report(dialect="unknown", target="settings could not be read")
        report.add(
            CheckResult(
                "settings",
                FAIL,
                str(exc),
                "fix the setting in .env or the environment (`mssql-mcp settings` lists them all)",
            )
        )
    else:
        report = asyncio.run(run_doctor(settings))
    print(report.as_json(strict) if json_output else report.as_text(strict), file=out, flush=True)
    return report.exit_code(strict)
