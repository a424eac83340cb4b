"""Reads the history store (common/history.py): a series' closed candles, latest revision each,
and, with an archive (the PostgreSQL table of the `postgres` consumer), the older ones too.

The store is written with the candle stream in one script, so whatever the candle stream holds
up to its head is here too (up to STREAMER_HISTORY_CANDLES per series, or more until the next
trim), but for a waiter deadline's candles in the few ms before they are stored (common/history.py:
the HTTP routes answer without them until then; the WebSocket resume takes them from the stream).
Used by the HTTP routes (publish/routes.py) and the WebSocket resume.

Store and archive, one answer. The store holds a series' newest candles without a hole: its
newest `depth` members (depth = STREAMER_HISTORY_CANDLES) are every candle from the oldest of
them (the *floor*) to the head. Below the floor it may hold a few more until the next trim, among
them a revision written after its candle was trimmed (an orphan: the candles next to it are
gone). So the store answers alone for open times at or above the floor, and for a range that
reaches below it the archive is read from the range's start to the floor, exclusive. The two are
merged by open time, the higher revision winning (the store on a tie: its bytes are the
stream's), so nothing is doubled at the seam and an orphan never hides the archive's rows next to
it. The archive is written downstream of the store (it never holds a newer revision of a candle
the store holds), and the floor is read after the range, so a trim between the reads only moves
the seam up: the archive is then asked for more, never for less. If the archive cannot be read,
the store's part from the floor on is the answer and `Page.missing_before` says where it starts.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import msgspec

from common.errors import ConfigError, StreamerError
from common.history import SeriesHead, member_rank
from common.intervals import Interval
from common.keys import Keys
from common.logs import RateLimitedLog
from common.redisconn import AnyRedis
from common.sharding import shard_of

if TYPE_CHECKING:
    from common.settings import PublishSettings

limited = RateLimitedLog(logging.getLogger(__name__), 60.0)

Entry = tuple[int, bytes]
"""(open time ms, stored member): the member is the candle JSON from `"timestamp":` on."""


class Prices(msgspec.Struct, gc=False):
    """The price and size fields of a stored member, as their exact JSON number texts."""

    open: msgspec.Raw
    high: msgspec.Raw
    low: msgspec.Raw
    close: msgspec.Raw
    volume: msgspec.Raw
    turnover: msgspec.Raw


_prices = msgspec.json.Decoder(Prices)


def prices(member: bytes) -> Prices:
    """The prices and sizes of a stored member."""
    return _prices.decode(b"{" + member)


class ArchiveUnavailable(StreamerError):
    """The archive could not be read (unreachable, too slow, no table): the store answers alone."""


class Archive(Protocol):
    """Where candles older than the store holds are kept (publish/postgres/archive.py)."""

    async def entries(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        *,
        from_start: bool,
    ) -> list[Entry]:
        """Candles with `start_ms <= open time <= end_ms` (None: unbounded), oldest first: the
        newest `limit` of them, or with `from_start` the oldest. Raises ArchiveUnavailable."""
        ...

    async def aclose(self) -> None: ...


def archive_of(settings: PublishSettings) -> Archive | None:
    """The `postgres` consumer's table as the archive, when STREAMER_POSTGRES_DSN names one
    (whether or not this process runs that consumer). ValueError: its driver is missing."""
    if not settings.postgres_dsn:
        return None
    try:
        from publish.postgres.history import PostgresArchive
        from publish.postgres.schema import Tables
    except ImportError as exc:
        raise ValueError(
            f"{exc}: STREAMER_POSTGRES_DSN is set, so history reads the PostgreSQL table; "
            "install the driver: pip install 'bybit-klines-pipeline[postgres]'"
        ) from None
    return PostgresArchive(
        settings.postgres_dsn, Tables.parse(settings.postgres_table),
        settings.bybit_category.value, connect_timeout_s=settings.postgres_connect_timeout_s,
    )  # fmt: skip


class Page(NamedTuple):
    """A range of a series, oldest first."""

    entries: list[Entry]
    missing_before: int | None = None
    """Set when the archive could not be read: `entries` are then the range's candles with an
    open time at or above this (ms), all of them; older ones of the range are left out."""


class HistoryReader:
    """The store of the configured series of one deployment (prefix, shard count, intervals),
    and its archive when there is one. `depth` is STREAMER_HISTORY_CANDLES, the store's depth."""

    def __init__(
        self,
        redis: AnyRedis,
        keys: Keys,
        intervals: Iterable[Interval],
        shards: int,
        *,
        archive: Archive | None = None,
        depth: int = 1000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self.intervals = tuple(intervals)
        self._shards = shards
        self.archive = archive
        self._depth = depth
        self._by_label = {i.label: i for i in self.intervals}
        self._by_length = {(i.calendar, i.ms): i for i in self.intervals}
        self._heads: dict[tuple[str, Interval], SeriesHead] = {}

    async def aclose(self) -> None:
        """Closes the Redis client it was given, and the archive."""
        await self._redis.aclose()
        if self.archive is not None:
            await self.archive.aclose()

    def interval(self, text: str) -> Interval | None:
        """The configured interval a Bybit code (`1`, `60`, `D`) or a label (`1s`, `7m`, `60s`)
        names; None when it names none of them."""
        try:
            wanted = Interval.from_bybit_code(text)
        except ConfigError:
            try:
                wanted = Interval.parse(text)
            except ConfigError:
                return None
        return self._by_length.get((wanted.calendar, wanted.ms))

    def key(self, symbol: str, interval: Interval) -> str:
        return self._keys.history(shard_of(symbol, self._shards), interval.label, symbol)

    async def read(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        *,
        from_start: bool = False,
    ) -> Page:
        """Candles with `start_ms <= open time <= end_ms` (None: unbounded), at most `limit`:
        the newest of the range (as Bybit picks them), or with `from_start` the oldest (to page
        forward); oldest first. From the store, and from the archive below its floor."""
        key = self.key(symbol, interval)
        stored, floor = await self._stored(key, start_ms, end_ms, limit, from_start)
        if self.archive is None:
            return Page(stored)
        needed, top = _archive_part(stored, floor, start_ms, end_ms, limit, from_start)
        if not needed:
            return Page(stored)
        try:
            older = await self.archive.entries(
                symbol, interval, start_ms, top, limit, from_start=from_start
            )
        except ArchiveUnavailable as exc:
            limited.warning(
                "archive", "history: older candles unavailable, answering from the Redis store "
                "only: %s", exc,
            )  # fmt: skip
            # The store's members below the floor are left out too: the answer is then the
            # range's candles from `missing_before` on, without a hole.
            missing_before = int(time.time() * 1000) if top is None else top + 1
            if from_start:  # the first `limit` from there
                stored, _ = await self._stored(key, missing_before, end_ms, limit, True)
            return Page([e for e in stored if e[0] >= missing_before], missing_before)
        return Page(_merge(stored, older, limit, from_start))

    async def _stored(
        self, key: str, start_ms: int | None, end_ms: int | None, limit: int, from_start: bool
    ) -> tuple[list[Entry], int | None]:
        """The store's part, oldest first, and its floor (None: it holds nothing), read after."""
        low = "-inf" if start_ms is None else start_ms
        high = "+inf" if end_ms is None else end_ms
        floor: int | None = None
        replies: list[Any]
        if self.archive is None:  # one command: the common case stays one round trip, no more
            replies = [await self._range(self._redis, key, low, high, limit, from_start)]
        else:
            async with self._redis.pipeline(transaction=False) as pipe:
                self._range(pipe, key, low, high, limit, from_start)
                pipe.zrange(key, -self._depth, -self._depth)  # empty below `depth` members
                pipe.zrange(key, 0, 0)
                replies = await pipe.execute()
            lowest = replies[1] or replies[2]
            floor = _open_ms(lowest[0]) if lowest else None
        # The open time is in the member (`"timestamp":<ms>,...`): no WITHSCORES, whose float
        # conversion in redis-py costs more than the rest of a read.
        entries = _latest_revisions([(_open_ms(m), m) for m in replies[0]])
        if not from_start:
            entries.reverse()
        return entries, floor

    @staticmethod
    def _range(
        client: Any, key: str, low: int | str, high: int | str, limit: int, from_start: bool
    ) -> Any:
        """ZRANGE of the range's oldest or newest `limit` (on a client or into a pipeline)."""
        if from_start:
            return client.zrange(key, low, high, byscore=True, offset=0, num=limit)
        return client.zrange(key, high, low, desc=True, byscore=True, offset=0, num=limit)

    async def entries(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        *,
        newest_first: bool = False,
        from_start: bool = False,
    ) -> list[Entry]:
        """As `read`, its entries only, and newest first with `newest_first`."""
        page = await self.read(symbol, interval, start_ms, end_ms, limit, from_start=from_start)
        return page.entries[::-1] if newest_first else page.entries

    def candles_of(self, symbol: str, interval: Interval, entries: list[Entry]) -> list[bytes]:
        """Each entry as the candle JSON of docs/formats.md "The candle", byte for byte as the
        candle stream holds it."""
        head = self._heads.get((symbol, interval))
        if head is None:
            head = self._heads[(symbol, interval)] = SeriesHead(symbol, interval)
        return [head.candle(member) for _, member in entries]

    async def candles(
        self,
        symbol: str,
        interval: Interval,
        start_ms: int | None,
        end_ms: int | None,
        limit: int,
        newest_first: bool = False,
        *,
        from_start: bool = False,
    ) -> list[bytes]:
        """As `entries`, each one the candle JSON (docs/formats.md "The candle"), byte for byte as
        the candle stream holds it."""
        entries = await self.entries(
            symbol, interval, start_ms, end_ms, limit,
            newest_first=newest_first, from_start=from_start,
        )  # fmt: skip
        return self.candles_of(symbol, interval, entries)

    async def series(self) -> list[tuple[str, Interval]]:
        """Every (symbol, configured interval) the store holds candles of (one SCAN)."""
        found: set[tuple[str, Interval]] = set()
        async for raw in self._redis.scan_iter(match=self._keys.history_pattern(), count=1000):
            key = raw.decode() if isinstance(raw, bytes) else str(raw)
            label, _, symbol = key.rsplit(":hist:", 1)[1].partition(":")
            interval = self._by_label.get(label)
            if interval is not None and symbol:
                found.add((symbol, interval))
        return sorted(found, key=lambda s: (s[0], s[1]))


def _open_ms(member: bytes) -> int:
    return int(member[12 : member.index(b",", 12)])


def _archive_part(
    stored: list[Entry],
    floor: int | None,
    start_ms: int | None,
    end_ms: int | None,
    limit: int,
    from_start: bool,
) -> tuple[bool, int | None]:
    """Whether the archive must be read, and up to which open time (inclusive; None:
    unbounded). Not when the store's part is the whole answer."""
    if floor is None:  # the store holds nothing of the series
        return True, end_ms
    top = floor - 1 if end_ms is None else min(end_ms, floor - 1)
    if start_ms is not None and top < start_ms:
        return False, None  # the range lies at or above the floor
    if not from_start and len(stored) == limit and stored[0][0] >= floor:
        return False, None  # the newest `limit` are all at or above the floor
    return True, top


def _merge(stored: list[Entry], older: list[Entry], limit: int, from_start: bool) -> list[Entry]:
    """One series from both sides, oldest first: one entry per open time, the higher rank
    (common.history.member_rank: the revision; a backfilled candle below all; the store's on a
    tie), then the oldest or newest `limit` of them."""
    by_time = dict(older)
    for open_ms, member in stored:
        held = by_time.get(open_ms)
        if held is None or member_rank(member) >= member_rank(held):
            by_time[open_ms] = member
    times = sorted(by_time)
    picked = times[:limit] if from_start else times[-limit:]
    return [(open_ms, by_time[open_ms]) for open_ms in picked]


def _latest_revisions(entries: list[Entry]) -> list[Entry]:
    """Two members at one open time (a revision-0 candle written twice after a cold start, or a
    backfilled one and the pipeline's own): keep the higher rank (common.history.member_rank).
    A revision itself replaces its member in the script."""
    if len({open_ms for open_ms, _ in entries}) == len(entries):
        return entries  # the rule: one member per open time
    out: list[Entry] = []
    for entry in entries:
        if out and out[-1][0] == entry[0]:
            if member_rank(entry[1]) >= member_rank(out[-1][1]):
                out[-1] = entry
            continue
        out.append(entry)
    return out
