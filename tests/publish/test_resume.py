"""Resume on `/` in-process, against a real redis-server: `since` and `history`, the seam between
the store and the live feed, revisions, updates and bad requests.

Candles are written as the aggregator writes them: stream entry and store member in one script.
The live feed is handed to the consumer by hand, with the entry ids the stream gave, so each
test decides exactly what the live feed has delivered when.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import msgspec
import pytest
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from common.history import STORE_LUA
from common.intervals import parse_intervals
from common.keys import Keys
from common.sharding import shard_of
from publish.batch import CandleBatch
from publish.consumers.manager import ConsumerManager
from publish.consumers.resume import EntryId, HistoryLoader, Loaded, Seam
from publish.consumers.websocket import WebSocketConsumer
from publish.history import HistoryReader
from tests.publish.helpers import KEY, PREFIX, USER, basic, candle, ws_settings
from tests.support.redisproc import free_port
from tests.support.waiting import async_wait_until

pytestmark = pytest.mark.redis

SHARDS = 2
T0 = 1_786_310_820_000
KEYS = Keys(PREFIX)
_WRITE = (
    STORE_LUA
    + """
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
store_candle(KEYS[2], ARGV[1], tonumber(ARGV[2]))
return id
"""
)
_WRITE_UNSTORED = """
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
redis.call('HSETNX', KEYS[2], 'unstored', id)
return id
"""


def c(symbol: str, n: int, close: str = "1.5", revision: int = 0, closed: bool = True) -> bytes:
    """The n-th 1m candle of a series."""
    raw = candle(symbol, timestamp=T0 + n * 60_000, close=close, revision=revision)
    return raw if closed else raw.replace(b'"closed":true', b'"closed":false')


class Store:
    """Writes candles as the aggregator does, and remembers each one's stream entry id."""

    def __init__(self, redis_url: str) -> None:
        self.client = redis.Redis.from_url(redis_url)
        self._script = self.client.register_script(_WRITE)
        self.ids: dict[bytes, tuple[int, bytes]] = {}

    def write(self, *raws: bytes) -> None:
        for raw in raws:
            symbol = msgspec.json.decode(raw)["symbol"]
            shard = shard_of(symbol, SHARDS)
            keys = [KEYS.klines(shard), KEYS.history(shard, "1m", symbol)]
            entry = self._script(keys=keys, args=[raw, 1000])
            self.ids[raw] = (shard, entry)

    def write_unstored(self, *raws: bytes) -> None:
        """As a waiter deadline's write: to the stream only, its first id marked in the shard's
        state (aggregate.checkpoint.WRITE_LUA with the store left for later)."""
        script = self.client.register_script(_WRITE_UNSTORED)
        for raw in raws:
            shard = shard_of(msgspec.json.decode(raw)["symbol"], SHARDS)
            self.ids[raw] = (
                shard,
                script(keys=[KEYS.klines(shard), KEYS.state(shard)], args=[raw]),
            )

    def batch(self, *raws: bytes) -> CandleBatch:
        """The live feed's batch of these candles (as the reader builds it)."""
        ids: dict[int, list[bytes]] = {}
        by_shard: dict[int, list[bytes]] = {}
        for raw in raws:
            shard, entry = self.ids[raw]
            ids.setdefault(shard, []).append(entry)
            by_shard.setdefault(shard, []).append(raw)
        return CandleBatch(list(raws), ids, by_shard)


@pytest.fixture
def store(redis_url: str) -> Iterator[Store]:
    s = Store(redis_url)
    yield s
    s.client.close()


@pytest.fixture
async def server(redis_url: str) -> AsyncIterator[WebSocketConsumer]:
    settings = ws_settings(free_port(), redis_url=redis_url, shards=SHARDS, kline_intervals="1m")
    (consumer,) = ConsumerManager.create(["websocket"], settings)
    assert isinstance(consumer, WebSocketConsumer)
    await consumer.setup()
    await consumer.start()
    yield consumer
    await consumer.stop()


