"""Fixtures that give a test each job store in turn: SQLite in a temp folder, and Redis on a real
Debian redis-server (one per test module, emptied before each test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from app.jobs import JobStore, StoreOptions, open_store

from .redis_server import redis_server


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with redis_server(tmp_path_factory.mktemp("redis")) as url:
        yield url


class Stores:
    """Makes stores of one kind sharing one backend (two replicas, or a process and its restart)."""

    def __init__(self, kind: str, tmp: Path, url: str | None) -> None:
        self.kind, self.tmp, self.url = kind, tmp, url
        self.opened: list[JobStore] = []

    def open(self, **options: float) -> JobStore:
        store = open_store(data_dir=self.tmp, redis_url=self.url, options=StoreOptions(**options))  # type: ignore[arg-type]
        self.opened.append(store)
        return store


@pytest.fixture(params=["sqlite", "redis"])
def stores(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Stores]:
    url = None
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        redis.Redis.from_url(url).flushall()
    s = Stores(request.param, tmp_path, url)
    yield s
    for store in s.opened:
        store.close()


@pytest.fixture
def store(stores: Stores) -> JobStore:
    return stores.open()


