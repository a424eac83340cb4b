"""One shard's loop: XREAD the trade stream, decode, feed the core, write candles + checkpoint.

Reads with plain XREAD (one owner per shard, no consumer group) and takes redis-py's raw reply (its
XREAD reshaping costs more than the read: measured 1.03 M entries/s with it, 1.72 M without, on
redis-py 8). A step's candles and the checkpoint covering them go out in one fenced Lua script
(aggregate.checkpoint), so a kill -9 at any moment loses nothing and repeats nothing; a process that
lost the lease is refused there and stops the shard. (A waiter deadline's candles are stored in
the history store by a second script a few ms after their write, `_write_ahead`; the state's
`unstored` mark says which until then, and a resume stores them first.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, NamedTuple

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from aggregate import checkpoint, resume
from aggregate.candles import CandleCore, CoreConfig
from aggregate.checkpoint import Checkpoint
from aggregate.feed import EntryFeeder, good_trades
from aggregate.output import CandleWriter
from aggregate.state import CoreCandle
from aggregate.together import DeadlineWrites
from common import history
from common.backoff import backoff
from common.errors import LeaseLostError
from common.history import UNSTORED
from common.keys import Keys
from common.lifecycle import sleep_or_stop
from common.logs import RateLimitedLog
from common.metrics import REGISTRY
from common.rediserrors import ReplyCode, reply_code
from common.wire import ClockEntry, TradesEntry, candle_view_decoder, entry_decoder

log = logging.getLogger(__name__)
rate_limited = RateLimitedLog(log)

TRADES_IN = REGISTRY.counter("aggregate_trades_total", "trades read", ("shard",))
CANDLES_OUT = REGISTRY.counter("aggregate_candles_total", "closed candles written", ("shard",))
REVISIONS = REGISTRY.counter("aggregate_revisions_total", "candles re-emitted", ("shard",))
LATE = REGISTRY.counter("aggregate_late_total", "late trades taken in", ("shard",))
DROPPED = REGISTRY.counter(
    "aggregate_dropped_total", "late trades dropped from a candle at least", ("shard",)
)
DUPLICATES = REGISTRY.counter("aggregate_duplicates_total", "repeated trade ids", ("shard",))
BAD = REGISTRY.counter(
    "aggregate_bad_entries_total", "undecodable stream entries and trades", ("shard",)
)
UNREPAIRABLE = REGISTRY.counter(
    "aggregate_unrepairable_total",
    "trades fetched back for a gap that came too late for a closed candle (repair window)",
    ("shard",),
)
CLEARED = REGISTRY.counter(
    "aggregate_gap_cleared_total",
    "candles written again with gap: false after their gap was completely repaired",
    ("shard",),
)
LAG = REGISTRY.gauge("aggregate_stream_lag_seconds", "wall clock minus stream time", ("shard",))
TRIMMED = REGISTRY.counter(
    "aggregate_trimmed_total",
    "resumes that found unread trade entries trimmed away (their candles are flagged gap)",
    ("shard",),
)

AHEAD_MISMATCH = REGISTRY.counter(
    "aggregate_ahead_mismatch_total",
    "deadline writes sent ahead of the close that the close then contradicted (a bug: stays 0)",
    ("shard",),
)

CLOSE_AFTER_S = 0.006
"""How long the close of a deadline written ahead waits after its write (`_write_ahead`): the
CPU goes first to getting the candles just written to their readers. The close's bookkeeping
takes 0.4-0.6 ms of CPU per shard at 500 symbols; run at once, it took a core from publish at
the moment the boundary's candles were on their way: candle delay p99 − waiter at 5,000 trades/s
on the 2-core machine, one aggregate process, three trials each, 16/19/17 ms at once and 11/11/12
ms after 6 ms (docs/benchmarks.md). Nothing waits for the close but this shard's next entries,
and the boundary after is a whole interval away. Live deadlines only (LIVE_MS)."""
LIVE_MS = 1000
"""A deadline whose clock entry is older than this (wall clock) is not live: a replay or a
catch-up. Its close does not wait (CLOSE_AFTER_S): nobody waits on one boundary then, and a
wait per deadline would cap how fast a shard catches up (a day of 1s candles: 86,400 waits)."""
LAZY_MS = 50
"""How long a live shard that has caught up waits before its next read while no candle of it
can close (`_lazy_s`): from a waiter deadline to the next boundary, nothing it reads closes a
candle (a trade of the next candle closes the previous one early only after its boundary, and
the clock closes it at the deadline), so reading each entry as it comes costs the CPU and buys
nothing. One read per 50 ms takes what came meanwhile in one step: at 5,000 trades/s the
aggregator made ~600 reads a second for four shards on the simulator's 10 ms slots, and on a load
spread like Bybit's (a message per trade time) it took over half a core, mostly per read.
Not with in-progress updates (their snapshots follow stream time closely)."""
HOLD_MS = 20
"""Candles closed early (a trade of the next candle proved them complete) in the last HOLD_MS of
stream time before the shard's next waiter deadline are written with that deadline's candles,
not on their own (`_holding`; at most a quarter of the waiter latency). Each write of its own
wakes every reader of the candle stream (publish, and through it the clients), and at 5,000
trades/s the last of them still ran when the deadline's candles came: candle delay p99 − waiter
in alternating trials on the 2-core machine, 24 / 23 / 40 and 22 / 20 / 25 ms before, 14 / 15 / 16
and 16 / 9 / 19 ms with them held (and `_at_clock`; docs/benchmarks.md, 2026-12-07). A held
candle is delayed by at most this, and only the candles of symbols that traded again late in the
waiter window, whose delay is close to the waiter latency then anyway; a symbol trading right
after the boundary has its candle written at once."""
_CLOCK_PREFIX = b'{"type":"clock"'  # how a clock entry's JSON begins (common.wire)
STEP_RECORD_MS = 100  # at most one (stream time, id) per this much stream time

OnWritten = Callable[[list[CoreCandle], float, int], None]
"""Told after each write: the candles it closed, the wall-clock time (ms) and the stream time
(the delay metric of aggregate.service, and bench.aggregate)."""


def _clock_entry(entry: Any) -> ClockEntry | None:
    """The clock entry a raw [id, [field, value]] stream entry holds, if it is one."""
    fields = entry[1]
    payload = fields[1] if fields and len(fields) == 2 else None
    if not isinstance(payload, bytes) or not payload.startswith(_CLOCK_PREFIX):
        return None
    try:
        decoded = entry_decoder.decode(payload)
    except ValueError:
        return None  # the feeder reports it
    return decoded if isinstance(decoded, ClockEntry) else None


def _last_clock(entries: list[Any]) -> tuple[int, ClockEntry | None]:
    """The last clock entry of a read and its index; (0, None) when it holds none. At 5,000
    trades/s the read that brings a deadline's clock entry often brings trades received after
    it as well (a message a millisecond): the deadline's write goes out ahead all the same."""
    for at in range(len(entries) - 1, -1, -1):
        clock = _clock_entry(entries[at])
        if clock is not None:
            return at, clock
    return 0, None


