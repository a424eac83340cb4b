"""History from PostgreSQL: `python -m publish` with the `postgres` consumer and the WebSocket
server, a store of depth 50 (STREAMER_HISTORY_CANDLES) and series of 300 candles. The history
endpoints (`/v5/market/kline` through pybit, `/candles`, WebSocket `since` and `history`) answer
with the candle stream's whole record, the latest revision of every candle, with nothing missing
or doubled at the seam between the table and the store; with PostgreSQL stopped they answer
from the store and say where their answer stops.

The candles are written the way the aggregator writes them: each one XADDed to its shard's candle
stream and stored in the history store by the same Lua (common/history.py STORE_LUA) in one
script. What the answers must be is computed here from the candles written (the latest revision
of each open time), never from what publish or the table say.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import psycopg
import pytest
import redis
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from common.history import STORE_LUA
from common.keys import Keys
from common.sharding import shard_of
from tests.publish.postgres.helpers import candle
from tests.support import replies
from tests.support.pgproc import PostgresProcess
from tests.support.procs import Proc, python_module
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pybit_ut = pytest.importorskip("pybit.unified_trading")

pytestmark = [pytest.mark.e2e, pytest.mark.redis, pytest.mark.postgres]

PREFIX, SHARDS, DEPTH = "arch", 2, 50
USER, KEY = "alice", "s3cret"
T0 = 1_786_310_400_000  # a multiple of 16 s: every 4th minute trims the store (common/history.py)
MINUTE = 60_000
COUNT = 300
SYMBOLS = ("BTCUSDT", "ETHUSDT")
_WRITE = (
    STORE_LUA
    + """
for i = 2, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
  store_candle(KEYS[i], ARGV[i], tonumber(ARGV[1]))
end
"""
)


def minute(symbol: str, n: int, revision: int = 0) -> bytes:
    """The n-th 1m candle of a series: a close of its own, with more digits than a float holds."""
    close = f"{65000 + n}.{n:03d}{revision}00000001"
    return candle(symbol, T0 + n * MINUTE, revision=revision, close=close)


def write(client: redis.Redis, raws: list[bytes]) -> None:
    """Each candle into its candle stream and the history store, as the aggregator does."""
    keys, script = Keys(PREFIX), client.register_script(_WRITE)
    for raw in raws:
        symbol = json.loads(raw)["symbol"]
        shard = shard_of(symbol, SHARDS)
        script(keys=[keys.klines(shard), keys.history(shard, "1m", symbol)], args=[DEPTH, raw])


def feed() -> tuple[list[bytes], list[bytes]]:
    """Two rounds of candles, in the order an aggregator writes them: first the series with a
    revision now and then of a recent candle, then revisions, one of a candle the store trimmed
    long ago (it comes back into the store alone, below the others: an orphan; its open time
    is not a trim point, so it stays there)."""
    first: list[bytes] = []
    for n in range(COUNT):
        for symbol in SYMBOLS:
            first.append(minute(symbol, n))
            if n % 7 == 3:
                first.append(minute(symbol, n - 2, revision=1))
    second = [minute("BTCUSDT", 21, revision=2), minute("BTCUSDT", COUNT - 3, revision=1),
              minute("ETHUSDT", 5, revision=3)]  # fmt: skip
    return first, second


def record(raws: list[bytes], symbol: str) -> list[bytes]:
    """The candle stream's last word on each candle of one series, oldest first."""
    latest: dict[int, tuple[int, bytes]] = {}
    for raw in raws:
        c = json.loads(raw)
        if c["symbol"] == symbol and latest.get(c["timestamp"], (-1, b""))[0] <= c["revision"]:
            latest[c["timestamp"]] = (c["revision"], raw)
    return [latest[ts][1] for ts in sorted(latest)]


def bybit_row(raw: bytes) -> list[str]:
    """A kline row as Bybit writes it: the candle's own number texts, as strings."""
    fields = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    names = ("open", "high", "low", "close", "volume", "turnover")
    return [bytes(fields["timestamp"]).decode(), *(bytes(fields[n]).decode() for n in names)]


def timestamp(raw: bytes) -> int:
    return int(json.loads(raw)["timestamp"])


def get(port: int, target: str) -> Any:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{target}")
    token = base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as reply:
        return reply.read()


def candles(port: int, query: str) -> tuple[list[bytes], dict[str, Any]]:
    """`/candles`: the candles' exact bytes, and the rest of the answer."""
    body = msgspec.json.decode(get(port, f"/candles?{query}"), type=dict[str, msgspec.Raw])
    raws = [bytes(r) for r in msgspec.json.decode(body.pop("candles"), type=list[msgspec.Raw])]
    return raws, {name: json.loads(bytes(value)) for name, value in body.items()}


