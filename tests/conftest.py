from __future__ import annotations

import itertools
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
import redis

from tests.support.pgproc import PostgresProcess
from tests.support.procs import NO_TESTDATA, TESTDATA, kill_leftovers
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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, None]:
    """Every skip names its test (`-rs` then lists each one, not the helper that skipped), and
    a real-capture test that skips although the capture folder is there fails instead: a file
    missing or renamed there must not turn the checks against Bybit's data off unseen."""
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return
    reason = str(report.longrepr[2])
    if NO_TESTDATA in reason and TESTDATA.is_dir():
        report.outcome = "failed"
        report.longrepr = f"{TESTDATA} is there, but this real-capture test skipped: {reason}"
    else:
        # pytest's own skip summary prints a None line number as no line; its annotation says int
        report.longrepr = (item.nodeid, None, reason)  # type: ignore[assignment]


_databases = itertools.count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess]:
    """A private PostgreSQL server for the session (never the user's, never port 5432)."""
    server = PostgresProcess().start()
    yield server
    server.destroy()


@pytest.fixture
def pg_dsn(pg_server: PostgresProcess) -> Iterator[str]:
    """A fresh, empty database on the session's private PostgreSQL."""
    name = f"test_{next(_databases)}"
    yield pg_server.create_database(name)
    pg_server.drop_database(name)


@pytest.fixture
def own_pg() -> Iterator[PostgresProcess]:
    """A PostgreSQL server of this test alone, for tests that stop or restart it."""
    server = PostgresProcess().start()
    yield server
    server.destroy()


E2E_TIMEOUT_S = 420
"""The hang guard of an end-to-end test with no timeout of its own (pyproject's 180 s is for the
rest). Their waits have deadlines of their own; this only stops a hung one. Real processes on a
2-core machine shared with other jobs take up to ~2.5× their quiet time (a 33 s repair test took
70 s in one full run), which would put a 73 s test near 180 s."""


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("e2e") and not item.get_closest_marker("timeout"):
            item.add_marker(pytest.mark.timeout(E2E_TIMEOUT_S))