def _entries(reply: Any) -> list[Any]:
    """[[id, [field, value, ...]], ...] from a raw XREAD reply (RESP3 map or RESP2 list)."""
    if not reply:
        return []
    if isinstance(reply, dict):
        return list(next(iter(reply.values())))
    return reply[0][1]  # type: ignore[no-any-return]


class _Write(NamedTuple):
    args: list[Any]
    keys: list[str]
    closed: list[CoreCandle]
    last_id: str
    now_ms: int
    checkpoint: bool  # the full checkpoint is in it


class ShardAggregator:
    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        shard: int,
        config: CoreConfig,
        category: str,
        token: str,
        batch: int,
        klines_maxlen: int,
        updates_maxlen: int,
        history_candles: int = 1000,
        *,
        shards: int = 0,
        on_written: OnWritten | None = None,
        together: DeadlineWrites | None = None,
    ) -> None:
        self.redis = redis
        self.shards = shards  # STREAMER_SHARDS; 0: unknown (symbols are never migrated away)
        self.keys = keys
        self.shard = shard
        self.config = config
        self.token = token
        self.batch = batch
        self._label = str(shard)
        self._stream = keys.trades(shard)
        self._script_keys = [
            keys.lease("aggregate", shard),
            keys.klines(shard),
            keys.updates(shard),
            keys.state(shard),
        ]
        self._maxlens = (klines_maxlen, updates_maxlen)
        self._history_depth = history_candles
        self._history_keys: dict[tuple[str, int], str] = {}
        self._writer = CandleWriter(config.intervals, category)
        self._write = redis.register_script(checkpoint.WRITE_LUA)
        self._store_after = redis.register_script(history.STORE_AFTER_LUA)
        self._fingerprint = checkpoint.fingerprint(config)
        self.core = CandleCore(config)
        self._feeder = EntryFeeder(self.core)
        self.last_id = self._written_id = "0-0"
        self.ids_from = "0-0"
        self.steps: list[tuple[int, str]] = []
        self._pending: list[Any] = []
        self._inflight: asyncio.Future[None] | None = None  # the write in flight
        self._prefetch: asyncio.Future[Any] | None = None  # the next batch, asked for
        self._last_write = self._checkpoint_at = time.monotonic()
        self._checkpoint_id = ""
        self._reported = (0, 0, 0, 0, 0, 0, 0, 0)
        self._on_written = on_written
        self._together = together  # the deadline writes of the process's shards (together.py)
        self._rendered_for = -1  # the deadline whose candles were rendered ahead
        self._hold_ms = min(HOLD_MS, config.waiter_latency_ms // 4)

    # ------------------------------------------------------------------ resume

    async def load(self) -> None:
        """Resume from the checkpoint (or start cold), and rebuild the duplicate filter."""
        key = self.keys.state(self.shard)
        self._drop_prefetch()  # it reads after a position the checkpoint may change
        self._reset("0-0")
        if await self.redis.type(key) in (b"string", "string"):
            # A checkpoint of version 1 (one JSON string): its id only; the first write
            # replaces the key (aggregate.checkpoint.WRITE_LUA).
            raw_head, raw, unstored = await self.redis.get(key), None, None
        else:
            raw_head, raw, unstored = await self.redis.hmget(
                key, [checkpoint.HEAD, checkpoint.CHECKPOINT, UNSTORED]
            )
        if unstored is not None:
            await self._store_unstored(unstored)
        if raw_head is None:
            log.info("shard %d: no checkpoint, cold start from the stream's beginning", self.shard)
            return
        head = checkpoint.head_decoder.decode(raw_head)
        try:
            saved = None if raw is None else checkpoint.decoder.decode(raw)
        except msgspec.ValidationError:  # another version of the state
            saved = None
        if (
            saved is None
            or saved.version != checkpoint.VERSION
            or not checkpoint.same_rules(saved.config, self._fingerprint)
        ):
            log.warning(
                "shard %d: checkpoint of another version or other candle rules (%s); "
                "cold start after %s",
                self.shard, None if saved is None else saved.config, head.last_id,
            )  # fmt: skip
            self._reset(head.last_id)
            await self._check_trimmed(head.last_id, head.now_ms)
            return
        self.core = CandleCore(self.config, saved.core)
        self._feeder = EntryFeeder(self.core)
        self.ids_from = saved.ids_from
        self.steps = saved.steps
        await self._check_trimmed(saved.last_id, saved.core.now_ms)
        await self._rebuild_ids(saved.ids_from, saved.last_id)
        # The candles of the entries after the checkpoint up to the head are written already:
        # replay them into the core and drop what they emit.
        await self._replay(saved.last_id, head.last_id)
        self.core.take()
        self._feeder.forgotten.clear()
        self.last_id = self._written_id = head.last_id
        self._checkpoint_id = saved.last_id
        self._migrate(saved.shards)
        log.info("shard %d: resumed after %s", self.shard, head.last_id)

    async def _store_unstored(self, first_id: bytes | str) -> None:
        """Store the candles a deadline wrote to the stream and left to store after it
        (`_write_ahead`), when the process stopped before it could: every candle of the candle
        stream from `first_id` on (nothing of this shard is written after them before they are
        stored)."""
        raws = await history.unstored_candles(self.redis, self.keys.klines(self.shard), first_id)
        keys = [self._script_keys[0], self._script_keys[3]]
        for raw in raws:
            view = candle_view_decoder.decode(raw)
            keys.append(self.keys.history(self.shard, view.interval_label, view.symbol))
        await self._fenced(
            self._store_after(keys=keys, args=[self.token, b"\n".join(raws), self._history_depth])
        )
        log.info("shard %d: stored %d candles written before a stop", self.shard, len(raws))

    async def _check_trimmed(self, position: str, position_ms: int) -> None:
        if await resume.flag_trimmed(
            self.redis, self._stream, self.core, self.shard, position, position_ms
        ):
            TRIMMED.inc(1, self._label)

    def _migrate(self, saved_shards: int) -> None:
        resume.migrate(self.core, self.shard, self.shards, saved_shards)

    def _reset(self, last_id: str) -> None:
        self.core = CandleCore(self.config)
        self._feeder = EntryFeeder(self.core)
        self.last_id = self._written_id = self.ids_from = last_id
        self.steps = []
        self._checkpoint_id = ""  # the first write carries a checkpoint

    async def _rows(self, after: str, until: str) -> AsyncIterator[list[Any]]:
        start = after
        while start != until:
            rows = await self.redis.xrange(self._stream, min=f"({start}", max=until, count=5000)
            if not rows:
                return
            yield rows
            last = rows[-1][0]
            start = last.decode() if isinstance(last, bytes) else str(last)

    async def _rebuild_ids(self, after: str, until: str) -> None:
        """The duplicate filter as it was at `until`: the trades since `after` again, each with
        the stream time before it (the filter's generations follow stream time)."""
        now_ms = -1
        async for rows in self._rows(after, until):
            for _, fields in rows:
                data = fields.get(b"data") if fields else None
                if not isinstance(data, bytes):
                    continue
                try:
                    entry = entry_decoder.decode(data)
                except ValueError:
                    continue  # refused when it was read, too
                if isinstance(entry, TradesEntry):
                    trades, _ = good_trades(entry.trades)  # as the feeder took them
                    if trades:
                        times = [t.time_ms for t in trades]
                        ids = [t.trade_id for t in trades]
                        self.core.remember_ids(entry.symbol, times, ids, now_ms)
                        now_ms = max(now_ms, *times)
                elif isinstance(entry, ClockEntry):
                    now_ms = max(now_ms, entry.time_ms)

    async def _replay(self, after: str, until: str) -> None:
        async for rows in self._rows(after, until):
            self._feeder.feed(
                data for _, fields in rows if isinstance(data := fields.get(b"data"), bytes)
            )

    # -------------------------------------------------------------------- steps

    async def step(self, block_ms: int | None, *, overlap: bool = False) -> int:
        """Read one batch, aggregate it, write what it closed. Returns the entries read.

        `overlap` keeps Redis busy while this process computes: after a full batch (a backlog)
        the next batch is asked for before this one is aggregated, and its write is left in
        flight while the next step aggregates. The next write (or `drain`) waits for it first,
        so writes stay one at a time and in order, and its error surfaces there. Otherwise
        (no backlog) the step ends when its write is done, and then renders ahead the candles
        of the coming waiter deadline (`_render_ahead`). Candles closed in the last HOLD_MS
        before that deadline stay pending for its write (`_holding`)."""
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            reply = await prefetch
        else:
            reply = await self._read(block_ms, self.last_id)
        entries = _entries(reply)
        read = len(entries)
        if entries and read < self.batch and self._inflight is None:
            entries = await self._at_clock(entries)
            if not entries:
                return read
        backlog = overlap and len(entries) >= self.batch
        if entries:
            last_id = entries[-1][0].decode()
            if backlog:
                self._prefetch = asyncio.ensure_future(self._read(None, last_id))
                await asyncio.sleep(0)  # let it send the request before the CPU work below
            self.process(entries)
            self.last_id = last_id
        if (
            (self._pending and not self._holding())
            or (entries and time.monotonic() - self._last_write > 1.0)
            or (not entries and self.last_id != self._written_id)
            # a checkpoint of its own: a busy shard writes only around boundaries otherwise
            or (
                self._checkpoint_id != self.last_id
                and self._checkpoint_due(self.core.state.now_ms, closing=False)
            )
        ):
            prepared = self._prepare(full=False)
            await self.drain()  # the previous write goes first: one write at a time, in order
            if backlog:
                self._inflight = asyncio.ensure_future(self._send(prepared))
            else:
                # Sent now, while this task waits for the reply: a task's first steps wait
                # behind the others' ready work, so a boundary's four shard writes went out
                # only after all four had closed their candles, and Redis ran them one after
                # the other at the end.
                await self._send(prepared)
        if entries and not backlog:
            self._render_ahead()
        elif backlog and self._rendered_for >= 0:
            self._rendered_for = -1
            self._writer.prepare([])  # a backlog renders every candle: no lookups on the way
        return read

    async def _at_clock(self, entries: list[Any]) -> list[Any]:
        """A read (not a backlog) with a clock entry that reaches a waiter deadline whose
        candles the core knows ahead: the entries before it are taken in first, as the close
        would see them, the deadline's write goes out ahead of its close (`_write_ahead`), and
        the entries after it (trades received after the deadline) are returned for the rest
        of the step. Otherwise the entries the step still has to take in."""
        at, clock = _last_clock(entries)
        if clock is None:
            return entries
        if at > 0:
            self.process(entries[:at])
            self.last_id = entries[at - 1][0].decode()
            entries = entries[at:]
        ahead = self._deadline_write(clock, entries[0][0].decode())
        if ahead is None:
            return entries
        await self._write_ahead(*ahead, entries[:1])
        return entries[1:]

    def _holding(self) -> bool:
        """Whether the candles pending wait for the next waiter deadline's write (HOLD_MS): its
        last HOLD_MS have begun in stream time. Not with in-progress updates (their snapshots
        follow stream time closely). A stream that goes quiet meanwhile does not keep them:
        a read that returns nothing writes what is pending (`step`)."""
        deadlines = self.core.state.deadlines
        if not deadlines or self.config.updates_ms:
            return False
        now_ms = self.core.state.now_ms
        return deadlines[0] - self._hold_ms <= now_ms < deadlines[0]

    def _deadline_write(
        self, clock: ClockEntry, entry_id: str
    ) -> tuple[_Write, list[CoreCandle]] | None:
        """When this clock entry (the last one read) reaches a waiter deadline whose candles
        the core knows ahead (CandleCore.closes_at), the write of the candles pending (taken
        out of `_pending`) and those, made without closing them, and the candles the close
        must emit; else None. Not with a checkpoint due (it needs the state after the close)."""
        if not self._checkpoint_id or (
            time.monotonic() - self._checkpoint_at >= checkpoint.CHECKPOINT_MAX_S
        ):
            return None
        candles = self.core.closes_at(clock.time_ms)
        if not candles:
            return None
        self.last_id = entry_id
        now_ms = max(self.core.state.now_ms, clock.time_ms)
        self._record_step(now_ms)
        pending, self._pending = self._pending, []
        return self._build(pending + candles, [], now_ms, b"", store=False), candles

    async def _write_ahead(
        self, ahead: _Write, expected: list[CoreCandle], entries: Sequence[Any]
    ) -> None:
        """Write a deadline's candles to the stream, then, CLOSE_AFTER_S later, let the core close
        them (its bookkeeping: records, folds, the next deadlines) and store them in the history
        store (`_store`): meanwhile the process's other shards read their clock entries and send
        their writes, publish gets the CPU and Redis serves the candles to their readers,
        instead of all waiting behind this close and this store (the store was half of the
        write's Redis time; common/history.py says how readers bridge the few ms). The close
        must emit exactly what was written; if it ever did not, the candles it emitted are
        written next (those before the deadline's, written ahead with them, are not written
        again), and it is logged and counted (aggregate_ahead_mismatch_total) as the bug it
        is. The write goes with those of the process's other shards at this deadline
        (aggregate.together)."""
        await self._send(ahead, together=True)
        if time.time() * 1000 - ahead.now_ms < LIVE_MS:
            await asyncio.sleep(CLOSE_AFTER_S)
        self.process(entries)
        await self._store(ahead)
        if self._pending == expected:
            self._pending = []
        else:
            AHEAD_MISMATCH.inc(1, self._label)
            log.error(
                "shard %d: the close of %s emitted %d candles, not the %d written ahead; "
                "writing what it emitted",
                self.shard, ahead.last_id, len(self._pending), len(expected),
            )  # fmt: skip
        self._report(ahead.now_ms)
        self._render_ahead()

    def _render_ahead(self) -> None:
        """Once a boundary has passed, render the candles its waiter deadline will close (see
        CandleCore.previews): at the deadline they are written without being rendered then.
        Not in a backlog, where nothing waits for a deadline."""
        deadlines = self.core.state.deadlines
        if deadlines and deadlines[0] != self._rendered_for:
            candles = self.core.previews()
            if candles:
                self._rendered_for = deadlines[0]
                self._writer.prepare(candles)

    async def _read(self, block_ms: int | None, after: str) -> Any:
        args: list[Any] = ["XREAD", "COUNT", self.batch]
        if block_ms is not None:
            args += ["BLOCK", block_ms]
        return await self.redis.execute_command(  # type: ignore[no-untyped-call]
            *args, "STREAMS", self._stream, after
        )

    async def drain(self) -> None:
        """Wait for the write in flight (see `step`'s `overlap`), if any; its error (lease lost,
        Redis) is raised here."""
        task, self._inflight = self._inflight, None
        if task is not None:
            await task

    def process(self, entries: Sequence[Any]) -> None:
        for problem in self._feeder.feed(fields[1] for _, fields in entries):
            BAD.inc(1, self._label)
            rate_limited.warning("bad", "shard %d: %s", self.shard, problem)
        if self._feeder.forgotten:
            gone, self._feeder.forgotten = self._feeder.forgotten, []
            log.info(
                "shard %d: ingest no longer serves %d symbols here, their series end: %s",
                self.shard, len(gone), ",".join(gone[:10]) + (",..." if len(gone) > 10 else ""),
            )  # fmt: skip
        self._pending.extend(self.core.take())

    async def write(self, *, full: bool = False) -> None:
        """The pending candles and the head; the checkpoint too when due (see checkpoint)."""
        prepared = self._prepare(full=full)
        await self.drain()
        await self._send(prepared)

    def _prepare(self, *, full: bool) -> _Write:
        """Everything a write sends, from the state now (the core may move on meanwhile)."""
        candles, self._pending = self._pending, []
        closed = [c for c in candles if c.closed]
        snapshots = [c for c in candles if not c.closed]
        now_ms = self.core.state.now_ms
        self._record_step(now_ms)
        if (
            full
            or not self._checkpoint_id
            or time.monotonic() - self._checkpoint_at >= checkpoint.CHECKPOINT_MAX_S
            or self._checkpoint_due(now_ms, closing=bool(closed))
        ):
            saved = checkpoint.encoder.encode(
                Checkpoint(
                    version=checkpoint.VERSION,
                    config=self._fingerprint,
                    last_id=self.last_id,
                    ids_from=self.ids_from,
                    steps=self.steps,
                    core=self.core.export_state(),
                    shards=self.shards,
                )
            )
            self._checkpoint_at = time.monotonic()
        else:
            saved = b""
        return self._build(closed, snapshots, now_ms, saved)

    def _build(
        self,
        closed: list[CoreCandle],
        snapshots: list[CoreCandle],
        now_ms: int,
        saved: bytes,
        *,
        store: bool = True,
    ) -> _Write:
        """The write's script arguments; with `store` False the closed candles go to the stream
        only and `_store` stores them after (common/history.py)."""
        encode = self._writer.encode
        args: list[Any] = [
            self.token,
            self._maxlens[0],
            self._maxlens[1],
            checkpoint.encoder.encode(checkpoint.Head(self.last_id, now_ms)),
            saved,
            b"\n".join(map(encode, closed)),
            b"\n".join(map(encode, snapshots)),
            self._history_depth,
            b"1" if store else b"0",
        ]
        keys = self._script_keys + self._history_keys_of(closed) if store else self._script_keys
        return _Write(args, keys, closed, self.last_id, now_ms, bool(saved))

    async def _store(self, w: _Write) -> None:
        """Store the closed candles of a write that left them to later (STORE_AFTER_LUA)."""
        if w.closed:
            keys = [self._script_keys[0], self._script_keys[3], *self._history_keys_of(w.closed)]
            args = [self.token, w.args[5], self._history_depth]
            await self._fenced(self._store_after(keys=keys, args=args))

    def _history_keys_of(self, closed: list[CoreCandle]) -> list[str]:
        """Each closed candle's history key, in order."""
        cached = self._history_keys
        keys: list[str] = []
        for c in closed:
            key = cached.get((c.symbol, c.interval))
            if key is None:
                key = cached[(c.symbol, c.interval)] = self.keys.history(
                    self.shard, self.config.intervals[c.interval].label, c.symbol
                )
            keys.append(key)
        return keys

    async def _fenced(self, call: Awaitable[Any]) -> None:
        """A fenced script's call; its refusal (another process holds the lease) raised as
        LeaseLostError."""
        try:
            await call
        except ResponseError as exc:
            if reply_code(exc) is ReplyCode.LEASELOST:
                raise LeaseLostError(f"shard {self.shard}: lease lost, write refused") from None
            raise

    async def _send(self, w: _Write, *, together: bool = False) -> None:
        if together and self._together is not None:
            await self._fenced(self._together.call(w.keys, w.args))
        else:
            await self._fenced(self._write(keys=w.keys, args=w.args))
        self._written_id = w.last_id
        self._last_write = time.monotonic()
        if w.checkpoint:
            self._checkpoint_id = w.last_id
        if self._on_written is not None:
            self._on_written(w.closed, time.time() * 1000, w.now_ms)
        self._report(w.now_ms)

    def _checkpoint_due(self, now_ms: int, *, closing: bool) -> bool:
        """A quiet moment for the full checkpoint, at most every CHECKPOINT_EVERY_S: a write
        that closes no candle, with none due within QUIET_MS of stream time, so that encoding
        and sending megabytes never delays a boundary's candles (`_prepare` also forces it
        every CHECKPOINT_MAX_S)."""
        if closing or time.monotonic() - self._checkpoint_at < checkpoint.CHECKPOINT_EVERY_S:
            return False
        # The heap may hold stale deadlines: earlier ones, so this errs on the side of waiting.
        deadlines = self.core.state.deadlines
        return not deadlines or deadlines[0] - now_ms >= checkpoint.QUIET_MS

    def _record_step(self, now_ms: int) -> None:
        """Move `ids_from` on: the duplicate filter has forgotten every trade that arrived
        before stream time (now // h - 1) * h (CandleCore._rotate_ids), so the trades of the
        steps that ended before it need not be re-read on a resume."""
        if not self.steps or now_ms - self.steps[-1][0] >= STEP_RECORD_MS:
            self.steps.append((now_ms, self.last_id))
        h = self.core.ids_horizon_ms
        horizon = (now_ms // h - 1) * h
        keep = 0
        while keep < len(self.steps) and self.steps[keep][0] < horizon:
            self.ids_from = self.steps[keep][1]
            keep += 1
        del self.steps[:keep]

    def _report(self, now_ms: int) -> None:
        c = self.core.state.counters
        now = (
            c.trades_in, c.candles, c.revisions, c.late, c.dropped, c.duplicates,
            c.unrepairable, c.cleared,
        )  # fmt: skip
        metrics = (
            TRADES_IN, CANDLES_OUT, REVISIONS, LATE, DROPPED, DUPLICATES, UNREPAIRABLE, CLEARED,
        )  # fmt: skip
        for metric, value, before in zip(metrics, now, self._reported, strict=True):
            if value != before:
                metric.inc(value - before, self._label)
        self._reported = now
        if now_ms > 0:
            LAG.set(time.time() - now_ms / 1000, self._label)

    # ---------------------------------------------------------------------- run

    async def run(self, stop: asyncio.Event) -> None:
        """Until `stop` (then write what is pending) or until the lease is lost."""
        try:
            await self._run(stop)
        finally:
            if self._inflight is not None and not self._inflight.done():
                self._inflight.cancel()  # cancelled from outside: a script sent runs anyway
            self._drop_prefetch()

    async def _run(self, stop: asyncio.Event) -> None:
        delays = backoff()
        loaded = False
        while not stop.is_set():
            try:
                if not loaded:
                    await self.load()
                    loaded = True
                read = await self.step(block_ms=100, overlap=True)
                delays = backoff()
                lazy_s = self._lazy_s(read, time.time() * 1000)
                if lazy_s > 0:
                    await sleep_or_stop(stop, lazy_s)
            except LeaseLostError as exc:
                await self._abandon()
                log.warning("%s; shard %d stopped", exc, self.shard)
                return
            except RedisError as exc:
                # The write may or may not have happened: resume from what Redis holds.
                await self._abandon()
                rate_limited.warning("redis", "shard %d: redis error %r", self.shard, exc)
                loaded = False
                self._pending = []
                await sleep_or_stop(stop, next(delays))
        if loaded:
            with contextlib.suppress(RedisError, LeaseLostError):
                await self.drain()
                if self._pending or self._checkpoint_id != self.last_id:
                    await self.write(full=True)  # a quick resume

    def _lazy_s(self, read: int, now_ms: float) -> float:
        """How long to wait before the next read (see LAZY_MS): until the boundary before the
        shard's next waiter deadline (its earliest, in stream time, which is the exchange's clock,
        read against the wall clock), at most LAZY_MS; 0 from that boundary until the deadline
        has passed, in a backlog (a full read, a prefetch or a write in flight), when the stream
        is not live (a replay or a catch-up: more than LIVE_MS behind the wall clock), and with
        in-progress updates."""
        if (
            read >= self.batch
            or self._prefetch is not None
            or self._inflight is not None
            or self.config.updates_ms
            or now_ms - self.core.state.now_ms > LIVE_MS
        ):
            return 0.0
        deadlines = self.core.state.deadlines
        until_ms: float = LAZY_MS
        if deadlines:  # a stale (earlier) entry only makes the wait shorter
            until_ms = min(until_ms, deadlines[0] - self.config.waiter_latency_ms - now_ms)
        return max(0.0, until_ms / 1000)

    async def _abandon(self) -> None:
        """Let the write in flight end, whatever its outcome: Redis holds what happened."""
        self._drop_prefetch()
        with contextlib.suppress(RedisError, LeaseLostError):
            await self.drain()

    def _drop_prefetch(self) -> None:
        prefetch, self._prefetch = self._prefetch, None
        if prefetch is not None:
            prefetch.cancel()