async def client(consumer: WebSocketConsumer) -> ClientConnection:
    assert consumer.settings is not None
    port = consumer.settings.websocket_port
    conn = await connect(f"ws://127.0.0.1:{port}/", additional_headers=basic(), compression=None)
    await async_wait_until(lambda: _true(bool(consumer._clients)), what="registration")
    return conn


async def _true(value: bool) -> bool:
    return value


async def recv(conn: ClientConnection, timeout_s: float = 5) -> Any:
    return msgspec.json.decode(await asyncio.wait_for(conn.recv(), timeout_s))


async def send(conn: ClientConnection, message: object) -> None:
    await conn.send(msgspec.json.encode(message).decode())


async def nothing_more(conn: ClientConnection) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.recv(), 0.3)


def decoded(*raws: bytes) -> list[object]:
    return [msgspec.json.decode(raw) for raw in raws]


async def test_since_sends_stored_history_then_live_without_repeats(
    server: WebSocketConsumer, store: Store
) -> None:
    history = [c("BTCUSDT", n) for n in range(10)]
    store.write(*history, c("ETHUSDT", 5))
    revised = c("BTCUSDT", 4, "9.9", revision=1)
    store.write(revised)
    await server.consume_batch(store.batch(*history[:3]))  # the live feed is behind the store
    conn = await client(server)
    await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "since": T0 + 3 * 60_000})
    assert await recv(conn) == {
        "op": "subscribe", "success": True, "ret_msg": "subscribed; 7 candles of 1 series first",
        "args": ["1m.BTCUSDT"],
    }  # fmt: skip
    assert await recv(conn) == decoded(history[3], revised, *history[5:])
    # The live feed catches up: everything the history sent is dropped, the new ones pass.
    new, later = c("BTCUSDT", 10), c("BTCUSDT", 7, "7.7", revision=1)
    store.write(new, later)
    await server.consume_batch(store.batch(*history[3:], revised, c("ETHUSDT", 5), new, later))
    assert await recv(conn) == decoded(new, later)
    assert next(iter(server._clients)).resume is None  # the seam is closed
    await nothing_more(conn)
    await conn.close()


async def test_since_takes_a_deadlines_candles_not_stored_yet_from_the_stream(
    server: WebSocketConsumer, store: Store
) -> None:
    """A waiter deadline's candles are in the stream a few ms before the store has them (the
    `unstored` mark); the live feed handed them out before the subscribe: the history must
    still hold them, a revision in its place."""
    history = [c("BTCUSDT", n) for n in range(5)]
    store.write(*history)
    revised, new = c("BTCUSDT", 2, "9.9", revision=1), c("BTCUSDT", 5)
    store.write_unstored(revised, new, c("ETHUSDT", 5))
    await server.consume_batch(store.batch(*history, revised, new, c("ETHUSDT", 5)))
    conn = await client(server)
    await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "since": T0 + 60_000})
    assert (await recv(conn))["ret_msg"] == "subscribed; 5 candles of 1 series first"
    assert await recv(conn) == decoded(history[1], revised, history[3], history[4], new)
    await nothing_more(conn)
    await conn.close()


async def test_history_n_for_patterns_skips_series_already_subscribed(
    server: WebSocketConsumer, store: Store
) -> None:
    for symbol in ("BTCUSDT", "ETHUSDT", "SOLUSDT"):
        store.write(*[c(symbol, n) for n in range(6)])
    conn = await client(server)
    await send(conn, {"op": "subscribe", "args": ["1m.ETHUSDT"]})
    assert (await recv(conn))["ret_msg"] == "subscribed"
    await send(conn, {"op": "subscribe", "args": ["1m.*"], "history": 2})
    reply = await recv(conn)
    assert reply["ret_msg"] == "subscribed; 4 candles of 2 series first"
    assert await recv(conn) == decoded(c("BTCUSDT", 4), c("BTCUSDT", 5), c("SOLUSDT", 4),
                                       c("SOLUSDT", 5))  # fmt: skip
    await nothing_more(conn)
    await conn.close()


