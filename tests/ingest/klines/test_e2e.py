"""Klines mode end to end: the simulator as Bybit, `python -m ingest` as a real process.

The simulator runs its market clock 40x faster than the wall (a minute in 1.5 s), so several 1m
candles close within a few seconds. What is asserted, per series: the candle stream
holds every candle from the first one written to the last one the simulator confirmed, exactly
once, in order, each with the simulator's exact values; through connection drops every 2 s and a
`kill -9` of ingest followed by a restart (the missed confirms come from REST backfill).

In the drops-and-kill test the candles are also read by a WebSocket client of
`python -m publish websocket`, which must see the same candles in the same order per series.
"""

from __future__ import annotations

import base64
import json
import re
import signal
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from common.keys import Keys
from tests.support import replies
from tests.support.procs import Proc, python_module
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

KEYS = Keys("e2e")
SHARDS = 2
INTERVALS = {"1": 60_000, "5": 300_000}
LABELS = {"1": "1m", "5": "5m"}
SPEED = 40
"""Market clock speed: a market minute lasts 1.5 s of wall time."""


class Simulator:
    def __init__(self, tmp_path: Path, *flags: str, category: str = "linear") -> None:
        self.category = category
        self.ledger = tmp_path / "klines-ledger.jsonl"
        self.proc = python_module(
            "simulator",
            "--port", "0", "--symbols", "4", "--rate", "40", "--seed", "7", "--speed", str(SPEED),
            "--quiet-fraction", "0", "--kline-ledger", str(self.ledger), "--category", category,
            *flags,
            env={}, log_path=tmp_path / "simulator.log",
        )  # fmt: skip
        self.proc.wait_output("simulator ready", 20)
        match = re.search(r"simulator ready (ws://\S+) (http://\S+)", self.proc.output())
        assert match is not None
        self.ws_url, self.rest_url = match.group(1), match.group(2)

    def symbols(self) -> list[str]:
        url = f"{self.rest_url}/v5/market/instruments-info?category={self.category}"
        with urllib.request.urlopen(url, timeout=5) as response:
            return sorted(i["symbol"] for i in json.load(response)["result"]["list"])

    def rest_rows(self, symbol: str, code: str, first: int, last: int) -> dict[int, list[str]]:
        url = (
            f"{self.rest_url}/v5/market/kline?category={self.category}&symbol={symbol}&interval={code}"
            f"&start={first}&end={last}&limit=1000"
        )
        with urllib.request.urlopen(url, timeout=5) as response:
            rows = json.load(response)["result"]["list"]
        return {int(row[0]): row[1:] for row in rows}

    def open_start(self, symbol: str) -> int:
        """Start of the symbol's open 1m candle: the market clock (REST lists it newest first)."""
        url = (
            f"{self.rest_url}/v5/market/kline?category={self.category}&symbol={symbol}"
            "&interval=1&limit=1"
        )
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(json.load(response)["result"]["list"][0][0])

    def confirms(self) -> dict[tuple[str, str], dict[int, list[str]]]:
        out: dict[tuple[str, str], dict[int, list[str]]] = {}
        for line in self.ledger.read_text().splitlines():
            c = json.loads(line)
            values = [c[k] for k in ("open", "high", "low", "close", "volume", "turnover")]
            out.setdefault((c["symbol"], c["interval"]), {})[c["start"]] = values
        return out


@pytest.fixture
def procs() -> Iterator[list[Proc]]:
    started: list[Proc] = []
    yield started
    for proc in started:
        if proc.popen.poll() is None:
            proc.popen.send_signal(signal.SIGKILL)
            proc.popen.wait(10)


class WebSocketClient:
    """A client of the publish stage's WebSocket server, collecting every candle it sends."""

    def __init__(self, port: int) -> None:
        self.url = f"ws://127.0.0.1:{port}/"
        self.candles: list[dict[str, str]] = []
        self.connected = threading.Event()
        self.ws: ClientConnection | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.connected.wait(10), "the WebSocket client could not connect"

    def _run(self) -> None:
        token = base64.b64encode(b"alice:secret").decode()
        headers = {"Authorization": f"Basic {token}"}
        with connect(self.url, additional_headers=headers) as ws:
            self.ws = ws
            self.connected.set()
            try:
                for message in ws:
                    self.candles.extend(json.loads(message, parse_float=str, parse_int=str))
            except ConnectionClosed:
                pass

    def series(self) -> dict[tuple[str, str], list[dict[str, str]]]:
        out: dict[tuple[str, str], list[dict[str, str]]] = {}
        for c in list(self.candles):
            if c["closed"]:
                out.setdefault((c["symbol"], c["interval_label"]), []).append(c)
        return out

    def close(self) -> None:
        assert self.ws is not None
        self.ws.close()
        self.thread.join(5)


