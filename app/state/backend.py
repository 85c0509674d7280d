"""Which auth store backend this process uses: `STATE_DATABASE_URL` decides."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from ..auth.store import AuthStore, StorageBackend, store_path

if TYPE_CHECKING:
    from ..settings import Settings

POSTGRES_THREADS = 4  # calls in flight per process on the PostgreSQL pool (SQLite: always one thread)


def storage_backend(settings: Settings) -> StorageBackend:
    """PostgreSQL when STATE_DATABASE_URL is set (shared by every node), else the SQLite file in DATA_DIR."""
    if settings.state_database_url:
        # Imported here so a one-VM install never loads SQLAlchemy and the driver.
        from .pgstore import PgAuthStore

        return PgAuthStore(settings.state_database_url, pool_size=POSTGRES_THREADS)
    return AuthStore(store_path(settings.data_dir))


@contextmanager
def opened_backend(settings: Settings) -> Iterator[StorageBackend]:
    """The backend, open (schema migrated) for the length of a command such as `mssql-mcp users`."""
    store = storage_backend(settings)
    store.open()
    try:
        yield store
    finally:
        store.close()
