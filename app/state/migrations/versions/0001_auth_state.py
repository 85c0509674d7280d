"""The auth store's tables, as the SQLite store has them at its schema version 2.

Times are seconds since the epoch (double precision), as in SQLite, so both backends share one set of
records. JSON columns are text holding JSON (the records decode them the same way for both backends).
User names are unique regardless of case (SQLite: COLLATE NOCASE; here a unique index on lower()).

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

Time = sa.Float(precision=53)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("username", sa.Text, nullable=False),
        sa.Column("password_hash", sa.Text),
        sa.Column("role", sa.Text, sa.CheckConstraint("role <> ''", name="users_role_not_empty"), nullable=False),
        sa.Column("source", sa.Text, nullable=False, server_default="local"),
        sa.Column("email", sa.Text),
        sa.Column("token_version", sa.Integer, nullable=False, server_default="1"),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("updated_at", Time, nullable=False),
    )
    op.create_index("users_username_lower", "users", [sa.text("lower(username)")], unique=True)
    op.create_table(
        "clients",
        sa.Column("client_id", sa.Text, primary_key=True),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("secret_hash", sa.Text),
        sa.Column("auth_method", sa.Text, nullable=False),
        sa.Column("redirect_uris", sa.Text, nullable=False),
        sa.Column("grant_types", sa.Text, nullable=False),
        sa.Column("client_name", sa.Text),
        sa.Column("metadata", sa.Text, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("fetched_at", Time),
        sa.Column("last_used_at", Time),
    )
    op.create_table(
        "registrations",
        sa.Column("address", sa.Text, nullable=False),
        sa.Column("at", Time, nullable=False),
    )
    op.create_index("registrations_address", "registrations", ["address", "at"])
    op.create_table(
        "auth_requests",
        sa.Column("id", sa.Text, primary_key=True),
        sa.Column("browser_hash", sa.Text, nullable=False),
        sa.Column("csrf", sa.Text, nullable=False),
        sa.Column("params", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text),
        sa.Column("upstream", sa.Text),
        # The upstream callback finds its request by this; a column (not a JSON path) so it is indexed.
        sa.Column("upstream_state_hash", sa.Text),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
    )
    op.create_index("auth_requests_upstream_state", "auth_requests", ["upstream_state_hash"])
    op.create_table(
        "auth_codes",
        sa.Column("code_hash", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("redirect_uri", sa.Text, nullable=False),
        sa.Column("redirect_uri_given", sa.Boolean, nullable=False),
        sa.Column("code_challenge", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("resources", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("used_at", Time),
        sa.Column("family_id", sa.Text),
    )
    op.create_table(
        "token_families",
        sa.Column("family_id", sa.Text, primary_key=True),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("token_version", sa.Integer, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("revoked_at", Time),
        sa.Column("revoked_reason", sa.Text),
    )
    op.create_index("token_families_user", "token_families", ["user_id"])
    op.create_index("token_families_client", "token_families", ["client_id"])
    op.create_table(
        "refresh_tokens",
        sa.Column("token_hash", sa.Text, primary_key=True),
        sa.Column(
            "family_id",
            sa.Text,
            sa.ForeignKey("token_families.family_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("client_id", sa.Text, nullable=False),
        sa.Column("user_id", sa.Text, nullable=False),
        sa.Column("scope", sa.Text, nullable=False),
        sa.Column("resources", sa.Text, nullable=False),
        sa.Column("issuer", sa.Text, nullable=False),
        sa.Column("created_at", Time, nullable=False),
        sa.Column("expires_at", Time, nullable=False),
        sa.Column("used_at", Time),
    )
    op.create_index("refresh_tokens_family", "refresh_tokens", ["family_id"])
    op.create_table(
        "revoked_tokens",
        sa.Column("jti", sa.Text, primary_key=True),
        sa.Column("expires_at", Time, nullable=False),
    )
    op.create_table(
        "login_throttle",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("failures", sa.Integer, nullable=False),
        sa.Column("window_start", Time, nullable=False),
        sa.Column("locked_until", Time, nullable=False, server_default="0"),
        sa.Column("next_slot_at", Time, nullable=False, server_default="0"),
    )
    op.create_table(
        "login_known",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("at", Time, nullable=False),
    )
    op.create_table(
        "signing_keys",
        sa.Column("kid", sa.Text, primary_key=True),
        sa.Column("alg", sa.Text, nullable=False),
        sa.Column("private_pem", sa.Text, nullable=False),  # encrypted with the state key: 'enc:v1:...'
        sa.Column("created_at", Time, nullable=False),
        sa.Column("retired_at", Time),
    )


def downgrade() -> None:
    for table in (
        "signing_keys",
        "login_known",
        "login_throttle",
        "revoked_tokens",
        "refresh_tokens",
        "token_families",
        "auth_codes",
        "auth_requests",
        "registrations",
        "clients",
        "users",
    ):
        op.drop_table(table)
