"""Durable state shared by every node: the PostgreSQL backend of the auth store and its migrations.

The SQLite backend stays in `app/auth/store.py` (one file in DATA_DIR, one VM); this package is the
other implementation of `app.auth.records.AuthStorage`, chosen by `STATE_DATABASE_URL`. It lives apart
from `app/auth` because it is storage, not HTTP or OAuth, and the shared ephemeral state of issue 11
(Redis) will sit beside it.
"""
