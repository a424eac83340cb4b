"""free_port()'s race closed where a server cannot bind port 0 itself: a port taken between
`free_port()` and the server's bind moves the server to another one (tests/support/redisproc.py),
and a server already on that port is never mistaken for ours."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis

from tests.support.pgproc import PostgresProcess
from tests.support.redisproc import PortTaken, RedisProcess, free_port


@contextmanager
def taken(port: int) -> Iterator[None]:
    """Another process listening on `port` (a plain socket: it never answers)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        yield


def _server_pid(port: int) -> int:
    client = redis.Redis(port=port)
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


@pytest.mark.redis
def test_a_picked_port_taken_before_the_start_moves_redis_to_another(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    first = server.port
    with taken(first):
        server.start()
    try:
        assert server.port != first
        assert server.proc is not None and _server_pid(server.port) == server.proc.pid
        server.stop()
        server.start()  # a restart keeps its port: clients hold the URL
        assert server.proc is not None and _server_pid(server.port) == server.proc.pid
    finally:
        server.stop()


@pytest.mark.redis
def test_another_redis_on_the_picked_port_is_not_taken_for_ours(tmp_path: Path) -> None:
    other = RedisProcess(tmp_path / "other").start()
    try:
        picks = iter([other.port])  # first the other's port, as free_port() may hand it out
        ours = RedisProcess(tmp_path / "ours", pick_port=lambda: next(picks, None) or free_port())
        assert ours.port == other.port
        ours.start()
        try:
            assert ours.port != other.port
            assert ours.proc is not None and other.proc is not None
            assert _server_pid(ours.port) == ours.proc.pid != other.proc.pid
        finally:
            ours.stop()
    finally:
        other.stop()


@pytest.mark.redis
def test_a_given_port_that_is_taken_fails_the_start(tmp_path: Path) -> None:
    server = RedisProcess(tmp_path)
    port = server.port
    fixed = RedisProcess(tmp_path / "fixed", port=port)
    with taken(port), pytest.raises(PortTaken, match=str(port)):
        fixed.start()
    assert fixed.port == port and fixed.proc is None


@pytest.mark.postgres
def test_a_picked_port_taken_before_the_start_moves_postgres_to_another() -> None:
    server = PostgresProcess()
    first = server.port
    try:
        with taken(first):
            server.start()
        assert server.port != first
        server.create_database("moved")  # answers on the port it says
    finally:
        server.destroy()
