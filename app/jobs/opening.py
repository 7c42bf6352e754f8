"""Which store a server uses: Redis when replicas share one, else SQLite in the data folder.

(Apart from ``store.py`` so that the interface imports neither implementation.)
"""

from __future__ import annotations

from pathlib import Path

from .store import JobStore, StoreOptions


def open_store(*, data_dir: Path, redis_url: str | None, options: StoreOptions) -> JobStore:
    """Redis when a URL is given (replicas share it), else SQLite in ``data_dir``/jobs.sqlite3."""
    if redis_url:
        from .redis_store import RedisStore

        return RedisStore(redis_url, options)
    from .sqlite_store import SQLiteStore

    return SQLiteStore(Path(data_dir) / "jobs.sqlite3", options)
