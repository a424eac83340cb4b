from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from tests.support.procs import kill_leftovers
from tests.support.redisproc import RedisProcess


@pytest.fixture(autouse=True)
def no_leftover_processes() -> Iterator[None]:
    """Whatever a test started and did not stop (it failed early) is killed after it."""
    yield
    kill_leftovers()


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisProcess) -> Iterator[str]:
    """A clean database on the session's private redis-server."""
    client = redis.Redis(port=redis_server.port)
    client.flushall()
    client.close()
    yield redis_server.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisProcess]:
    """A redis-server of this test alone, for tests that stop or restart it."""
    server = RedisProcess(tmp_path / "own-redis").start()
    yield server
    server.stop()
