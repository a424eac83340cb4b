"""The whole pipeline as real processes: the simulator, ingest, aggregate and publish.

Collectors stand where users stand: a WebSocket client (with credentials, reconnecting) and a
redis-py pub/sub subscriber (reconnecting), each keeping every candle it receives.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import msgspec
import redis
from redis.cluster import RedisCluster as RedisClusterClient
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import connect as ws_connect

from aggregate import checkpoint
from common.intervals import Interval, parse_intervals
from common.keys import Keys
from common.sharding import shard_of
from common.wire import STREAM_FIELD, CandleView, candle_view_decoder
from tests.ingest.e2e_support import Sim, start_simulator
from tests.support import replies
from tests.support.expected import Key, LedgerTrade
from tests.support.procs import Proc, python_module
from tests.support.redisproc import free_port

USER, PASSWORD = "pipeline", "s3cret"


@dataclass
class Pipeline:
    tmp: Path
    redis_url: str
    sim: Sim
    shards: int
    intervals: str
    extra_env: dict[str, str] = field(default_factory=dict)
    ws_port: int = field(default_factory=free_port)
    procs: dict[str, Proc] = field(default_factory=dict)
    prefix: str = "streamer"
    _how: dict[str, tuple[str, tuple[str, ...], dict[str, str]]] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        values = {
            "STREAMER_REDIS_URL": self.redis_url,
            "STREAMER_REDIS_PREFIX": self.prefix,
            "STREAMER_BYBIT_WS_URL": self.sim.ws_url,
            "STREAMER_BYBIT_REST_URL": self.sim.rest_url,
            "STREAMER_BYBIT_LOAD_ALL_SYMBOLS": "true",
            "STREAMER_SHARDS": str(self.shards),
            "STREAMER_BYBIT_SOCKET_POOL_SIZE": "2",
            "STREAMER_KLINE_INTERVALS": self.intervals,
            "STREAMER_LEASE_TTL_MS": "1500",
            "STREAMER_SHUTDOWN_TIMEOUT_S": "8",
            "STREAMER_WEBSOCKET_PORT": str(self.ws_port),
            "STREAMER_WSS_AUTH_USER": USER,
            "STREAMER_WSS_AUTH_KEY": PASSWORD,
            "STREAMER_ENABLED_CONSUMERS": "websocket,redis",
            "STREAMER_REDIS_CHANNEL": "pipeline-klines",
        }
        values.update(self.extra_env)
        values.update(extra)
        return values

    def start(self, stage: str, name: str, *args: str, **extra: str) -> Proc:
        proc = python_module(stage, *args, env=self.env(**extra), log_path=self.tmp / f"{name}.log")
        self.procs[name] = proc
        self._how[name] = (stage, args, extra)
        return proc

    def restart(self, name: str) -> Proc:
        stage, args, extra = self._how[name]
        return self.start(stage, name, *args, **extra)

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.popen.poll() is None:
                proc.stop()

    @property
    def keys(self) -> Keys:
        return Keys(self.prefix)

    def client(self) -> redis.Redis:
        """A client for the pipeline's Redis; a cluster client when it runs on a cluster."""
        if self.extra_env.get("STREAMER_REDIS_CLUSTER") == "true":
            return RedisClusterClient.from_url(self.redis_url)  # type: ignore[return-value]  # as common/redisconn.py
        return redis.Redis.from_url(self.redis_url)

    def stream_candles(self) -> list[CandleView]:
        client = self.client()
        out = [
            candle_view_decoder.decode(fields[STREAM_FIELD])
            for shard in range(self.shards)
            for _, fields in replies.entries(client.xrange(self.keys.klines(shard)))
        ]
        client.close()
        return out

    def ledger_trades(self) -> list[LedgerTrade]:
        """The trades the exchange sent."""
        return [_ledger_trade(t) for t in self.sim.trades()]

    def missed_trades(self) -> list[LedgerTrade]:
        """The trades the exchange made while nobody was subscribed to their topic any more
        (a drop, a hand-over): never sent, but a gap repair may fetch them back."""
        return [_ledger_trade(t) for t in self.sim.missed()]

    def shard_of(self, symbol: str) -> int:
        return shard_of(symbol, self.shards)

    def closed_by_ms(self, trades: list[LedgerTrade]) -> int:
        """The latest candle end by which every candle of the ledger must have closed: the last
        trade's time, but no later than the least stream time the aggregator got to (its
        checkpoint head) less the waiter. Once ingest stops, no clock entry comes to close a
        candle that ended within the waiter before that: it closes when ingest is back."""
        waiter_ms = int(self.env().get("STREAMER_AGGREGATOR_WAITER_LATENCY_MS", "80"))
        client = self.client()
        heads = [
            client.hget(self.keys.state(shard), checkpoint.HEAD) for shard in range(self.shards)
        ]
        client.close()
        reached = min(
            -1 if raw is None else checkpoint.head_decoder.decode(raw).now_ms for raw in heads
        )
        return min(max(t.time_ms for t in trades), reached - waiter_ms)

    def parsed_intervals(self) -> tuple[Interval, ...]:
        return parse_intervals(self.intervals)