def start_publish(tmp_path: Path, redis_url: str, procs: list[Proc]) -> int:
    port = free_port()
    env = {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": KEYS.prefix,
        "STREAMER_SHARDS": str(SHARDS),
        "STREAMER_WSS_AUTH_USER": "alice",
        "STREAMER_WSS_AUTH_KEY": "secret",
        "STREAMER_WEBSOCKET_PORT": str(port),
    }
    proc = python_module("publish", "websocket", env=env, log_path=tmp_path / "publish.log")
    procs.append(proc)
    proc.wait_output(f"publishing {SHARDS} shards to", 20)
    return port


def ingest_env(redis_url: str, sim: Simulator, symbols: list[str], **extra: str) -> dict[str, str]:
    return {
        "STREAMER_BYBIT_CATEGORY": sim.category,
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": KEYS.prefix,
        "STREAMER_KLINES_MODE": "true",
        "STREAMER_KLINE_INTERVALS": "1m,5m",
        "STREAMER_BYBIT_SYMBOLS": ",".join(symbols),
        "STREAMER_BYBIT_WS_URL": sim.ws_url,
        "STREAMER_BYBIT_REST_URL": sim.rest_url,
        "STREAMER_BYBIT_SOCKET_POOL_SIZE": "2",
        "STREAMER_BYBIT_DEAD_AFTER_S": "5",
        "STREAMER_SHARDS": str(SHARDS),
        "STREAMER_SHARD_IDS": "0,1",
        "STREAMER_KLINE_UPDATES_MS": "200",
        **extra,
    }


def stream_candles(client: redis.Redis) -> dict[tuple[str, str], list[dict[str, str | bool]]]:
    """Every candle of the candle streams, decimals as their exact JSON text."""
    out: dict[tuple[str, str], list[dict[str, str | bool]]] = {}
    for shard in range(SHARDS):
        for _, fields in replies.entries(client.xrange(KEYS.klines(shard))):
            c = json.loads(fields[b"data"], parse_float=str, parse_int=str)
            out.setdefault((c["symbol"], c["interval_label"]), []).append(c)
    return out


def assert_complete(
    sim: Simulator, client: redis.Redis, symbols: list[str], codes: tuple[str, ...], floor: int
) -> int:
    """Wait until the streams hold every ledger confirm; then check order, values, once-only.

    The series come from the ledger: every symbol and interval has confirms there, and each
    series starts at its first ledger confirm (the first candle the simulator confirmed to a
    subscriber), so a missing series or missing leading candles fail; a candle between the
    confirms the ledger does not hold (sent while ingest was down) must equal the simulator's
    REST history. Returns the number of candles compared (asserted >= `floor`, printed).
    """
    confirms = sim.confirms()
    assert set(confirms) == {(s, c) for s in symbols for c in codes}

    def covered() -> bool:
        got = stream_candles(client)
        return all(
            (symbol, LABELS[code]) in got
            and int(got[(symbol, LABELS[code])][-1]["timestamp"]) >= max(starts)
            for (symbol, code), starts in confirms.items()
        )

    wait_until(covered, 30, what="every confirm of the simulator's ledger in the streams")
    return check_series(sim, confirms, stream_candles(client), symbols, codes, floor)


