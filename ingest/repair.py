"""Gap repair: the trades a gap entry says may be missing, fetched back from `recent-trade`.

Every gap entry ingest queues (reconnect, unowned, buffer-overflow; and those a shard's previous
owner wrote but did not repair, found when the shard is taken: `open_repairs`) becomes a `Job`,
and each of its symbols is asked of `GET /v5/market/recent-trade` (60 trades on spot, 1000
elsewhere: the most one answer holds). The requests are spread by a token bucket
(STREAMER_REPAIR_REQUESTS_PER_S, far under Bybit's 600 per 5 s per IP, so that the other
requests from this IP keep their room), at most CONCURRENCY at once, busiest symbols first (a
busy symbol's answer reaches back the least far). A failed request is asked again with backoff;
a rate-limit answer (HTTP 403/429, retCode 10006/10018) holds every request for COOLDOWN_S. A
symbol still without an answer STREAMER_REPAIR_GIVE_UP_S after its first request is given up.

An answer's trades inside the gap's window that the stream does not hold are written as one
trades entry, in time order, as ordinary trades. "Held": in the ids the shard's stream holds
from the window on (read once per job), or in the duplicate filter, which holds what this
process queued and did not drop unwritten (ingest.shards' `_unwritten`). The symbol is complete
when the answer reaches back past the gap's start: its oldest trade is older than `from`, or it
holds fewer trades than asked for (Bybit has no older one: a new listing, a quiet symbol). Ended
symbols are then reported in `repair` entries, after their trades: at most every REPORT_EVERY_S
per gap, and when its last symbol ends. A job whose shard is no longer ours is abandoned: the
next owner finds the gap unrepaired in the stream and takes it up.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.backoff import backoff
from common.errors import BadMessageError, RetryableError
from common.logs import RateLimitedLog
from common.wire import GapEntry, RepairEntry, TradesEntry, entry_decoder
from ingest import metrics
from ingest.bybit.recent import Recent, RefusedError
from ingest.dedup import Deduper
from ingest.rest import HttpStatusError
from ingest.writer import Writer, now_ms

log = logging.getLogger(__name__)
_rate_log = RateLimitedLog(log)

CONCURRENCY = 4  # requests in flight at once
FIRST_DELAY_S = 0.5  # after the gap entry: Bybit's REST may trail its stream a little
RETRY_BASE_S = 0.5
RETRY_CAP_S = 8.0
COOLDOWN_S = 1.0  # Bybit lifts a 10006 within a second or so (X-Bapi-Limit-Reset-Timestamp)
REPORT_EVERY_S = 1.0
GAP_BATCH_S = 5.0  # gaps queued within this compete by their symbols' activity (see _next)
SEED_MARGIN_MS = 5000  # entry ids (Redis' clock) against trade times (the exchange's)
READ_BATCH = 5000
TAKE_UP_ENTRIES = 200_000  # how far back a taken shard's stream is looked at for open repairs
RATE_LIMITED_STATUS = frozenset({403, 429})

Fetch = Callable[[str], Awaitable[Recent]]
ReadIds = Callable[[int, int, set[str]], Awaitable[dict[str, set[str]]]]


class Budget:
    """A token bucket: `rate_per_s` requests a second on average, at most `burst` at once."""

    def __init__(self, rate_per_s: float, burst: float, now: float) -> None:
        self.rate_per_s = rate_per_s
        self.burst = burst
        self._tokens = burst
        self._at = now

    def _refill(self, now: float) -> None:
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate_per_s)
        self._at = now

    def wait_s(self, now: float) -> float:
        """How long until a request may go (0: now)."""
        self._refill(now)
        return 0.0 if self._tokens >= 1 else (1 - self._tokens) / self.rate_per_s

    def take(self, now: float) -> None:
        self._refill(now)
        self._tokens -= 1


@dataclass(eq=False)
class Job:
    """One gap entry's repair."""

    shard: int
    symbols: list[str]
    from_ms: int
    to_ms: int
    left: set[str]
    answered: set[str] = field(default_factory=set)
    complete: set[str] = field(default_factory=set)
    unreported: list[str] = field(default_factory=list)
    reported_at: float = 0.0  # when the last repair entry went out (or the job began)
    batch: int = 0  # gaps queued in the same GAP_BATCH_S are asked busiest symbol first
    written: int = 0
    abandoned: bool = False
    ids: asyncio.Task[dict[str, set[str]]] | None = None  # the stream's ids over the window


