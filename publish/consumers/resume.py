"""Resume on `/` (docs/protocol.md "Resume"): `{"op":"subscribe","args":[...],"since":<ms>}` sends
every stored closed candle of each newly matching series with `timestamp >= since`, `"history": N`
its last N, oldest first, then the live feed: none missing at the seam, none twice (but as a higher
revision).

The seam. The history store is written in the same script as the candle stream
(common/history.py), so a read of a series' store holds the latest revision of every candle the
stream held at that moment, and the live feed (which reads the stream behind its head) may still
bring some of them. Except a waiter deadline's candles, stored a few ms after their write: the
shard's `unstored` mark is read before the store, and the stream's candles from it up to the head
(step 2) are taken into the history as if stored (`_with_unstored`). So, per client:

1. From the subscribe on, the client's live candles are held back (`pending`) while its history
   is read: the live feed cannot overtake the history.
2. Per series the store is read, and after that the head entry id of the series' shard stream.
   A candle with an id above that head was written after the store read, so the history does
   not hold it; one at or below it may be in the history or not (written between the reads).
3. The history is sent, then the held-back candles, then live as usual; a live candle is dropped
   when the history sent its (series, timestamp) with a revision >= its own, which settles the
   "may or may not" of step 2 exactly (the store keeps the latest revision; a candle the store
   holds from the Bybit backfill, ingest/backfill.py, ranks below them all, so the pipeline's own
   candle at its time is never dropped after it). Once the live feed
   of a shard has passed the head read for a series, no live candle of it can be in its
   history: the record (`Seam`) is forgotten.

In-progress candles (updates) of a series are dropped while the history holds a closed candle at
or after their open time. Deeper than the store (STREAMER_HISTORY_CANDLES per series) the history
comes from the archive (PostgreSQL) when there is one (publish/history.py merges the two), up to
MAX_HISTORY candles per series and ARCHIVE_BUDGET over the series of one resume; without one,
`since` older than the store starts at the oldest stored candle. The seam above is unchanged:
the archive only ever holds candles older than those the live feed can still bring.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NamedTuple

import msgspec

from common.history import UNSTORED, unstored_candles
from common.intervals import Interval
from common.keys import Keys
from common.redisconn import AnyRedis
from common.sharding import shard_of
from common.wire import entry_id
from publish.consumers.bybit import interval_key
from publish.consumers.topics import SeriesKey, Topic
from publish.history import HistoryReader

READS_IN_FLIGHT = 32
"""Store reads of one resume at a time: few round trips for thousands of series, few
connections from the pool."""

MAX_HISTORY = 100_000
"""Most candles `history: N` may ask per series (the store holds STREAMER_HISTORY_CANDLES)."""

ARCHIVE_BUDGET = 1_000_000
"""Most candles one resume asks per series times its series, with an archive: a wildcard over
thousands of series cannot make publish read a hundred million rows into memory (each series
still gets what the store holds)."""

EntryId = tuple[int, int]


class Revisioned(msgspec.Struct, gc=False):
    symbol: str
    interval: int
    timestamp: int
    interval_label: str = ""
    revision: int = 0
    trade_count: int | None = 0

    @property
    def rank(self) -> int:
        """A backfilled candle (Bybit's REST kline, no trade count) ranks below every candle of
        the stream, so the pipeline's own candle at its time still goes out after it."""
        return -1 if self.trade_count is None else self.revision

    @property
    def key(self) -> SeriesKey:
        if self.interval_label in ("1w", "1M"):
            return (self.interval_label, self.symbol)
        return (self.interval, self.symbol)


_revisioned = msgspec.json.Decoder(Revisioned)


def check_request(since: int | None, history: int | None) -> str | None:
    """What is wrong with a resume request, or None."""
    if since is not None and history is not None:
        return "give 'since' or 'history', not both"
    if since is not None and since < 0:
        return "'since' must be a time in ms (>= 0)"
    if history is not None and not 1 <= history <= MAX_HISTORY:
        return f"'history' must be 1..{MAX_HISTORY}"
    return None


class Seam:
    """What one client's history sent, per series, until the live feed has passed it."""

    __slots__ = ("_heads", "_sent")

    def __init__(self) -> None:
        self._sent: dict[SeriesKey, dict[int, int]] = {}  # series -> open time -> revision
        self._heads: dict[SeriesKey, tuple[int, EntryId]] = {}  # series -> (shard, head id)

    def __bool__(self) -> bool:
        return bool(self._sent)

    def add(self, key: SeriesKey, shard: int, head: EntryId, raws: list[bytes]) -> None:
        """`raws`: the series' history, oldest first (the last key of `sent` is the newest)."""
        sent = self._sent[key] = {}
        for raw in raws:
            fields = _revisioned.decode(raw)
            sent[fields.timestamp] = max(fields.rank, sent.get(fields.timestamp, -2))
        self._heads[key] = (shard, head)

    def merge(self, other: Seam) -> None:
        self._sent.update(other._sent)
        self._heads.update(other._heads)

    def keep(self, raw: bytes) -> bool:
        """False for a closed candle the history already sent (at this revision or higher)."""
        fields = _revisioned.decode(raw)
        sent = self._sent.get(fields.key)
        return sent is None or sent.get(fields.timestamp, -2) < fields.revision

    def keep_update(self, raw: bytes) -> bool:
        """False for an in-progress candle whose candle (or a later one) the history sent closed."""
        fields = _revisioned.decode(raw)
        sent = self._sent.get(fields.key)
        return not sent or next(reversed(sent)) < fields.timestamp

    def passed(self, last_ids: dict[int, bytes]) -> None:
        """The live feed handed over every candle up to `last_ids` (per shard)."""
        if not last_ids:
            return
        done = [
            key
            for key, (shard, head) in self._heads.items()
            if shard in last_ids and entry_id(last_ids[shard]) >= head
        ]
        for key in done:
            del self._heads[key]
            del self._sent[key]


class HistoryLoader:
    """Reads the history of series for a resume: the store, then each shard's stream head."""

    def __init__(
        self, reader: HistoryReader, redis: AnyRedis, keys: Keys, shards: int, depth_max: int
    ) -> None:
        self.reader = reader
        self._redis = redis  # the reader's, for the stream heads
        self._keys = keys
        self._shards = shards
        self._depth_max = depth_max
        self._by_key = {interval_key(i): i for i in reader.intervals}

    async def series(self, new: list[Topic], old: list[Topic]) -> list[tuple[str, Interval]]:
        """Series the new topics match and the old ones did not (no topic: none matched)."""
        exact = all(t.interval is not None and "*" not in t.symbol for t in new)
        if exact:
            found = [
                (t.symbol, self._by_key[t.interval])
                for t in new
                if t.interval is not None and t.interval in self._by_key
            ]
        else:
            found = [
                (symbol, interval)
                for symbol, interval in await self.reader.series()
                if any(t.matches((interval_key(interval), symbol)) for t in new)
            ]
        return [
            (symbol, interval)
            for symbol, interval in dict.fromkeys(found)
            if not any(t.matches((interval_key(interval), symbol)) for t in old)
        ]

    def limit(self, series: int, last: int | None) -> int:
        """Candles to read per series: `last`, or all the store can hold; with an archive at
        most MAX_HISTORY, and a share of ARCHIVE_BUDGET (never less than the store holds)."""
        if self.reader.archive is None:
            return last if last is not None else self._depth_max
        cap = max(self._depth_max, min(MAX_HISTORY, ARCHIVE_BUDGET // max(series, 1)))
        return cap if last is None else min(last, cap)

    async def load(
        self, series: list[tuple[str, Interval]], since: int | None, last: int | None
    ) -> Loaded:
        """The series' history (each series oldest first), and the seam record."""
        seam = Seam()
        out: list[bytes] = []
        read: list[tuple[SeriesKey, int, list[bytes]]] = []
        limit = self.limit(len(series), last)
        # Before the store: a deadline's candles not stored yet are in the stream from the mark.
        marks = await self._unstored_marks(sorted({shard_of(s, self._shards) for s, _ in series}))
        incomplete = full = 0
        for at in range(0, len(series), READS_IN_FLIGHT):
            chunk = series[at : at + READS_IN_FLIGHT]
            pages = await asyncio.gather(
                *(
                    self.reader.read(symbol, interval, since, None, limit)
                    for symbol, interval in chunk
                )
            )
            for (symbol, interval), page in zip(chunk, pages, strict=True):
                key = (interval_key(interval), symbol)
                raws = self.reader.candles_of(symbol, interval, page.entries)
                read.append((key, shard_of(symbol, self._shards), raws))
                incomplete += page.missing_before is not None
                full += len(raws) == limit
        heads: dict[int, EntryId] = {}
        for shard in sorted({shard for _, shard, _ in read}):
            heads[shard] = await self._head(shard)  # after every store read of this shard
        unstored = await self._unstored(marks, heads)
        for key, shard, stored in read:
            raws = stored
            if key in unstored:
                raws = _with_unstored(stored, unstored[key], since, limit)
            seam.add(key, shard, heads[shard], raws)
            out.extend(raws)
        capped = limit if full and (last is None or limit < last) else None
        return Loaded(out, seam, incomplete, capped)

    async def _unstored_marks(self, shards: list[int]) -> dict[int, bytes]:
        """Per shard, the candle stream id from which candles are not stored yet, if any."""
        marks: dict[int, bytes] = {}
        for shard in shards:
            mark: Any = await self._redis.hget(self._keys.state(shard), UNSTORED)
            if mark is not None:
                marks[shard] = mark
        return marks

    async def _unstored(
        self, marks: dict[int, bytes], heads: dict[int, EntryId]
    ) -> dict[SeriesKey, list[bytes]]:
        """The candles of the streams from each mark to the head read, by series."""
        out: dict[SeriesKey, list[bytes]] = {}
        for shard, mark in marks.items():
            head = heads.get(shard)
            if head is None:
                continue
            stream, until = self._keys.klines(shard), f"{head[0]}-{head[1]}"
            for raw in await unstored_candles(self._redis, stream, mark, until):
                out.setdefault(_revisioned.decode(raw).key, []).append(raw)
        return out

    async def _head(self, shard: int) -> EntryId:
        last: Any = await self._redis.xrevrange(self._keys.klines(shard), count=1)
        return entry_id(last[0][0]) if last else (0, 0)


def _with_unstored(
    raws: list[bytes], unstored: list[bytes], since: int | None, limit: int
) -> list[bytes]:
    """A series' history (oldest first) with the candles of the stream that were not stored yet
    when it was read: each open time's highest rank (the stream's on a tie), at or after
    `since`, the newest `limit`."""
    by_time: dict[int, tuple[int, bytes]] = {}
    for raw in raws:
        fields = _revisioned.decode(raw)
        by_time[fields.timestamp] = (fields.rank, raw)
    for raw in unstored:
        fields = _revisioned.decode(raw)
        held = by_time.get(fields.timestamp)
        if since is not None and fields.timestamp < since:
            continue
        if held is None or held[0] <= fields.rank:
            by_time[fields.timestamp] = (fields.rank, raw)
    return [raw for _, (_, raw) in sorted(by_time.items())][-limit:]


class Loaded(NamedTuple):
    """A resume's history: the candles, series by series, and the seam record."""

    raws: list[bytes]
    seam: Seam
    incomplete: int = 0
    """Series whose older candles the archive could not give (it is unreachable)."""
    capped: int | None = None
    """The candles per series read, when some series had that many (older ones not sent)."""

    def reply(self, series: int) -> str:
        """The subscribe reply's `ret_msg`."""
        what = f"subscribed; {len(self.raws)} candles of {series} series first"
        if self.capped is not None:
            what += f"; at most the newest {self.capped} of each series"
        if self.incomplete:
            what += (
                f"; older candles of {self.incomplete} series unavailable "
                "(the archive, PostgreSQL, is unreachable)"
            )
        return what


Offer = tuple[list[bytes], list[SeriesKey], dict[int, bytes], bool]
"""Live candles for one client: raws, their series, the batch's last ids, and updates or not."""


class Resumption:
    """One client's resume: its live candles held back while its history is read, then the
    seam filter until the live feed has passed the history."""

    __slots__ = ("_held", "_limit", "pending", "seam")

    def __init__(self, limit: int) -> None:
        self.pending: list[Offer] | None = []
        self.seam = Seam()
        self._held = 0
        self._limit = limit

    @property
    def done(self) -> bool:
        return self.pending is None and not self.seam

    def offer(self, offer: Offer) -> list[bytes] | None:
        """What to send of these live candles now; None when more are held back than allowed
        (the client is too slow to take its history)."""
        if self.pending is not None:
            self.pending.append(offer)
            self._held += len(offer[0])
            return None if self._held > self._limit else []
        return self._filter(offer)

    def finish(self, seam: Seam, wants: Callable[[SeriesKey], bool]) -> list[bytes]:
        """The history was sent: the held-back candles the client still wants, past the seam."""
        self.seam.merge(seam)
        pending, self.pending = self.pending or [], None
        out: list[bytes] = []
        for raws, keys, last_ids, updates in pending:
            picked = [raw for raw, key in zip(raws, keys, strict=True) if wants(key)]
            out.extend(self._filter((picked, [], last_ids, updates)))
        return out

    def _filter(self, offer: Offer) -> list[bytes]:
        raws, _, last_ids, updates = offer
        seam = self.seam
        if not seam:
            return raws
        kept = [raw for raw in raws if (seam.keep_update(raw) if updates else seam.keep(raw))]
        if not updates:
            seam.passed(last_ids)
        return kept
