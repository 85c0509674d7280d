"""Signing key rotation: `signs_from`, when a key starts signing (NULL: since created_at).

`mssql-mcp keys rotate` stores the new key with `signs_from` a publish delay ahead, so every node and
every client's JWKS cache has it before it signs; the SQLite store adds the same column in its migration
step (app/auth/store.py).

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("signing_keys", sa.Column("signs_from", sa.Float(precision=53)))


def downgrade() -> None:
    op.drop_column("signing_keys", "signs_from")
