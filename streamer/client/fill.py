"""Filling a hole in a candle stream from the history store (common/history.py).

A stream trimmed past a reader's position has lost entries the reader never saw. Which candles
they held is not known any more, but every one of them is in the store (the aggregator writes
store and stream in one script), as its latest revision, as long as the store reaches back that
far (STREAMER_HISTORY_CANDLES per series). What the fill takes, per series of the shard: every
stored candle that ended after `since_end_ms`.

The bound. The reader keeps, with its position, the latest candle end it handed out from the
shard (M). Candles of a shard are written in stream-time order: an entry after the position was
written at a stream time of at least M, and a candle written then ended after M minus the wait
(a first version: it was still open at M) or after M minus the revision window (a revision:
late trades revise only that far back). So `since_end_ms` = M - lookback, with a lookback of at
least STREAMER_KLINE_REVISION_WINDOW_S plus the waiter latency, takes every candle the lost
entries held; older candles the reader has already had. (Klines mode writes in the exchange's
order, but a hole ingest fills from Bybit's REST after a reconnect of its own is written late:
such a candle, lost in the reader's hole and ended more than the lookback before M, is not
given again.)

The seam with the stream. The stream's head is read before the store (`first_head`): every
entry up to it is in the store as read, so the reader goes on after it. But for a waiter
deadline's candles, which are stored a few ms after their write: when the shard's `unstored` mark
(common/history.py), read right after that head, names an entry at or before it, `first_head` is
the entry before the mark, and the reader takes those candles from the stream. Entries written while
the store was read (up to `last_head`, read after it) may be in the fill already: the reader
drops those whose candle the fill gave at the same or a higher rank (exactly as the WebSocket
resume does, publish/consumers/resume.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from common.errors import ConfigError
from common.history import UNSTORED, SeriesHead, member_rank
from common.intervals import Interval
from common.keys import Keys
from common.redisconn import AnyRedis
from common.wire import CandleView, candle_view_decoder, entry_id

log = logging.getLogger("streamer.client")

READS_IN_FLIGHT = 64
"""Store keys read per pipelined round trip."""


@dataclass(slots=True)
class Filled:
    """One stored candle of a fill, with its end and its rank at its open time."""

    candle: CandleView
    end_ms: int
    rank: int


@dataclass(slots=True)
class Fill:
    """What the store gave for one shard: the candles, series by series, oldest first."""

    candles: list[Filled] = field(default_factory=list)
    first_head: bytes = b"0-0"  # the stream's last entry before the store was read
    last_head: bytes = b"0-0"  # ... and after it
    series: int = 0


async def read_fill(
    redis: AnyRedis, keys: Keys, shard: int, stream: str, since_end_ms: int | None
) -> Fill:
    """Every stored candle of the shard's series that ended after `since_end_ms` (None: all),
    between two reads of the stream's head."""
    fill = Fill(first_head=await _head_stored(redis, keys.state(shard), stream))
    found = [_name(raw) async for raw in redis.scan_iter(match=keys.history_shard_pattern(shard))]
    series = [s for s in (_series(key) for key in found) if s is not None]
    fill.series = len(series)
    for at in range(0, len(series), READS_IN_FLIGHT):
        chunk = series[at : at + READS_IN_FLIGHT]
        async with redis.pipeline(transaction=False) as pipe:
            for key, _, interval in chunk:
                low: int | str = "-inf" if since_end_ms is None else interval.floor(since_end_ms)
                pipe.zrange(key, low, "+inf", byscore=True)
            replies: list[Any] = await pipe.execute()
        for (_, head_of, interval), members in zip(chunk, replies, strict=True):
            for member in _latest(members):
                candle = candle_view_decoder.decode(head_of.candle(member))
                end_ms = interval.next_open(candle.timestamp)
                if since_end_ms is None or end_ms > since_end_ms:
                    fill.candles.append(Filled(candle, end_ms, member_rank(member)))
    fill.last_head = await head(redis, stream)
    return fill


async def head(redis: AnyRedis, stream: str) -> bytes:
    """The id of the stream's last entry (0-0 when it is empty or missing)."""
    last: Any = await redis.xrevrange(stream, count=1)
    return bytes(last[0][0]) if last else b"0-0"


async def _head_stored(redis: AnyRedis, state: str, stream: str) -> bytes:
    """The stream's last entry whose candle (and every one before it) is in the store: its head,
    or the entry before the `unstored` mark read after it."""
    first = await head(redis, stream)
    mark: Any = await redis.hget(state, UNSTORED)
    if mark is None:
        return first
    ms, seq = entry_id(bytes(mark))
    before = (ms, seq - 1) if seq else (ms - 1, 2**64 - 1)
    return first if entry_id(first) < before else b"%d-%d" % before


def _name(raw: bytes | str) -> str:
    return raw.decode() if isinstance(raw, bytes) else raw


def _series(key: str) -> tuple[str, SeriesHead, Interval] | None:
    """`<p>:{k}:hist:<label>:<symbol>` -> (key, the series' candle head, its interval)."""
    label, _, symbol = key.rsplit(":hist:", 1)[-1].partition(":")
    try:
        interval = Interval.parse(label)
    except ConfigError:
        log.warning("%s: not a history key of a known interval, skipped", key)
        return None
    return key, SeriesHead(symbol, interval), interval


def _latest(members: list[bytes]) -> list[bytes]:
    """One member per open time (members come in score order): the one of highest rank."""
    out: list[bytes] = []
    last_ts = b""
    for member in members:
        ts = member[12 : member.index(b",", 12)]
        if out and ts == last_ts:
            if member_rank(member) >= member_rank(out[-1]):
                out[-1] = member
            continue
        out.append(member)
        last_ts = ts
    return out