def check_series(
    sim: Simulator,
    confirms: dict[tuple[str, str], dict[int, list[str]]],
    got: dict[tuple[str, str], list[dict[str, str | bool]]],
    symbols: list[str],
    codes: tuple[str, ...],
    floor: int,
) -> int:
    """assert_complete's checks of the candles read (see there)."""
    assert set(got) == {(s, LABELS[c]) for s in symbols for c in codes}
    total = 0
    for (symbol, code), ledger in sorted(confirms.items()):
        series = got[(symbol, LABELS[code])]
        starts = [int(c["timestamp"]) for c in series]
        step = INTERVALS[code]
        assert starts[0] == min(ledger), (symbol, code, "first candle", starts[0], min(ledger))
        # Exactly once and in order, with no hole from the first candle written to the last.
        assert starts == list(range(starts[0], starts[-1] + step, step)), (symbol, code, starts)
        rest = sim.rest_rows(symbol, code, starts[0], starts[-1])
        for candle in series:
            start = int(candle["timestamp"])
            values = [candle[k] for k in ("open", "high", "low", "close", "volume", "turnover")]
            assert values == rest[start], (symbol, code, start)
            if start in ledger:
                assert values == ledger[start]
            assert (candle["closed"], candle["source"], candle["gap"]) == (True, "bybit", False)
            assert candle["category"] == sim.category
            assert candle["interval"] == str(step)
        # Every confirm the simulator sent is there.
        assert set(ledger) <= set(starts)
        total += len(series)
    print(f"klines ledger check: {len(confirms)} series, {total} candles compared (floor {floor})")
    assert total >= floor
    return total


@pytest.mark.timeout(360)  # its waits add up to ~3 min when the machine is loaded
def test_every_confirm_once_in_order_through_drops_and_kill9(
    tmp_path: Path, redis_url: str, procs: list[Proc]
) -> None:
    sim = Simulator(tmp_path, "--drop-every-s", "2")
    procs.append(sim.proc)
    symbols = sim.symbols()
    client = redis.Redis.from_url(redis_url)
    ws_client = WebSocketClient(start_publish(tmp_path, redis_url, procs))
    env = ingest_env(redis_url, sim, symbols, STREAMER_AGGREGATOR_WAITER_MODE_ENABLED="true")
    log_path = tmp_path / "ingest.log"
    ingest = python_module("ingest", env=env, log_path=log_path)
    procs.append(ingest)
    ingest.wait_output("ingest started in klines mode", 20)
    assert "STREAMER_AGGREGATOR_WAITER_MODE_ENABLED is ignored in klines mode" in ingest.output()

    def written(n: int) -> bool:
        got = stream_candles(client)
        return all(len(got.get((s, "1m"), [])) >= n for s in symbols)

    wait_until(lambda: written(2), 30, what="two 1m candles per symbol")
    ingest.kill9()
    before_kill = stream_candles(client)
    # While ingest is dead the simulator closes more candles. (This simulator sends the confirms
    # of candles that closed while a topic had no subscriber when it is subscribed again, which
    # Bybit does not; so whether these come from REST or late confirms varies. The REST path is
    # forced in test_a_restart_backfills_from_rest below.)
    first_missed = max(int(c[-1]["timestamp"]) for c in before_kill.values()) + 60_000
    wait_until(
        lambda: sim.open_start(symbols[0]) >= first_missed + 5 * 60_000,
        30,
        what="the simulator to close candles while ingest is down",
    )
    restarted = python_module("ingest", env=env, log_path=log_path)
    procs.append(restarted)
    restarted.wait_output("ingest started in klines mode", 20)
    wait_until(lambda: written(12), 45, what="twelve 1m candles per symbol")
    total = assert_complete(sim, client, symbols, ("1", "5"), floor=4 * 12)
    # The same candles reach a WebSocket client of the publish stage, in the same order.
    streams = stream_candles(client)
    wait_until(
        lambda: sum(len(v) for v in ws_client.series().values()) >= total,
        20,
        what="every candle at the WebSocket client",
    )
    assert ws_client.series() == streams
    ws_client.close()
    assert restarted.stop() == 0
    assert sim.proc.output().count("fault: dropping") >= 3
    # In-progress snapshots went to the updates streams as closed:false candles.
    updates = [
        json.loads(fields[b"data"])
        for shard in range(SHARDS)
        for _, fields in replies.entries(client.xrange(KEYS.updates(shard), count=50))
    ]
    assert updates and all(not u["closed"] and u["source"] == "bybit" for u in updates)
    assert client.hget(KEYS.meta(), "mode") == b"klines"


