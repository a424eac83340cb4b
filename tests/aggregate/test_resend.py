"""A write whose reply is lost is never sent again by the Redis client (common.redisconn).

A cluster client sends a command again after a broken connection (redis-py: up to 10 times), also
when Redis ran it and only the reply was lost; the aggregator's write script run twice writes its
candles twice. Here a one-node Redis Cluster sits behind a proxy that, once, passes a write of
closed candles on to Redis and breaks the connection instead of passing on its reply.
"""

from __future__ import annotations

import contextlib
import hashlib
import socket
import threading
from pathlib import Path

import pytest
import redis

from aggregate import checkpoint
from common.keys import Keys
from common.wire import candle_view_decoder
from tests.aggregate.test_service import checkpoint_id, env, fill, klines, prepared_entries
from tests.support.cluster import _cluster_port
from tests.support.procs import python_module
from tests.support.redisproc import RedisProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.e2e]


class ReplyDropper:
    """A TCP proxy on 127.0.0.1 to `port`. Once armed with markers, the first request holding
    them all goes on to Redis, and the connection it came on is closed instead of passing on
    the reply: Redis ran the command, the client never hears of it."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.target = 0
        self.dropped = 0
        self._markers: tuple[bytes, ...] = ()
        self._lock = threading.Lock()

    def start(self, target: int) -> None:
        self.target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, *markers: bytes) -> None:
        with self._lock:
            self._markers = markers

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            upstream = socket.create_connection(("127.0.0.1", self.target))
            doomed = threading.Event()  # a request to drop the reply of went up
            threading.Thread(target=self._up, args=(client, upstream, doomed), daemon=True).start()
            threading.Thread(
                target=self._down, args=(upstream, client, doomed), daemon=True
            ).start()

    def _up(self, client: socket.socket, upstream: socket.socket, doomed: threading.Event) -> None:
        while chunk := _recv(client):
            with self._lock:
                if self._markers and all(m in chunk for m in self._markers):
                    self._markers = ()
                    doomed.set()
            try:
                upstream.sendall(chunk)
            except OSError:
                break
        _close(client, upstream)

    def _down(
        self, upstream: socket.socket, client: socket.socket, doomed: threading.Event
    ) -> None:
        while chunk := _recv(upstream):
            if doomed.is_set():
                with self._lock:
                    self.dropped += 1
                break
            try:
                client.sendall(chunk)
            except OSError:
                break
        _close(client, upstream)


def _recv(sock: socket.socket) -> bytes:
    try:
        return sock.recv(1 << 16)
    except OSError:
        return b""


def _close(*socks: socket.socket) -> None:
    for sock in socks:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()


def test_a_write_whose_reply_is_lost_is_not_sent_again_on_a_cluster(tmp_path: Path) -> None:
    """`python -m aggregate` on a cluster through the proxy, one write's reply lost: the shard
    starts again from what Redis holds, and its candles are exactly those of a run without the
    loss (the same trade stream, straight to the node), none twice."""
    proxy = ReplyDropper()
    node = RedisProcess(
        tmp_path / "node",
        extra=(
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-announce-ip", "127.0.0.1",
            "--cluster-announce-port", str(proxy.port),  # the cluster's clients come through it
        ),
        pick_port=_cluster_port,
    ).start()  # fmt: skip
    proxy.start(node.port)
    client = redis.Redis(port=node.port)
    try:
        client.execute_command("CLUSTER", "ADDSLOTSRANGE", 0, 16383)  # type: ignore[no-untyped-call]
        wait_until(lambda: client.cluster("info").get("cluster_state") == "ok", 20, "the cluster")
        entries = prepared_entries(2000)
        done = {p: fill(client, Keys(p).trades(0), entries).decode() for p in ("calm", "lost")}
        client.script_load(checkpoint.WRITE_LUA)  # the write runs at its first call
        sha = hashlib.sha1(checkpoint.WRITE_LUA.encode()).hexdigest().encode()
        proxy.arm(sha, b'"closed":true')
        for prefix, url in (("lost", f"redis://127.0.0.1:{proxy.port}/0"), ("calm", node.url)):
            settings = env(url, prefix) | {"STREAMER_REDIS_CLUSTER": "true"}
            proc = python_module("aggregate", env=settings, log_path=tmp_path / f"{prefix}.log")
            wait_until(
                lambda p=prefix, proc=proc: checkpoint_id(client, Keys(p), proc) == done[p],  # type: ignore[misc]  # default-bound lambda: waiting.py
                60,
                f"the {prefix} run to finish",
            )
            assert proc.stop() == 0
        assert proxy.dropped == 1
        expected = klines(client, Keys("calm"))
        assert len(expected) > 100
        got = klines(client, Keys("lost"))
        views = [candle_view_decoder.decode(data) for data in got]
        assert len({(v.symbol, v.interval, v.timestamp, v.revision) for v in views}) == len(views)
        assert got == expected
    finally:
        client.close()
        proxy.close()
        node.stop()