class PausingLoader(HistoryLoader):
    """Stops between the store read and the head read, so a test can write and deliver
    candles exactly there: the one interleaving where a candle may or may not be in the
    history."""

    def __init__(self, loader: HistoryLoader) -> None:
        self.__dict__.update(loader.__dict__)
        self.reached = asyncio.Event()
        self.go_on = asyncio.Event()

    async def _head(self, shard: int) -> EntryId:
        self.reached.set()
        await self.go_on.wait()
        return await super()._head(shard)


async def test_the_seam_when_the_live_feed_races_the_history_read(
    server: WebSocketConsumer, store: Store
) -> None:
    first = [c("BTCUSDT", n) for n in range(5)]
    store.write(*first)
    await server.consume_batch(store.batch(*first[:3]))
    assert server._history is not None
    loader = PausingLoader(server._history)
    server._history = loader
    conn = await client(server)
    await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "since": T0})
    try:
        await asyncio.wait_for(loader.reached.wait(), 5)
        # Between the reads: a candle written (not in the history, below the head) and the live
        # feed handing over 3, 4 (in the history) and that one. The client gets nothing yet.
        between = c("BTCUSDT", 5)
        store.write(between)
        await server.consume_batch(store.batch(*first[3:], between))
        await nothing_more(conn)
    finally:
        loader.go_on.set()  # a failure above must not leave the handler waiting
    assert (await recv(conn))["success"] is True
    assert await recv(conn) == decoded(*first)
    assert await recv(conn) == decoded(between)
    after = c("BTCUSDT", 6)
    store.write(after)
    await server.consume_batch(store.batch(after))
    assert await recv(conn) == decoded(after)
    await nothing_more(conn)
    await conn.close()


async def test_in_progress_candles_never_follow_their_close_from_history(
    server: WebSocketConsumer, store: Store
) -> None:
    store.write(*[c("BTCUSDT", n) for n in range(3)])
    conn = await client(server)
    await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "history": 5})
    await recv(conn)
    assert len(await recv(conn)) == 3
    await server.consume_updates(CandleBatch([c("BTCUSDT", 2, closed=False)], {}))
    await nothing_more(conn)
    await server.consume_updates(CandleBatch([c("BTCUSDT", 3, closed=False)], {}))
    assert await recv(conn) == decoded(c("BTCUSDT", 3, closed=False))
    await conn.close()


async def test_bad_resume_requests_change_nothing(server: WebSocketConsumer, store: Store) -> None:
    store.write(c("BTCUSDT", 0))
    conn = await client(server)
    cases: list[tuple[dict[str, object], str]] = [
        ({"since": 1, "history": 2}, "give 'since' or 'history', not both"),
        ({"since": -1}, "'since' must be a time in ms"),
        ({"history": 0}, "'history' must be 1..100000"),
        ({"since": "yesterday"}, "bad request: Expected `int | null`, got `str`"),
    ]
    for extra, text in cases:
        await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], **extra})
        reply = await recv(conn)
        assert reply["success"] is False and text in reply["ret_msg"], reply
    # Still no topic: every live candle comes.
    await server.consume_batch(store.batch(c("BTCUSDT", 0)))
    assert await recv(conn) == decoded(c("BTCUSDT", 0))
    await conn.close()


async def test_history_unavailable_subscribes_nothing() -> None:
    settings = ws_settings(free_port(), redis_url=f"redis://127.0.0.1:{free_port()}/0")
    (consumer,) = ConsumerManager.create(["websocket"], settings)
    assert isinstance(consumer, WebSocketConsumer)
    await consumer.setup()
    await consumer.start()
    try:
        conn = await client(consumer)
        await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "since": T0})
        reply = await recv(conn)
        assert reply["success"] is False, reply
        assert "history unavailable, nothing subscribed" in reply["ret_msg"]
        await consumer.consume_batch(CandleBatch([c("ETHUSDT", 0)], {}))
        assert await recv(conn) == decoded(c("ETHUSDT", 0))  # still every candle
        await conn.close()
    finally:
        await consumer.stop()