def resume(port: int, request: dict[str, Any], count: int) -> tuple[str, list[bytes]]:
    """A WebSocket client's subscribe reply and the `count` candles that follow it."""
    token = base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    ws: ClientConnection
    with ws_connect(f"ws://127.0.0.1:{port}/", additional_headers={
        "Authorization": f"Basic {token}"}, max_size=None, open_timeout=10) as ws:  # fmt: skip
        ws.send(json.dumps({"op": "subscribe", **request}))
        reply = json.loads(ws.recv(10))
        assert reply["success"], reply
        got: list[bytes] = []
        while len(got) < count:
            frame = ws.recv(10)
            got += [bytes(r) for r in msgspec.json.decode(frame, type=list[msgspec.Raw])]
        return str(reply["ret_msg"]), got


def caught_up(client: redis.Redis, dsn: str) -> bool:
    """The table's position in every candle stream is the stream's last entry."""
    keys = Keys(PREFIX)
    lasts = {k: replies.entries(client.xrevrange(keys.klines(k), count=1)) for k in range(SHARDS)}
    ends = {keys.klines(k): last[0][0].decode() for k, last in lasts.items()}
    try:
        with psycopg.connect(dsn, connect_timeout=2) as conn:
            stored: dict[str, str] = dict(
                conn.execute("SELECT stream, entry_id FROM candles_positions").fetchall()
            )
    except psycopg.Error:
        stored = {}
    done = stored == ends
    if not done:
        time.sleep(0.1)  # each look is a new connection: ten a second is plenty
    return done


def start_publish(tmp_path: Path, redis_url: str, dsn: str, port: int) -> Proc:
    proc = python_module(
        "publish", "websocket", "postgres",
        env={
            "STREAMER_REDIS_URL": redis_url, "STREAMER_REDIS_PREFIX": PREFIX,
            "STREAMER_SHARDS": str(SHARDS), "STREAMER_KLINE_INTERVALS": "1s,1m",
            "STREAMER_HISTORY_CANDLES": str(DEPTH), "STREAMER_WEBSOCKET_PORT": str(port),
            "STREAMER_WSS_AUTH_USER": USER, "STREAMER_WSS_AUTH_KEY": KEY,
            "STREAMER_POSTGRES_DSN": dsn, "STREAMER_POSTGRES_BATCH": "100",
            "STREAMER_POSTGRES_CONNECT_TIMEOUT_S": "2", "STREAMER_PUBLISH_REPLICA": "p1",
        },
        log_path=tmp_path / "publish.log",
    )  # fmt: skip
    proc.wait_output("postgres: writing shards [0, 1]", 30)
    return proc


def test_history_reads_older_ranges_from_postgres_with_no_seam(
    tmp_path: Path, redis_url: str, own_pg: PostgresProcess
) -> None:
    dsn = own_pg.create_database("klines")
    client = redis.Redis.from_url(redis_url)
    first, second = feed()
    write(client, first)
    port = free_port()
    proc = start_publish(tmp_path, redis_url, dsn, port)
    try:
        wait_until(lambda: caught_up(client, dsn), 60, "the first round in PostgreSQL")
        write(client, second)  # revisions of rows the table holds at a lower revision
        wait_until(lambda: caught_up(client, dsn), 60, "the second round in PostgreSQL")
        written = first + second
        btc, eth = record(written, "BTCUSDT"), record(written, "ETHUSDT")
        assert len(btc) == len(eth) == COUNT
        held = client.zrange(Keys(PREFIX).history(shard_of("BTCUSDT", SHARDS), "1m", "BTCUSDT"),
                             0, -1)  # fmt: skip
        assert DEPTH <= len(held) <= DEPTH + 16  # the store alone holds a sixth of the series
        assert any(b'"revision":2,' in member for member in held[:2])  # the orphan, at the bottom

        check_kline(port, btc)
        check_candles(port, btc)
        check_websocket(port, btc, eth)
        check_outage(port, own_pg, proc, btc)
        assert proc.stop() == 0
    finally:
        if proc.popen.poll() is None:
            proc.stop()
        client.close()