def test_a_restart_backfills_from_rest(tmp_path: Path, redis_url: str, procs: list[Proc]) -> None:
    """The state a run killed 8 market minutes ago leaves: the last written candle per series."""
    sim = Simulator(tmp_path)
    procs.append(sim.proc)
    symbols = sim.symbols()
    client = redis.Redis.from_url(redis_url)
    last = sim.open_start(symbols[0])  # the simulator's history starts here
    wait_until(
        lambda: sim.open_start(symbols[0]) >= last + 8 * 60_000,
        30,
        what="eight market minutes",
    )
    for symbol in symbols:
        shard = zlib.crc32(symbol.encode()) % SHARDS
        client.hset(KEYS.klines_last(shard), f"{symbol}:1m", last)
    env = ingest_env(redis_url, sim, symbols, STREAMER_KLINE_INTERVALS="1m")
    ingest = python_module("ingest", env=env, log_path=tmp_path / "ingest.log")
    procs.append(ingest)

    def caught_up() -> bool:
        got = stream_candles(client)
        return all(len(got.get((s, "1m"), [])) >= 9 for s in symbols)

    wait_until(caught_up, 30, what="the missed candles and a live one in the streams")
    assert ingest.stop() == 0
    assert re.search(r"BTCUSDT 1m: backfilled [78] candles", ingest.output())
    got = stream_candles(client)
    for symbol in symbols:
        series = got[(symbol, "1m")]
        starts = [int(c["timestamp"]) for c in series]
        assert starts == list(range(last + 60_000, starts[-1] + 60_000, 60_000))
        rest = sim.rest_rows(symbol, "1", starts[0], starts[-1])
        for candle in series:
            values = [candle[k] for k in ("open", "high", "low", "close", "volume", "turnover")]
            assert values == rest[int(candle["timestamp"])]
            assert not candle["gap"]


def test_spot_sends_confirms_apart_and_they_all_arrive(
    tmp_path: Path, redis_url: str, procs: list[Proc]
) -> None:
    sim = Simulator(tmp_path, category="spot")
    procs.append(sim.proc)
    symbols = sim.symbols()
    client = redis.Redis.from_url(redis_url)
    env = ingest_env(redis_url, sim, symbols, STREAMER_KLINE_INTERVALS="1m")
    ingest = python_module("ingest", env=env, log_path=tmp_path / "ingest.log")
    procs.append(ingest)

    def written() -> bool:
        got = stream_candles(client)
        return all(len(got.get((s, "1m"), [])) >= 4 for s in symbols)

    wait_until(written, 30, what="four 1m candles per spot symbol")
    assert_complete(sim, client, symbols, ("1",), floor=4 * len(symbols))
    assert ingest.stop() == 0


def test_unknown_symbol_stops_ingest_with_one_line(
    tmp_path: Path, redis_url: str, procs: list[Proc]
) -> None:
    sim = Simulator(tmp_path)
    procs.append(sim.proc)
    env = ingest_env(redis_url, sim, ["BTCUSDT", "BTCUSD"])
    ingest = python_module("ingest", env=env, log_path=tmp_path / "ingest.log")
    procs.append(ingest)
    assert ingest.popen.wait(20) == 2
    errors = [line for line in ingest.output().splitlines() if line.startswith("error:")]
    assert len(errors) == 1
    assert "BTCUSD" in errors[0] and "BTCUSDT" in errors[0]


def test_bad_intervals_stop_ingest_naming_them(tmp_path: Path, procs: list[Proc]) -> None:
    env = {
        "STREAMER_KLINES_MODE": "true",
        "STREAMER_KLINE_INTERVALS": "1m,15s,7m,1h",
        "STREAMER_BYBIT_SYMBOLS": "BTCUSDT",
        "STREAMER_BYBIT_REST_URL": "http://127.0.0.1:9",
    }
    ingest = python_module("ingest", env=env, log_path=tmp_path / "ingest.log")
    procs.append(ingest)
    assert ingest.popen.wait(20) == 2
    assert ingest.output().strip().splitlines() == [
        "error: STREAMER_KLINE_INTERVALS: 15s, 7m not available in klines mode; "
        "allowed: 1m 3m 5m 15m 30m 1h 2h 4h 6h 12h 1d 1w 1M"
    ]


def test_aggregate_idles_in_klines_mode(tmp_path: Path, redis_url: str, procs: list[Proc]) -> None:
    env = {"STREAMER_REDIS_URL": redis_url, "STREAMER_KLINES_MODE": "true"}
    aggregate = python_module("aggregate", env=env, log_path=tmp_path / "aggregate.log")
    procs.append(aggregate)
    aggregate.wait_output("there is nothing to aggregate; idle until stopped", 20)
    assert aggregate.stop() == 0
    assert redis.Redis.from_url(redis_url).keys("*") == []