def _delays() -> Iterator[float]:
    return backoff(RETRY_BASE_S, RETRY_CAP_S)


@dataclass(eq=False)
class Ask:
    """One symbol of a job, asked until it is answered or given up."""

    job: Job
    symbol: str
    attempt: int = 0
    give_up_at: float = 0.0  # set by the first request
    delays: Iterator[float] = field(default_factory=_delays)


class OpenRepairer(Protocol):
    """Opens the repairer over the shards' writer and duplicate filter: the shards take one,
    and open their repairer with what they own and how busy each symbol is."""

    def __call__(
        self,
        writer: Writer,
        dedup: Deduper,
        *,
        owns: Callable[[int], bool],
        rank: Callable[[str], int],
    ) -> Repairer: ...


class Repairer:
    def __init__(
        self,
        fetch: Fetch,
        writer: Writer,
        dedup: Deduper,
        read_ids: ReadIds,
        *,
        owns: Callable[[int], bool],
        rank: Callable[[str], int],
        rate_per_s: float,
        give_up_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._writer = writer
        self._dedup = dedup
        self._read_ids = read_ids
        self._owns = owns
        self._rank = rank
        self._give_up_s = give_up_s
        self._clock = clock
        self._budget = Budget(rate_per_s, max(1.0, rate_per_s), clock())
        self._paused_until = 0.0
        self._waiting: list[tuple[float, int, Ask]] = []  # (ready at, serial, ask): a heap
        # (batch of gaps, -trades received, serial, ask): a heap
        self._ready: list[tuple[int, int, int, Ask]] = []
        self._serial = itertools.count()
        self._wake = asyncio.Event()
        self.jobs: set[Job] = set()

    # -- what asks for repairs -------------------------------------------------------------------

    def request(self, shard: int, symbols: list[str], from_ms: int, to_ms: int) -> None:
        """Repair a gap entry just queued (the writer's `on_gap`, by way of the shards); never
        blocks. A gap written while handing the shard over is the next owner's to repair."""
        if not symbols or not self._owns(shard):
            return
        now = self._clock()
        job = Job(shard, sorted(symbols), from_ms, to_ms, set(symbols), reported_at=now)
        job.batch = int(now // GAP_BATCH_S)
        self.jobs.add(job)
        ready = now + FIRST_DELAY_S
        for symbol in job.symbols:
            self._push(ready, Ask(job, symbol))
        self._wake.set()

    def forget(self, shard: int) -> None:
        """The shard is no longer ours: its repairs are the next owner's."""
        for job in [j for j in self.jobs if j.shard == shard]:
            self._abandon(job)

    def _push(self, ready_at: float, ask: Ask) -> None:
        heapq.heappush(self._waiting, (ready_at, next(self._serial), ask))
        metrics.REPAIR_QUEUE.set(len(self._waiting) + len(self._ready))

    # -- the requests ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        workers = [asyncio.ensure_future(self._work()) for _ in range(CONCURRENCY)]
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait({stopper, *workers}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stopper, *workers):
                task.cancel()
            await asyncio.gather(stopper, *workers, return_exceptions=True)
        for task in workers:
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _work(self) -> None:
        while True:
            await self._ask(await self._next())

    async def _next(self) -> Ask:
        """The next symbol to ask, once the budget and any cooldown let one go. Of those whose
        time has come (a retry waits for its backoff): the gaps queued earliest first, by
        batches of GAP_BATCH_S (so that every gap's repair ends, even while gaps come faster
        than the budget allows), and in a batch the busiest symbol first, whichever gap it
        belongs to (its trades leave recent-trade soonest; a reconnect of every connection
        queues a gap per connection and shard at once)."""
        waiting, ready = self._waiting, self._ready
        while True:
            now = self._clock()
            while waiting and waiting[0][0] <= now:
                _, serial, ask = heapq.heappop(waiting)
                key = (ask.job.batch, -self._rank(ask.symbol), serial, ask)
                heapq.heappush(ready, key)
            while ready and ready[0][3].job.abandoned:
                heapq.heappop(ready)
            if ready:
                wait_s = max(self._paused_until - now, self._budget.wait_s(now))
                if wait_s <= 0:
                    self._budget.take(now)
                    ask = heapq.heappop(ready)[3]
                    metrics.REPAIR_QUEUE.set(len(waiting) + len(ready))
                    return ask
            else:
                wait_s = waiting[0][0] - now if waiting else 3600.0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait_s)

    async def _ask(self, ask: Ask) -> None:
        now = self._clock()
        if not ask.give_up_at:
            ask.give_up_at = now + self._give_up_s
        metrics.REPAIR_REQUESTS.inc()
        try:
            answer = await self._fetch(ask.symbol)
        except RefusedError as exc:
            if exc.final:
                metrics.REPAIR_ERRORS.inc(1, "refused")
                _rate_log.warning("refused", "recent-trade %s refused: %s", ask.symbol, exc)
                self._end(ask.job, ask.symbol, answered=False, complete=False)
                return
            self._failed(ask, exc, "rate-limit" if exc.rate_limited else "http", exc.rate_limited)
            return
        except HttpStatusError as exc:
            self._failed(ask, exc, "http", exc.status in RATE_LIMITED_STATUS)
            return
        except RetryableError as exc:
            self._failed(ask, exc, "http", False)
            return
        except BadMessageError as exc:
            self._failed(ask, exc, "malformed", False)
            return
        try:
            await self._deliver(ask, answer)
        except (RedisError, OSError) as exc:  # the stream's ids could not be read: later
            _rate_log.warning("ids", "gap repair: reading the trade stream failed: %r", exc)
            ask.job.ids = None
            self._retry(ask)

    def _failed(self, ask: Ask, exc: Exception, kind: str, rate_limited: bool) -> None:
        metrics.REPAIR_ERRORS.inc(1, kind)
        if rate_limited:
            self._paused_until = self._clock() + COOLDOWN_S
        _rate_log.warning(
            f"failed-{kind}", "recent-trade %s failed (attempt %d): %s", ask.symbol,
            ask.attempt + 1, exc,
        )  # fmt: skip
        self._retry(ask)

    def _retry(self, ask: Ask) -> None:
        now = self._clock()
        delay = next(ask.delays)
        if now + delay > ask.give_up_at:
            self._end(ask.job, ask.symbol, answered=False, complete=False)
            return
        ask.attempt += 1
        self._push(now + delay, ask)
        self._wake.set()

    # -- the answers -----------------------------------------------------------------------------

    async def _deliver(self, ask: Ask, answer: Recent) -> None:
        job, symbol = ask.job, ask.symbol
        held = [t for t in answer.trades if job.from_ms <= t.time_ms <= job.to_ms]
        if held:
            if job.ids is None:
                since_ms = job.from_ms - SEED_MARGIN_MS
                job.ids = asyncio.ensure_future(self._read_ids(job.shard, since_ms, job.left))
            ids = job.ids
            try:
                written = (await asyncio.shield(ids)).get(symbol, set())
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if not ids.cancelled() or (task is not None and task.cancelling()):
                    raise  # this worker is being stopped
                # The job was abandoned (`_abandon` cancels its read) while this worker waited
                # for it: the job ends here, the worker goes on with the next ask. (Letting the
                # cancellation through ended the worker, and with it every repair of the replica.)
                return
            held = [t for t in held if t.trade_id not in written]
        if job.abandoned or not self._owns(job.shard):
            self._abandon(job)
            return
        fresh = self._dedup.fresh(symbol, held) if held else held
        if fresh:
            self._writer.put_trades(job.shard, symbol, fresh, answer.exchange_ms, now_ms())
            job.written += len(fresh)
            metrics.REPAIRED_TRADES.inc(len(fresh))
        complete = answer.reaches_back(job.from_ms)
        self._end(job, symbol, answered=True, complete=complete)

    def _end(self, job: Job, symbol: str, *, answered: bool, complete: bool) -> None:
        if job.abandoned or symbol not in job.left:
            return
        job.left.discard(symbol)
        job.unreported.append(symbol)
        if answered:
            job.answered.add(symbol)
        if complete:
            job.complete.add(symbol)
        outcome = "complete" if complete else "partial" if answered else "unrepaired"
        metrics.REPAIR_SYMBOLS.inc(1, outcome)
        now = self._clock()
        if not job.left or now - job.reported_at >= REPORT_EVERY_S:
            self._report(job, now)

    def _report(self, job: Job, now: float) -> None:
        if not self._owns(job.shard):
            self._abandon(job)
            return
        done = job.unreported
        self._writer.put_repair(
            job.shard, done, job.from_ms, job.to_ms, [s for s in done if s in job.complete]
        )
        job.unreported = []
        job.reported_at = now
        if job.left:
            return
        self.jobs.discard(job)
        if len(job.complete) == len(job.symbols):
            outcome = "complete"
        else:
            outcome = "partial" if job.answered else "unrepaired"
        metrics.REPAIRS.inc(1, outcome)
        log.info(
            "gap repair of shard %d (%d ms): %d symbols, %d complete, %d more answered, "
            "%d unanswered; %d trades written",
            job.shard, job.to_ms - job.from_ms, len(job.symbols), len(job.complete),
            len(job.answered) - len(job.complete), len(job.symbols) - len(job.answered),
            job.written,
        )  # fmt: skip

    def _abandon(self, job: Job) -> None:
        if job.abandoned:
            return
        job.abandoned = True
        self.jobs.discard(job)
        if job.ids is not None:
            job.ids.cancel()
        metrics.REPAIRS.inc(1, "abandoned")
        log.info(
            "gap repair of shard %d abandoned (%d symbols left): the shard is another "
            "replica's now", job.shard, len(job.left),
        )  # fmt: skip


# -- reading the trade stream ----------------------------------------------------------------------


async def _entries(redis: aioredis.Redis, stream: str, since_ms: int) -> AsyncIterator[Any]:
    start = f"{max(0, since_ms)}-0"
    while True:
        rows: Any = await redis.xrange(stream, min=start, max="+", count=READ_BATCH)
        yield rows
        if len(rows) < READ_BATCH:
            return
        start = "(" + rows[-1][0].decode()


async def stream_ids(
    redis: aioredis.Redis, stream: str, since_ms: int, symbols: set[str]
) -> dict[str, set[str]]:
    """The trade ids of `symbols` in the entries written since `since_ms`."""
    out: dict[str, set[str]] = {}
    async for rows in _entries(redis, stream, since_ms):
        for _, fields in rows:
            data = fields.get(b"data", b"")
            if not data.startswith(b'{"type":"trades"'):
                continue
            entry = entry_decoder.decode(data)
            if isinstance(entry, TradesEntry) and entry.symbol in symbols:
                out.setdefault(entry.symbol, set()).update(t.trade_id for t in entry.trades)
    return out


async def open_repairs(
    redis: aioredis.Redis, stream: str, since_ms: int, before_ms: int
) -> list[tuple[list[str], int, int]]:
    """Gaps written from `since_ms` to before `before_ms` whose repair no later entry reported,
    per window: (symbols, from, to), oldest first. Read newest first, and at most TAKE_UP_ENTRIES
    entries back (a busy shard's seconds: the gaps left further back stay flagged). A repair
    closes only the gap entries written before it: a replica taking a shard over may write a
    window again that the previous owner had reported and repaired (its own connection missed
    the same trades), and the aggregator holds that second entry open until a repair follows."""
    gapped: dict[tuple[int, int], set[str]] = {}
    repaired: dict[tuple[int, int], set[str]] = {}  # by the repair entries read so far (later)
    end, read = "+", 0
    while read < TAKE_UP_ENTRIES:
        rows: Any = await redis.xrevrange(
            stream, max=end, min=f"{max(0, since_ms)}-0", count=READ_BATCH
        )
        for entry_id, fields in rows:
            data = fields.get(b"data", b"")
            if not data.startswith((b'{"type":"gap"', b'{"type":"repair"')):
                continue
            entry = entry_decoder.decode(data)
            if isinstance(entry, GapEntry) and int(entry_id.split(b"-")[0]) < before_ms:
                window = (entry.from_ms, entry.to_ms)
                unreported = set(entry.symbols) - repaired.get(window, set())
                if unreported:
                    gapped.setdefault(window, set()).update(unreported)
            elif isinstance(entry, RepairEntry):
                repaired.setdefault((entry.from_ms, entry.to_ms), set()).update(entry.symbols)
        read += len(rows)
        if len(rows) < READ_BATCH:
            break
        end = "(" + rows[-1][0].decode()
    return [(sorted(s), f, t) for (f, t), s in sorted(gapped.items())]
