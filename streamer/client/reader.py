"""`CandleReader`: every candle of every shard's candle stream, from a stored position.

The shards come from `<p>:meta` (`shards`); the streams are `<p>:{k}:klines`. Each candle is
handed out as a `Read(candle, replaces)`: the candle with exact `Decimal` prices and sizes
(`common.wire.CandleView`), and whether it replaces a version of the same candle (symbol,
interval, open time) that may have been handed out before: a revision, or a candle the store
filled in again. Keep the candle by (symbol, interval, open time), replacing on `replaces`, and
you hold what the pipeline holds.

The position is the reader's own key per shard, `<p>:{k}:reader:<name>` (a hash: `id`, the
last entry handed out and handled, and `end`, the latest candle end among them), not a consumer
group. A group hands each entry to one of its consumers and tracks deliveries, not handling: a
reader that must see every candle needs neither, and a group's position cannot say what a
trimmed hole held, while `end` bounds exactly what the store must refill (streamer/client/fill.py).
A candle counts as handled once the iteration asks for the next one (or leaves `async with`
without an exception); positions are saved before each new read from Redis and at the close.
So a reader closed cleanly and started again misses nothing and gets nothing twice; after a
crash, the candles handed out since the last save come again (at most one read batch).

A stream trimmed past the position (the reader was away longer than STREAMER_KLINES_MAXLEN
entries last) is noticed at start and whenever a read comes back full (only a reader that far
behind can be trimmed past): the first entry left is after the position. The hole is
filled from the history store, then the stream goes on (streamer/client/fill.py); each fill is
logged and kept in `CandleReader.fills`. Candles older than the store's depth are lost for good.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, NamedTuple, Self

import msgspec
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ResponseError

from common.backoff import backoff
from common.errors import StreamerError
from common.intervals import Calendar, Interval
from common.keys import Keys
from common.logs import RateLimitedLog
from common.redisconn import AnyRedis
from common.rediserrors import REDIS_DOWN
from common.wire import STREAM_FIELD, CandleView, candle_view_decoder
from common.wire import entry_id as _id  # the module names its ids entry_id
from streamer.client.fill import Fill, read_fill

log = logging.getLogger("streamer.client")
limited = RateLimitedLog(log)

CLUSTER_POLL_S = 0.02
START = b"0-0"
SeriesTime = tuple[str, str, int]
"""(symbol, interval label, open time ms): one candle, whatever its revision."""


class ReaderError(StreamerError):
    """The reader cannot start: no pipeline under this prefix, or a bad argument."""


class Read(NamedTuple):
    """One candle handed out, and whether it replaces one that may have been handed out before."""

    candle: CandleView
    replaces: bool


@dataclass(frozen=True, slots=True)
class FillReport:
    """A hole filled from the history store: after which entry, how many candles of how many
    series came from the store."""

    shard: int
    after_id: str
    candles: int
    series: int


@dataclass(slots=True)
class _Item:
    read: Read
    shard: int
    entry_id: bytes | None  # handling it moves the shard's position here (None: not on its own)
    end_ms: int  # the candle end it lets the shard's `end` reach (0: none)


@dataclass(slots=True)
class _Shard:
    index: int
    stream: str
    position_key: str
    next_id: bytes = START  # where the next read goes on
    handled_id: bytes = START
    handled_end_ms: int = 0
    saved: tuple[bytes, int] | None = None
    seam: dict[SeriesTime, int] | None = None  # after a fill: the rank of each candle it gave
    seam_until: tuple[int, int] = (0, 0)


class CandleReader:
    """Reads every shard's candle stream from its stored position; see the module docstring.

    `name` keys the stored positions: one name per reader (two processes with one name share
    one position and each gets a part). `start` says where a reader with no stored position
    begins: "latest" (what is written from now on) or "earliest" (the oldest candle the streams,
    or the store when they were trimmed, still hold). `lookback_s` must be at least the
    pipeline's STREAMER_KLINE_REVISION_WINDOW_S plus its waiter latency. A client given to the
    constructor must answer bytes (redis-py's default, `decode_responses=False`).
    """

    def __init__(
        self,
        redis: AnyRedis,
        name: str,
        *,
        prefix: str = "streamer",
        start: Literal["latest", "earliest"] = "latest",
        batch: int = 1000,
        block_ms: int = 1000,
        lookback_s: float = 60.0,
        cluster: bool = False,
        close_client: bool = False,
    ) -> None:
        if not name or any(c in name for c in "{}\n"):
            raise ReaderError(f"reader name {name!r}: give a non-empty name without {{, }}")
        if start not in ("latest", "earliest") or batch < 1 or block_ms < 0 or lookback_s < 0:
            raise ReaderError("start: latest|earliest; batch >= 1; block_ms, lookback_s >= 0")
        self._redis = redis
        self._keys = Keys(prefix)
        self._name = name
        self._start = start
        self._batch = batch
        self._block_ms = block_ms
        self._lookback_ms = int(lookback_s * 1000)
        self._cluster = cluster
        self._close_client = close_client
        self._shards: list[_Shard] = []
        self._by_stream: dict[bytes, _Shard] = {}
        self._buffer: deque[_Item] = deque()
        self._last: _Item | None = None
        self._intervals: dict[tuple[str, int], Interval] = {}
        self._delays = backoff(0.2, 5.0)
        self._started = False
        self._stopping = False
        self._closed = False
        self.fills: list[FillReport] = []

    @classmethod
    def from_url(cls, url: str, name: str, *, cluster: bool = False, **options: Any) -> Self:
        """A reader with its own Redis client (closed by `aclose()`)."""
        client: AnyRedis
        if cluster:
            client = RedisCluster.from_url(url, socket_timeout=None)
        else:
            client = aioredis.Redis.from_url(url, socket_timeout=None, socket_connect_timeout=5)
        return cls(client, name, cluster=cluster, close_client=True, **options)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Left by an exception: the candle being handled was not handled, keep its position.
        await self._close(last_handled=kind is None)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Read:
        if not self._started:
            await self.start()
        self._handled_last()
        while True:
            if self._stopping or self._closed:
                raise StopAsyncIteration  # what is still buffered comes again next time
            if self._buffer:
                break
            await self.commit()
            await self._read_more()
        self._last = self._buffer.popleft()
        return self._last.read

    @property
    def positions(self) -> dict[int, tuple[str, int]]:
        """Per shard: the last entry id handled, and the latest candle end among them."""
        return {s.index: (s.handled_id.decode(), s.handled_end_ms) for s in self._shards}

    async def start(self) -> None:
        """Find the shards and each one's position; fill a hole a trim left while away."""
        if self._started:
            return
        raw: Any = await self._redis.hget(self._keys.meta(), "shards")
        if raw is None or not bytes(raw).isdigit():
            raise ReaderError(
                f"{self._keys.meta()} names no shards: nothing has written under this prefix "
                "yet (ingest writes it at start), or the prefix is not the pipeline's"
            )
        for k in range(int(raw)):
            shard = _Shard(k, self._keys.klines(k), self._keys.reader_position(self._name, k))
            self._shards.append(shard)
            self._by_stream[shard.stream.encode()] = shard
        async with self._redis.pipeline(transaction=False) as pipe:
            for shard in self._shards:
                pipe.hmget(shard.position_key, ["id", "end"])
            stored: list[Any] = await pipe.execute()
        for shard, (entry_id, end) in zip(self._shards, stored, strict=True):
            if entry_id is not None:
                shard.handled_id = shard.next_id = bytes(entry_id)
                shard.handled_end_ms = int(end or 0)
                shard.saved = (shard.handled_id, shard.handled_end_ms)
            elif self._start == "latest":
                await self._start_at_tail(shard)
        await self.commit()  # a new reader's start, so that a restart misses nothing
        self._started = True
        for shard in self._shards:
            if await self._trimmed(shard):
                await self._fill(shard)

    async def _start_at_tail(self, shard: _Shard) -> None:
        last: Any = await self._redis.xrevrange(shard.stream, count=1)
        if last:
            entry_id, fields = last[0]
            shard.handled_id = shard.next_id = bytes(entry_id)
            data = fields.get(STREAM_FIELD)
            if data is not None:
                shard.handled_end_ms = self._end_ms(candle_view_decoder.decode(data))

    def stop(self) -> None:
        """End the iteration (a read in progress first, at most `block_ms`): from a signal
        handler or another task. Then leave `async with` (or `aclose()`) to save the position."""
        self._stopping = True

    async def commit(self) -> None:
        """Save each shard's position: everything handed out before the current candle."""
        if self._closed or not self._shards:
            return
        drained = not self._buffer and self._last is None
        changed = []
        for shard in self._shards:
            if drained:  # entries the seam dropped are handled too
                shard.handled_id = shard.next_id
            now = (shard.handled_id, shard.handled_end_ms)
            if now != shard.saved:
                changed.append((shard, now))
        if not changed:
            return
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                for shard, (entry_id, end_ms) in changed:
                    pipe.hset(shard.position_key, mapping={"id": entry_id, "end": end_ms})
                await pipe.execute()
        except REDIS_DOWN as exc:
            limited.warning("commit", "reader %s: position not saved (%r)", self._name, exc)
            return
        for shard, now in changed:
            shard.saved = now

    async def aclose(self) -> None:
        """Save the positions (everything handed out counts as handled) and close; the client
        too when `from_url` made it."""
        await self._close(last_handled=True)

    async def _close(self, *, last_handled: bool) -> None:
        if self._closed:
            return
        if last_handled:
            self._handled_last()
        try:
            await self.commit()
        finally:
            self._closed = True
            if self._close_client:
                await self._redis.aclose()

    def _handled_last(self) -> None:
        item, self._last = self._last, None
        if item is None:
            return
        shard = self._shards[item.shard]
        if item.entry_id is not None:
            shard.handled_id = item.entry_id
        shard.handled_end_ms = max(shard.handled_end_ms, item.end_ms)

    async def _read_more(self) -> None:
        streams: dict[Any, Any] = {s.stream: s.next_id for s in self._shards}
        try:
            reply = await self._xread(streams)
            for name, entries in reply:
                shard = self._by_stream[name if isinstance(name, bytes) else name.encode()]
                if len(entries) >= self._batch and await self._trimmed(shard):
                    await self._fill(shard)  # the entries read go again after the fill's head
                    continue
                self._take(shard, entries)
        except REDIS_DOWN as exc:
            limited.warning("read", "reader %s: Redis unavailable (%r), retrying", self._name, exc)
            await asyncio.sleep(next(self._delays))
            return
        self._delays = backoff(0.2, 5.0)

    async def _xread(self, streams: dict[Any, Any]) -> list[Any]:
        """One blocking read of every stream; on a Redis Cluster (whose shards live in other
        slots) one read per stream and a short pause when none had anything."""
        if not self._cluster:
            reply: Any = await self._redis.xread(streams, count=self._batch, block=self._block_ms)
            return list(reply or [])
        out: list[Any] = []
        for stream, position in streams.items():
            out.extend(await self._redis.xread({stream: position}, count=self._batch) or [])
        if not out:
            await asyncio.sleep(min(self._block_ms / 1000, CLUSTER_POLL_S))
        return out

    def _take(self, shard: _Shard, entries: list[Any]) -> None:
        for entry_id, fields in entries:
            shard.next_id = bytes(entry_id)
            data = fields.get(STREAM_FIELD) if fields else None
            if data is None:
                continue
            try:
                candle = candle_view_decoder.decode(data)
            except msgspec.DecodeError as exc:
                limited.warning("bad", "%s %s: not a candle, skipped: %s", shard.stream,
                                shard.next_id.decode(), exc)  # fmt: skip
                continue
            replaces = candle.revision > 0
            if shard.seam is not None:
                if _id(shard.next_id) > shard.seam_until:
                    shard.seam = None
                else:
                    given = shard.seam.get(_series_time(candle))
                    if given is not None:
                        if given >= candle.revision:
                            continue  # the fill gave this candle (or a newer revision)
                        replaces = True
            item = _Item(Read(candle, replaces), shard.index, shard.next_id, self._end_ms(candle))
            self._buffer.append(item)

    async def _trimmed(self, shard: _Shard) -> bool:
        """Whether entries after the read position were deleted (trimmed)."""
        try:
            info: Any = await self._redis.xinfo_stream(shard.stream)
        except ResponseError:
            return False  # no such stream (yet)
        if shard.next_id == START:  # from the beginning: was anything ever trimmed? (Redis 7)
            return int(info.get("entries-added") or 0) > int(info.get("length") or 0)
        # Trims cut from the head: entries after the position are gone when the first one left
        # is after it. (A trim that stopped right after the position looks the same: the fill
        # then gives candles the reader had, flagged `replaces`.)
        first = info.get("first-entry")
        return bool(first) and _id(first[0]) > _id(shard.next_id)

    async def _fill(self, shard: _Shard) -> None:
        after = shard.next_id.decode()
        since = None if shard.handled_end_ms == 0 else shard.handled_end_ms - self._lookback_ms
        fill: Fill = await read_fill(self._redis, self._keys, shard.index, shard.stream, since)
        seam: dict[SeriesTime, int] = {}
        items = []
        for filled in fill.candles:
            candle = filled.candle
            seam[_series_time(candle)] = filled.rank
            # Ended after `end`: never handed out before (unless a revision replaces it).
            replaces = candle.revision > 0 or filled.end_ms <= shard.handled_end_ms
            items.append(_Item(Read(candle, replaces), shard.index, None, 0))
        if items:  # only once the whole fill is handled may the position pass it
            items[-1].entry_id = fill.first_head
            items[-1].end_ms = max(f.end_ms for f in fill.candles)
        self._buffer.extend(items)
        shard.next_id = fill.first_head
        shard.seam, shard.seam_until = seam, _id(fill.last_head)
        self.fills.append(FillReport(shard.index, after, len(items), fill.series))
        log.warning(
            "%s was trimmed past reader %s's position %s: %d candles of %d series filled in from "
            "the history store, going on after %s (candles older than the store's depth are "
            "lost; raise STREAMER_KLINES_MAXLEN to keep more)",
            shard.stream, self._name, after, len(items), fill.series, fill.first_head.decode(),
        )  # fmt: skip

    def _end_ms(self, candle: CandleView) -> int:
        key = (candle.interval_label, candle.interval)
        interval = self._intervals.get(key)
        if interval is None:
            interval = self._intervals[key] = _interval_of(*key)
        return interval.next_open(candle.timestamp)


def _interval_of(label: str, length_ms: int) -> Interval:
    if label:
        return Interval.parse(label)
    return Interval(length_ms, Calendar.FIXED, f"{length_ms}ms")  # a candle without its label


def _series_time(candle: CandleView) -> SeriesTime:
    return (candle.symbol, candle.interval_label or str(candle.interval), candle.timestamp)
