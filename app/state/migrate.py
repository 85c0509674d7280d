"""Bring the PostgreSQL state database to the newest schema (Alembic), safely from several nodes at once.

Every node runs this at start-up (and `mssql-mcp users ...` before it touches the store). A session-level
advisory lock makes a second node wait while the first migrates, then find nothing left to do.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

MIGRATIONS = Path(__file__).parent / "migrations"
VERSION_TABLE = "alembic_version_auth"
_LOCK_KEY = "mssql-mcp state migrations"


def _config(connection: sa.Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str | None:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return ScriptDirectory.from_config(config).get_current_head()


def current_revision(engine: sa.Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection, opts={"version_table": VERSION_TABLE}).get_current_revision()


def upgrade(engine: sa.Engine) -> None:
    """Apply every migration not yet applied (none: nothing happens)."""
    with engine.connect() as connection:
        connection.execute(sa.text("SELECT pg_advisory_lock(hashtextextended(:key, 0))"), {"key": _LOCK_KEY})
        connection.commit()
        try:
            command.upgrade(_config(connection), "head")
            connection.commit()
        finally:
            connection.execute(sa.text("SELECT pg_advisory_unlock(hashtextextended(:key, 0))"), {"key": _LOCK_KEY})
            connection.commit()