async def test_a_client_too_slow_for_its_history_is_closed(redis_url: str, store: Store) -> None:
    settings = ws_settings(free_port(), redis_url=redis_url, shards=SHARDS, kline_intervals="1m",
                           websocket_client_buffer=1, websocket_max_frame_candles=2)  # fmt: skip
    (consumer,) = ConsumerManager.create(["websocket"], settings)
    assert isinstance(consumer, WebSocketConsumer)
    await consumer.setup()
    await consumer.start()
    assert consumer._history is not None
    loader = PausingLoader(consumer._history)
    consumer._history = loader
    try:
        store.write(c("BTCUSDT", 0))
        conn = await client(consumer)
        await send(conn, {"op": "subscribe", "args": ["1m.BTCUSDT"], "since": T0})
        try:
            await asyncio.wait_for(loader.reached.wait(), 5)
            live = [c("BTCUSDT", n) for n in range(1, 4)]
            store.write(*live)
            await consumer.consume_batch(store.batch(*live))  # 3 held back: more than 1 x 2
        finally:
            loader.go_on.set()
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(conn.recv(), 5)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    finally:
        await consumer.stop()


async def test_the_example_client_resumes_without_a_hole(
    server: WebSocketConsumer, store: Store
) -> None:
    from examples.ws_resume import follow

    assert server.settings is not None
    url = f"ws://127.0.0.1:{server.settings.websocket_port}/"
    got: list[tuple[int, str, bool]] = []
    stop = asyncio.Event()

    def keep(candle: dict[str, Any], replaces: bool) -> None:
        got.append((int(candle["timestamp"]), str(candle["close"]), replaces))

    def arrived(n: int) -> Callable[[], Awaitable[bool]]:
        return lambda: _true(len(got) >= n)

    store.write(*[c("BTCUSDT", n) for n in range(5)])
    task = asyncio.create_task(follow(url, USER, KEY, ["1m.BTCUSDT"], T0, keep, stop))
    try:
        await async_wait_until(arrived(5), what="the history")
        # The server drops it; meanwhile candles are written that the live feed never brings.
        for each in list(server._clients):
            await each.outbox.conn.close()
        away = [c("BTCUSDT", n) for n in range(5, 8)]
        store.write(*away)
        await async_wait_until(arrived(8), what="the history written while it was away")
        new, revised = c("BTCUSDT", 8), c("BTCUSDT", 3, "3.3", revision=1)
        store.write(new, revised)
        await server.consume_batch(store.batch(*away, new, revised))
        await async_wait_until(arrived(10), what="the live candles")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
    minute = 60_000
    assert got == [
        *[(T0 + n * minute, "1.5", False) for n in range(9)],
        (T0 + 3 * minute, "3.3", True),
    ]


class _NoArchive:
    """Stands for the PostgreSQL archive where only its presence matters."""

    async def entries(self, *args: object, **kwargs: object) -> list[tuple[int, bytes]]:
        return []

    async def aclose(self) -> None:
        pass


def test_with_an_archive_a_resume_reads_a_share_of_a_budget_per_series() -> None:
    """Up to 100,000 candles per series, 1,000,000 over the series of one resume, never less
    than the store holds (depth_max); without an archive, what the store holds."""
    client = redis.asyncio.Redis(port=free_port())
    keys, intervals = Keys(PREFIX), parse_intervals("1m")
    bare = HistoryLoader(HistoryReader(client, keys, intervals, 2), client, keys, 2, 2100)
    deep = HistoryLoader(HistoryReader(client, keys, intervals, 2, archive=_NoArchive()),
                         client, keys, 2, 2100)  # fmt: skip
    assert [bare.limit(n, None) for n in (1, 100, 5000)] == [2100, 2100, 2100]
    assert [deep.limit(n, None) for n in (1, 10, 100, 5000)] == [100_000, 100_000, 10_000, 2100]
    assert deep.limit(1, 7) == bare.limit(1, 7) == 7 and deep.limit(100, 50_000) == 10_000
    loaded = Loaded([b"{}"] * 3, Seam(), incomplete=2, capped=10_000)
    assert loaded.reply(4) == (
        "subscribed; 3 candles of 4 series first; at most the newest 10000 of each series; "
        "older candles of 2 series unavailable (the archive, PostgreSQL, is unreachable)"
    )