def check_kline(port: int, want: list[bytes]) -> None:
    """pybit's HTTP client against our `/v5/market/kline`: every window of the series, across
    the seam, equals the record (newest first, the newest `limit` of the window)."""
    session = pybit_ut.HTTP(testnet=False)
    session.endpoint = f"http://{USER}:{KEY}@127.0.0.1:{port}"  # the URL only
    rows = [bybit_row(raw) for raw in reversed(want)]  # newest first
    got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1, limit=1000)
    assert got["retCode"] == 0 and got["retExtInfo"] == {}
    assert got["result"]["list"] == rows
    assert session.get_kline(category="linear", symbol="BTCUSDT", interval=1)["result"][
        "list"] == rows[:200]  # fmt: skip
    times = [timestamp(raw) for raw in want]
    windows = [(0, 299, 1000), (100, 280, 1000), (200, 260, 30), (10, 270, 500), (240, 255, 3),
               (0, 30, 1000), (COUNT - 60, COUNT - 1, 55)]  # fmt: skip
    for first, last, limit in windows:
        got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1,
                                start=times[first], end=times[last], limit=limit)  # fmt: skip
        window = rows[COUNT - 1 - last : COUNT - first]
        assert got["result"]["list"] == window[:limit], (first, last, limit)


def check_candles(port: int, want: list[bytes]) -> None:
    """`/candles`: the candles byte for byte, the newest `limit`, and paging forward with
    `start` through the seam."""
    got, rest = candles(port, "symbol=BTCUSDT&interval=1m&limit=10000")
    assert got == want and rest == {}
    assert candles(port, "symbol=BTCUSDT&interval=1m&limit=120")[0] == want[-120:]
    paged: list[bytes] = []
    start = T0 - 5 * MINUTE
    while page := candles(port, f"symbol=BTCUSDT&interval=1m&start={start}&limit=70")[0]:
        paged += page
        start = timestamp(page[-1]) + 1
    assert paged == want


def check_websocket(port: int, btc: list[bytes], eth: list[bytes]) -> None:
    """`since` from before the first candle, from the middle of the table's part, and
    `history: N` reaching into the table; one series and a wildcard."""
    text, got = resume(port, {"args": ["1m.BTCUSDT"], "since": T0}, COUNT)
    assert text == f"subscribed; {COUNT} candles of 1 series first"
    assert got == btc
    since = timestamp(btc[37])
    text, got = resume(port, {"args": ["1m.*"], "since": since}, 2 * (COUNT - 37))
    assert text == f"subscribed; {2 * (COUNT - 37)} candles of 2 series first"
    assert got == btc[37:] + eth[37:]
    text, got = resume(port, {"args": ["1m.ETHUSDT"], "history": 222}, 222)
    assert got == eth[-222:]


def check_outage(port: int, pg: PostgresProcess, proc: Proc, want: list[bytes]) -> None:
    """PostgreSQL stopped: what the store holds is still served, whole, and each answer says
    where it stops; a range the store holds alone is answered as before. Then back."""
    pg.stop()
    session = pybit_ut.HTTP(testnet=False)
    session.endpoint = f"http://{USER}:{KEY}@127.0.0.1:{port}"
    rows = [bybit_row(raw) for raw in reversed(want)]
    got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1, limit=30)
    assert got["result"]["list"] == rows[:30] and got["retExtInfo"] == {}  # the store alone
    got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1, limit=1000)
    assert got["retCode"] == 0
    floor = got["retExtInfo"]["missingBefore"]
    assert "PostgreSQL" in got["retExtInfo"]["reason"]
    kept = [raw for raw in want if timestamp(raw) >= floor]
    assert DEPTH <= len(kept) <= DEPTH + 16
    assert got["result"]["list"] == [bybit_row(raw) for raw in reversed(kept)]
    raws, rest = candles(port, "symbol=BTCUSDT&interval=1m&limit=10000")
    assert raws == kept and rest["missing_before"] == floor
    raws, rest = candles(port, f"symbol=BTCUSDT&interval=1m&start={T0}&limit=3")
    assert raws == kept[:3] and rest["missing_before"] == floor  # paging on goes on from there
    text, got_ws = resume(port, {"args": ["1m.BTCUSDT"], "since": T0}, len(kept))
    assert got_ws == kept
    assert text == (
        f"subscribed; {len(kept)} candles of 1 series first; older candles of 1 series "
        "unavailable (the archive, PostgreSQL, is unreachable)"
    )
    assert "history: older candles unavailable, answering from the Redis store only" in (
        proc.output()
    )
    pg.start()

    def whole() -> bool:
        got = session.get_kline(category="linear", symbol="BTCUSDT", interval=1, limit=1000)
        return bool(got["result"]["list"] == rows and got["retExtInfo"] == {})

    wait_until(whole, 30, "history from PostgreSQL again")