def _ledger_trade(t: dict[str, object]) -> LedgerTrade:
    return LedgerTrade(
        str(t["symbol"]), int(str(t["T"])), Decimal(str(t["p"])), Decimal(str(t["v"])),
        t["S"] == "Buy", str(t["i"]),
    )  # fmt: skip


def start_pipeline(
    tmp: Path, redis_url: str, sim_args: tuple[str, ...], shards: int, intervals: str,
    **extra_env: str,
) -> Pipeline:  # fmt: skip
    sim = start_simulator(tmp, *sim_args)
    return Pipeline(tmp, redis_url, sim, shards, intervals, dict(extra_env))


def latest(candles: list[CandleView]) -> dict[Key, CandleView]:
    """The last revision of every candle."""
    out: dict[Key, CandleView] = {}
    for view in candles:
        key = (view.symbol, view.interval, view.timestamp)
        if key not in out or view.revision >= out[key].revision:
            out[key] = view
    return out


Keep = Callable[[bytes], None]
Receive = Callable[[Keep, Callable[[], None], threading.Event], None]


class Supervisor:
    """Restarts any stage process that exits, as supervisord's autorestart does."""

    def __init__(self, pipe: Pipeline, names: list[str]) -> None:
        self.pipe = pipe
        self.names = names
        self.restarts: collections.Counter[str] = collections.Counter()
        self.paused: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for name in self.names:
                if name not in self.paused and self.pipe.procs[name].popen.poll() is not None:
                    self.restarts[name] += 1
                    self.pipe.restart(name)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


class Collector:
    """Keeps every candle a source delivers, on a thread, reconnecting until stopped."""

    def __init__(self, name: str, receive: Receive) -> None:
        self.name = name
        self.raws: list[bytes] = []
        self.reconnects = 0
        self.down: list[tuple[int, int]] = []  # wall-clock ms windows while not connected
        self._lost_ms = int(time.time() * 1000)
        self._stop = threading.Event()
        self._receive = receive
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _connected(self) -> None:
        self.down.append((self._lost_ms, int(time.time() * 1000)))

    def _keep(self, frame: bytes) -> None:
        self.raws.extend(bytes(raw) for raw in msgspec.json.decode(frame, type=list[msgspec.Raw]))

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError, WebSocketException, redis.exceptions.ConnectionError):
                self._receive(self._keep, self._connected, self._stop)
            self._lost_ms = int(time.time() * 1000)
            if not self._stop.is_set():
                self.reconnects += 1
                self._stop.wait(0.05)  # reconnect pacing, not a wait for an event

    def views(self) -> list[CandleView]:
        return [candle_view_decoder.decode(raw) for raw in list(self.raws)]

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def websocket_collector(port: int) -> Collector:
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()

    def receive(keep: Keep, connected: Callable[[], None], stop: threading.Event) -> None:
        with ws_connect(
            f"ws://127.0.0.1:{port}/", additional_headers={"Authorization": f"Basic {token}"},
            open_timeout=2, max_size=None,
        ) as ws:  # fmt: skip
            connected()
            while not stop.is_set():
                try:
                    frame = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                data = frame.encode() if isinstance(frame, str) else frame
                if data.startswith(b"["):
                    keep(data)

    return Collector("websocket", receive)


def pubsub_collector(redis_url: str, channel: str) -> Collector:
    def receive(keep: Keep, connected: Callable[[], None], stop: threading.Event) -> None:
        client = redis.Redis.from_url(redis_url, socket_connect_timeout=1)
        pubsub = client.pubsub()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        try:
            pubsub.subscribe(channel)
            connected()
            while not stop.is_set():
                message = pubsub.get_message(timeout=0.2)
                if message and message["type"] == "message":
                    keep(message["data"])
        finally:
            pubsub.close()
            client.close()

    return Collector("pubsub", receive)


def wait_for_ws(port: int, timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with ws_connect(f"ws://127.0.0.1:{port}/", open_timeout=1):
                return
        except InvalidStatus:
            return  # it answered (401 without credentials): it is up
        except (OSError, WebSocketException):
            time.sleep(0.05)
    raise AssertionError(f"no WebSocket server on port {port} after {timeout_s}s")


def dump(views: list[CandleView]) -> str:
    return json.dumps([msgspec.to_builtins(v) for v in views[:5]], default=str)
