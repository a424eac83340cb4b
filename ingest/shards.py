"""What ingest does per owned shard: subscribe its symbols, and account for unowned time.

On acquisition the tail of the shard's stream tells when the previous owner last wrote (trade,
clock or gap entry) and which trade ids it already wrote (seeding the dedup, so a takeover does
not write a trade twice). Once this process's subscriptions for the shard are acked, a gap entry
covers [previous owner's last entry, now], and only then do clock entries for the shard start:
the aggregator never sees time pass over the unowned window before it knows about it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.backoff import backoff
from common.keys import Keys
from common.lifecycle import TaskSet
from common.rediserrors import REDIS_FAILED
from common.sharding import shard_of
from common.wire import ClockEntry, GapEntry, TradesEntry, entry_decoder, entry_id
from ingest import metrics
from ingest.bybit.messages import TradeMessage
from ingest.dedup import Deduper
from ingest.pool import OpenPool
from ingest.repair import OpenRepairer, open_repairs
from ingest.standby import Standby
from ingest.writer import Item, OpenWriter, now_ms

log = logging.getLogger(__name__)

TAIL_ENTRIES = 2000
MAX_LAG_MS = 5000
LAG_WINDOW_MS = 2000
SUBSCRIBE_TIMEOUT_S = 30.0
STANDBY_READY_LIMIT_S = 15.0
SEED_MARGIN_MS = 5000  # receive clocks of two replicas, and write delays, differ by less
SEED_BATCH = 5000
PREFER_SLACK_MS = 100


async def read_tail(
    redis: aioredis.Redis, stream: str, count: int = TAIL_ENTRIES
) -> tuple[int, dict[str, list[str]]]:
    """(gap start in ms or 0, trade ids per symbol) from the last entries of a stream.

    The start is the newest entry's time (its receive or clock time) minus the longest
    exchange-to-ingest delay among the trades entries received in the LAG_WINDOW_MS before
    the newest: a trade the previous owner received but had not yet written may carry a trade
    time that much earlier. Not the newest entry's delay alone: the trades of one exchange
    message, and of the messages sent together with it, span up to the exchange's batching
    time, so an unwritten message can hold a trade older than the newest written one's first
    (a kill -9 then lost it outside the gap, unflagged).

    A failed read raises (`RedisError`): taken for a new stream, the takeover wrote no unowned
    gap and its duplicate filter knew none of the trades written.
    """
    last_ms = 0
    ids: dict[str, list[str]] = {}
    delays: list[tuple[int, int]] = []  # (received, its oldest trade's delay) per trades entry
    rows = await redis.xrevrange(stream, count=count) or []
    for _, fields in reversed(rows):
        raw = fields.get(b"data") if fields else None
        if raw is None:
            continue
        entry = entry_decoder.decode(raw)
        if isinstance(entry, TradesEntry):
            ids.setdefault(entry.symbol, []).extend(t.trade_id for t in entry.trades)
            last_ms = max(last_ms, entry.received_ms)
            if entry.trades:
                delays.append((entry.received_ms, entry.received_ms - entry.trades[0].time_ms))
        elif isinstance(entry, ClockEntry):
            last_ms = max(last_ms, entry.time_ms)
        elif isinstance(entry, GapEntry):
            last_ms = max(last_ms, entry.to_ms)
    if last_ms and delays:
        newest = max(received for received, _ in delays)
        lag_ms = max(delay for received, delay in delays if received >= newest - LAG_WINDOW_MS)
        last_ms -= min(max(lag_ms, 0), MAX_LAG_MS)
    return last_ms, ids


class IngestShards:
    """The `ShardWorkers` of ingest, the trade/gap callbacks of the pool, and the hooks of the
    writer and the repairer, which they open: the writer asks them about refused writes and
    tells them what it drops and which gaps it queues (repaired when `open_repairer` is given);
    the repairer writes through the writer."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        shards: int,
        tasks: TaskSet,
        drain_timeout_s: float,
        *,
        open_writer: OpenWriter,
        open_pool: OpenPool,
        open_repairer: OpenRepairer | None = None,
        repair_lookback_ms: int = 0,
        symbols: Iterable[str] = (),
        standby: Standby | None = None,
        cold_claim_after_ms: int = 3000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._shards = shards
        self._tasks = tasks
        self._drain_timeout_s = drain_timeout_s
        self.dedup = Deduper()
        self.symbols = sorted(symbols)
        self.owned: set[int] = set()
        self._shard_of: dict[str, int] = {}  # symbols of owned shards only
        self._orphaned: dict[int, float] = {}  # shard -> monotonic time Redis answered again
        self._orphaned_at_ms: dict[int, int] = {}  # shard -> when this replica lost Redis
        self.orphan_grace_s = 10.0
        self.standby = standby
        self._created = time.monotonic()
        self._cold_claim_after_ms = cold_claim_after_ms
        self._watched: dict[str, int] = {}  # symbols of shards kept on standby
        self._handed_over: dict[int, tuple[int, int]] = {}  # shard -> newest entry id then
        # how far back a taken shard's unrepaired gaps are looked for
        self.repair_lookback_ms = repair_lookback_ms
        self.activity: dict[str, int] = {}  # trades received per symbol (repairs: busiest first)
        self.writer = open_writer(
            lease_lost=self.lease_lost, on_gap=self._repair, on_dropped=self._unwritten
        )
        self.repairer = (
            open_repairer(
                self.writer,
                self.dedup,
                owns=self.owned.__contains__,
                rank=lambda symbol: self.activity.get(symbol, 0),
            )
            if open_repairer is not None
            else None
        )
        self.pool = open_pool(on_trades=self.on_trades, on_gap=self.on_gap)

    def _symbols_of(self, shard: int) -> list[str]:
        return [s for s in self.symbols if shard_of(s, self._shards) == shard]

    # -- ShardWorkers ------------------------------------------------------------------------------

    async def start_shard(self, shard: int) -> None:
        """Serve the shard: after a Redis outage (kept or not), from standby (warm) or cold.
        Its reads of the stream come before anything changes: one that fails raises, and the
        claimer lets the lease go and claims the shard again (common.leases)."""
        if shard in self._orphaned:
            another = await self._written_by_another(shard)
            self._orphaned.pop(shard, None)
            self._orphaned_at_ms.pop(shard, None)
            if not another:
                # Kept through a Redis outage and got back: what was buffered goes out in
                # order, so there is no unowned window to report.
                self.writer.ready.add(shard)
                log.info(
                    "shard %d: lease back after the Redis outage, buffered trades follow", shard
                )
                return
            # Another replica served the shard after the outage (from its standby, or with a
            # gap entry): our buffer would write its trades twice. Disowned until it is taken
            # up below, from the stream (what arrives meanwhile falls inside its unowned gap).
            dropped = self.writer.discard(shard)
            self._disown(shard)
            if self.repairer is not None:
                self.repairer.forget(shard)
            log.warning("shard %d: served by another replica meanwhile; %d buffered entries "
                        "dropped", shard, dropped)  # fmt: skip
        last_ms, ids = await read_tail(self._redis, self._keys.trades(shard))
        for symbol, trade_ids in ids.items():
            self.dedup.seed(symbol, trade_ids)  # written trades: a retry seeds them again
        oldest_ms = self.standby.oldest_ms(shard) if self.standby is not None else None
        if oldest_ms is not None:
            # The ids the previous owner wrote over the buffer's whole span go into the
            # duplicate filter first, while the shard is still watched: what arrives meanwhile
            # joins the buffer, behind its older messages. From the take to the last buffered
            # message queued nothing awaits, so a symbol's trades reach the stream in order.
            await self._seed_since(shard, oldest_ms - SEED_MARGIN_MS)
        self._handed_over.pop(shard, None)
        symbols = self._symbols_of(shard)
        # First in line, before any trade of ours: the series of symbols no longer in this
        # shard (the shard count or the symbol list changed) end here for the aggregator.
        self.writer.put_symbols(shard, symbols)
        acked = self.standby is not None and shard in self.standby.watched()
        buffered = self.standby.take(shard, last_ms) if self.standby is not None else None
        for symbol in symbols:
            self._watched.pop(symbol, None)
        self.own(shard, symbols)
        if self.repairer is not None:
            self._tasks.spawn(self._take_up_repairs(shard, now_ms()), name=f"repairs-{shard}")
        if buffered is not None:
            # A hot takeover: what the previous owner may not have written is in our buffer,
            # except what our own connections missed too (reported as such).
            messages, missed = buffered
            for missed_symbols, missed_from, missed_to in missed:
                self.writer.put_gap(shard, missed_symbols, missed_from, missed_to, "reconnect")
            for received_ms, message in messages:
                self.on_trades(message, received_ms)
            if acked:
                self.writer.ready.add(shard)
                await self.pool.add(symbols)  # listings added since we began watching
                log.info(
                    "shard %d: taken over from standby (%d buffered messages, %d own reconnects)",
                    shard,
                    len(messages),
                    len(missed),
                )
                return
            # A new stream (Standby.take) taken while our subscriptions are still unacked, as
            # when two replicas start together: what we hold is written, but the clock entries
            # ("everything received is in the stream") wait for the acks, as a cold start's do.
            # Served at once, the stream claimed the trades sent before them, which only the
            # other replica had received.
            log.info("shard %d: taken while subscribing (%d buffered messages)", shard,
                     len(messages))  # fmt: skip
        await self.pool.add(symbols)
        self._tasks.spawn(self._open_shard(shard, symbols, last_ms), name=f"open-shard-{shard}")

    async def _take_up_repairs(self, shard: int, taken_ms: int) -> None:
        """Gaps the shard's previous owner (or this process before a restart) wrote but did
        not finish repairing: repaired from here (the gaps queued from now on ask by
        themselves)."""
        assert self.repairer is not None
        since_ms = taken_ms - self.repair_lookback_ms
        for delay in backoff(base_s=0.2, cap_s=5.0):
            try:
                gaps = await open_repairs(self._redis, self._keys.trades(shard), since_ms, taken_ms)
                break
            except (RedisError, OSError) as exc:  # Redis coming back (a taken shard is soon)
                log.warning("shard %d: looking for unrepaired gaps failed: %r", shard, exc)
            await asyncio.sleep(delay)
            if shard not in self.owned:
                return
        mine = set(self._symbols_of(shard))
        for symbols, from_ms, to_ms in gaps:
            served = [s for s in symbols if s in mine]
            if served and shard in self.owned:
                self.repairer.request(shard, served, from_ms, to_ms)
        if gaps:
            log.info("shard %d: taking up the repair of %d gaps left unrepaired", shard, len(gaps))

    async def _written_by_another(self, shard: int) -> bool:
        """Whether the shard's stream has entries newer than this replica's outage began."""
        since_ms = self._orphaned_at_ms.get(shard, 0)
        newest: Any = await self._redis.xrevrange(self._keys.trades(shard), count=1)
        return bool(newest) and int(newest[0][0].split(b"-")[0]) > since_ms

    async def _seed_since(self, shard: int, since_ms: int) -> None:
        start = f"{max(0, since_ms)}-0"
        stream = self._keys.trades(shard)
        while True:
            rows: Any = await self._redis.xrange(stream, min=start, max="+", count=SEED_BATCH)
            for _, fields in rows:
                entry = entry_decoder.decode(fields[b"data"])
                if isinstance(entry, TradesEntry):
                    self.dedup.seed(entry.symbol, [t.trade_id for t in entry.trades])
            if len(rows) < SEED_BATCH:
                return
            start = "(" + rows[-1][0].decode()

    def _disown(self, shard: int) -> None:
        self.owned.discard(shard)
        self.writer.ready.discard(shard)
        for symbol in self._symbols_of(shard):
            self._shard_of.pop(symbol, None)

    def own(self, shard: int, symbols: list[str]) -> None:
        """From now on, trades of `symbols` are written to `shard`."""
        self.owned.add(shard)
        for symbol in symbols:
            self._shard_of[symbol] = shard

    async def _open_shard(self, shard: int, symbols: list[str], last_ms: int) -> None:
        if not await self.pool.wait_subscribed(symbols, SUBSCRIBE_TIMEOUT_S):
            log.warning(
                "shard %d: subscriptions not acked within %.0fs", shard, SUBSCRIBE_TIMEOUT_S
            )
        if shard not in self.owned:
            return
        if last_ms and symbols:
            self.writer.put_gap(shard, symbols, last_ms, now_ms(), "unowned")
        self.writer.ready.add(shard)
        log.info("shard %d: serving %d symbols", shard, len(symbols))

    async def stop_shard(self, shard: int, *, graceful: bool) -> None:
        if not graceful and shard in self.owned and not await self._redis_answers():
            # The lease could not be renewed because Redis is down: while it is down nobody can
            # take the shard, so go on receiving into the buffer; the fence decides once it is
            # back (`lease_lost`).
            self._orphaned[shard] = 0.0
            self._orphaned_at_ms[shard] = now_ms()  # we cannot have written after this
            self.writer.ready.discard(shard)
            log.warning("shard %d: Redis down past the lease time; buffering meanwhile", shard)
            return
        self._orphaned.pop(shard, None)
        self.writer.ready.discard(shard)
        self.owned.discard(shard)
        if self.repairer is not None:
            self.repairer.forget(shard)
        symbols = self._symbols_of(shard)
        if graceful:
            # A connection of ours still down would report its window after the hand-back, when
            # it is no longer ours to write, and the next owner starts after our last entry.
            # Report it now, up to the hand-back, while the lease is still ours.
            for missed, since_ms in self.pool.open_gaps(symbols):
                self.writer.put_gap(shard, missed, since_ms, now_ms(), "reconnect")
        if self.standby is not None:
            # Stay subscribed: from now on this replica keeps the shard's trades on standby.
            for symbol in symbols:
                self._shard_of.pop(symbol, None)
                self._watched[symbol] = shard
            self.standby.watch(shard, now_ms())
            log.info("shard %d: on standby (%d symbols, still subscribed)", shard, len(symbols))
            if graceful and await self.writer.drained(self._drain_timeout_s):
                # What we received before the hand-back is in the stream, written by us, and
                # what comes after is in the buffer: we hold the shard's whole window, and a
                # takeover is warm however soon the next owner dies. Covered from the hand-back
                # only, a next owner whose last write came within PREFER_SLACK_MS of it (killed
                # 140 ms after a rebalance) was taken over cold: an unowned gap, repaired only as
                # far back as Bybit's recent trades reach.
                self.standby.watch(shard, now_ms() - self.standby.window_ms)
                self._handed_over[shard] = await self._newest_id(shard) or (0, 0)
            self.dedup.forget(symbols)
            return
        if graceful:
            # Handing over: the trades Bybit sends until it acks the unsubscribe are still
            # ours to write (the lease is held until this returns); the next owner's gap
            # starts after them.
            await self.pool.remove(symbols)
        for symbol in symbols:
            self._shard_of.pop(symbol, None)
        if not graceful:
            await self.pool.remove(symbols)
        if graceful:
            await self.writer.drained(self._drain_timeout_s)
        self.dedup.forget(symbols)

    # -- hot standby ---------------------------------------------------------------------------

    async def prefer(self, shard: int) -> bool:
        """Claim a free shard only if we would take it over warm, or nobody else has for a
        while (then cold, with an unowned gap, is better than not at all)."""
        if self.standby is None or shard in self._orphaned:
            return True
        newest_ms = await self._newest_ms(shard)
        if newest_ms is None or self.standby.covers(shard, newest_ms - PREFER_SLACK_MS):
            return True
        return now_ms() - newest_ms > self._cold_claim_after_ms

    async def warm(self, shard: int) -> bool:
        """Whether the shard is free and we hold its trades since its owner's last write. Not a
        shard we handed over that nobody wrote to since: it is on its way to the replica we
        handed it to (we would take it back at once, again and again)."""
        if self.standby is None or await self._redis.exists(self._keys.lease("ingest", shard)):
            return False
        newest = await self._newest_id(shard)
        if newest is None or newest <= self._handed_over.get(shard, (-1, 0)):
            return False
        return self.standby.covers(shard, newest[0] - PREFER_SLACK_MS)

    async def _newest_ms(self, shard: int) -> int | None:
        newest = await self._newest_id(shard)
        return newest[0] if newest else None

    async def _newest_id(self, shard: int) -> tuple[int, int] | None:
        newest: Any = await self._redis.xrevrange(self._keys.trades(shard), count=1)
        return entry_id(newest[0][0]) if newest else None

    def standby_ready(self) -> bool:
        """Whether every shard is owned or on standby (acked), or the wait has been long enough.

        Until then this replica does not count as a member, so nobody hands it a shard that it
        would have to start serving cold (losing the trades sent before its subscription)."""
        if self.standby is None or time.monotonic() - self._created > STANDBY_READY_LIMIT_S:
            return True
        watched = self.standby.watched()
        return all(k in self.owned or k in watched for k in range(self._shards))

    async def watch_unowned(self) -> None:
        """Standby for every shard not owned: subscribe its symbols and keep their trades."""
        watching = set(self._watched.values())
        for shard in range(self._shards):
            if shard not in self.owned and shard not in watching:
                await self._watch(shard)

    async def _watch(self, shard: int) -> None:
        assert self.standby is not None
        symbols = self._symbols_of(shard)
        for symbol in symbols:
            self._watched[symbol] = shard
        self.standby.begin(shard)
        await self.pool.add(symbols)
        self._tasks.spawn(self._watch_when_acked(shard, symbols), name=f"standby-{shard}")

    async def _watch_when_acked(self, shard: int, symbols: list[str]) -> None:
        assert self.standby is not None
        if (
            await self.pool.wait_subscribed(symbols, SUBSCRIBE_TIMEOUT_S)
            and shard not in self.owned
        ):
            self.standby.watch(shard, now_ms())
            log.info("shard %d: on standby (%d symbols)", shard, len(symbols))

    async def _redis_answers(self) -> bool:
        try:
            await asyncio.wait_for(self._redis.ping(), 1.0)
        except REDIS_FAILED:  # TimeoutError (wait_for's) is an OSError
            return False
        return True

    async def lease_lost(self, shard: int) -> bool:
        """The fence refused a write: drop it (True) unless the shard is orphaned and free.

        An orphaned shard's lease is free for a moment after Redis comes back, until the
        claimer takes it again: keep its entries then. Taken by another replica, or not taken
        back within `orphan_grace_s`: drop them and stop serving the shard.
        """
        if shard not in self._orphaned:
            return True
        holder = await self._redis.get(self._keys.lease("ingest", shard))
        if shard not in self._orphaned:  # settled while we asked: ours again, or dropped
            return shard not in self.owned
        now = time.monotonic()
        since = self._orphaned[shard] or now
        self._orphaned[shard] = since
        if holder is None and now - since < self.orphan_grace_s:
            return False
        log.warning("shard %d: taken over during the Redis outage; dropping its buffer", shard)
        self._tasks.spawn(self.stop_shard(shard, graceful=False), name=f"drop-shard-{shard}")
        return True

    # -- symbol list changes -----------------------------------------------------------------------

    async def set_symbols(self, symbols: list[str]) -> None:
        """Follow a refreshed symbol list: subscribe listings, unsubscribe delistings."""
        old, new = set(self.symbols), set(symbols)
        before = {shard: self._symbols_of(shard) for shard in sorted(self.owned)}
        self.symbols = sorted(new)
        added = sorted(s for s in new - old if shard_of(s, self._shards) in self.owned)
        removed = sorted(old - new)
        if added or removed:
            log.info("symbols changed: +%d -%d", len(added), len(removed))
        for symbol in removed:
            self._shard_of.pop(symbol, None)
        for symbol in added:
            self._shard_of[symbol] = shard_of(symbol, self._shards)
        await self.pool.remove(removed)
        await self.pool.add(added)
        self.dedup.forget(removed)
        for shard, listed in before.items():
            now_listed = self._symbols_of(shard)
            if now_listed != listed:
                self.writer.put_symbols(shard, now_listed)

    def _repair(self, shard: int, symbols: list[str], from_ms: int, to_ms: int) -> None:
        """Every gap entry the writer queues is repaired, when repair is on."""
        if self.repairer is not None:
            self.repairer.request(shard, symbols, from_ms, to_ms)

    def _unwritten(self, items: list[Item]) -> None:
        """Trades dropped before they were written are no longer "seen": a gap repair, which
        trusts the duplicate filter for what is queued, may write them."""
        for item in items:
            if item.trades:
                entry = entry_decoder.decode(item.payload)
                if isinstance(entry, TradesEntry):
                    self.dedup.unsee(entry.symbol, [t.trade_id for t in entry.trades])

    # -- pool callbacks (hot path) -----------------------------------------------------------------

    def on_trades(self, message: TradeMessage, received_ms: int) -> None:
        shard = self._shard_of.get(message.symbol)
        if shard is None:
            watched = self._watched.get(message.symbol)
            if watched is not None and self.standby is not None:
                self.standby.keep(watched, message, received_ms)
            return  # or: in flight after an unsubscribe, or a shard just lost
        activity = self.activity
        activity[message.symbol] = activity.get(message.symbol, 0) + len(message.trades)
        trades = self.dedup.fresh(message.symbol, message.trades)
        if len(trades) != len(message.trades):
            metrics.DUPLICATES.inc(len(message.trades) - len(trades))
            if not trades:
                return
        self.writer.put_trades(shard, message.symbol, trades, message.exchange_ms, received_ms)

    def on_gap(self, symbols: list[str], from_ms: int, to_ms: int) -> None:
        by_shard: dict[int, list[str]] = {}
        watched: dict[int, list[str]] = {}
        for symbol in symbols:
            shard = self._shard_of.get(symbol)
            if shard is not None:
                by_shard.setdefault(shard, []).append(symbol)
            elif symbol in self._watched:
                watched.setdefault(self._watched[symbol], []).append(symbol)
        if self.standby is not None:
            for shard, mine in watched.items():
                self.standby.missed(shard, mine, from_ms, to_ms)
        for shard, mine in sorted(by_shard.items()):
            self.writer.put_gap(shard, mine, from_ms, to_ms, "reconnect")
