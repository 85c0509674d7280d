"""Alembic environment: always run from `app.state.migrate` on a connection it opened and locked."""

from __future__ import annotations

from alembic import context

connection = context.config.attributes["connection"]
context.configure(connection=connection, version_table="alembic_version_auth", transaction_per_migration=True)
with context.begin_transaction():
    context.run_migrations()
