"""The candle core: trade stream entries in, candles out. Pure: no I/O, no clock of its own.

Input, per Bybit message: the symbol and parallel sequences of trade times (ms), prices and sizes
(scaled integers, common.decimals), taker-is-buyer flags and trade ids, in the order Bybit sent
them. Plus clock ticks (stream time) and gap notices. Output: `CoreCandle`s in `out`.

Rules (the README's "Candles" section says them for users):
- Time is stream time only: max of trade times and clock ticks. A candle closes when stream time
  reaches its end + the waiter latency, or earlier when a trade of the same symbol at or after its
  end proves it complete (Bybit delivers a symbol's trades in order).
- A trade is *late* when the base-grid candle holding it has closed. A late trade older than the
  revision window (stream time - T > window) is dropped and counted; otherwise every level takes
  it: an open candle simply includes it, a closed one is emitted again with revision + 1 (and the
  following candles whose open derives from its close, too). Never pushed into the next candle.
- Duplicate trade ids count once. A duplicate has the same T as the original, so ids are kept per
  base-grid candle, only while that candle could still take a trade.
"""

# In this hot path a comparison is cheaper than a call to max()/min().
# ruff: noqa: PLR1730

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import compress, islice
from operator import attrgetter, le, mul

from aggregate.plan import LevelPlan, plan_levels
from aggregate.state import NEVER, CoreCandle, CoreState, Level, Record, SymbolState
from common.intervals import Interval

_OPEN = attrgetter("open_ms")
_KEEP_RECORDS = 8  # closed candles per level before expired ones are dropped (they are inert)
_KEEP_BUCKETS = (
    8  # id sets per symbol before expired ones are looked for (keeping more is harmless)
)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    intervals: tuple[Interval, ...]
    waiter_latency_ms: int = 80  # 0 = waiter mode off: a candle closes at its end
    revision_window_ms: int = 10_000
    open_at_previous_close: bool = True  # Bybit's rule; False = open at the first trade
    emit_empty: bool = True
    updates_ms: int = 0  # > 0: snapshots of changed in-progress candles at this stream period


def _ascending(times: Sequence[int]) -> bool:
    return all(map(le, times, islice(times, 1, None)))


def _add_one(lv: Level | Record, t: int, p: int, s: int, buy: bool) -> None:
    """Add one trade; `t` ties go after what is there (it arrived later)."""
    if lv.cnt == 0:
        lv.ft = lv.lt = t
        lv.fp = lv.lp = lv.hi = lv.lo = p
    else:
        if t < lv.ft:
            lv.ft, lv.fp = t, p
        if t >= lv.lt:
            lv.lt, lv.lp = t, p
        if p > lv.hi:
            lv.hi = p
        if p < lv.lo:
            lv.lo = p
    lv.cnt += 1
    lv.vol += s
    lv.turn += s * p
    if buy:
        lv.buy += s


def _merge(lv: Level, src: Level) -> None:
    """Fold `src` (a later stretch of time) into `lv`."""
    if lv.cnt == 0:
        lv.ft, lv.fp, lv.hi, lv.lo = src.ft, src.fp, src.hi, src.lo
    else:
        if src.hi > lv.hi:
            lv.hi = src.hi
        if src.lo < lv.lo:
            lv.lo = src.lo
    lv.lt, lv.lp = src.lt, src.lp
    lv.cnt += src.cnt
    lv.vol += src.vol
    lv.turn += src.turn
    lv.buy += src.buy


def _known(prev: int | None) -> int:
    if prev is None:  # pragma: no cover - a first candle always holds its first trade
        raise AssertionError("empty candle without a previous close")
    return prev


def _reset(lv: Level) -> None:
    lv.cnt = lv.vol = lv.turn = lv.buy = 0


class CandleCore:
    """One shard's candles for every symbol and interval, from one pass over its stream."""

    def __init__(self, config: CoreConfig, state: CoreState | None = None) -> None:
        self.config = config
        self.plan: list[LevelPlan] = plan_levels(config.intervals)
        self._consumers: list[list[int]] = [[] for _ in self.plan]
        for index, level in enumerate(self.plan):
            if level.feeder >= 0:
                self._consumers[level.feeder].append(index)
        self._feeders = [level.feeder for level in self.plan]
        self._base_ms = self.plan[0].fixed_ms
        self._latency = config.waiter_latency_ms
        self._window = config.revision_window_ms
        self._bybit = config.open_at_previous_close
        self._emit_empty = config.emit_empty
        self._max_len = max(level.max_len_ms for level in self.plan)
        self._updates_ms = config.updates_ms
        self.state = state if state is not None else CoreState()
        self._dirty: dict[str, None] = dict.fromkeys(self.state.dirty)
        self._ids: dict[str, dict[int, set[str]]] = {}
        self._touched: dict[int, set[int]] = {}  # level -> opens of records changed by late trades
        self.out: list[CoreCandle] = []

    # ----------------------------------------------------------------- inputs

    def trades(
        self,
        symbol: str,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        """One Bybit message of `symbol`'s trades."""
        n = len(times)
        if not n:
            return
        st = self.state
        sym = st.symbols.get(symbol)
        if sym is None:
            sym = self._new_symbol(symbol, times[0], None)
        st.counters.trades_in += n
        base = sym.levels[0]
        t_first = times[0]
        t_last = times[-1]
        if (
            base.active
            and t_first >= base.open_ms
            and t_last < sym.next_end
            and (n == 1 or (min(times) == t_first and max(times) == t_last))
        ):
            # One base candle, first and last in place: the common case, no per-trade work.
            self._add(symbol, base, times, prices, sizes, buys, ids)
        else:
            t_last = max(times)
            if n == 1 or _ascending(times):
                self._feed_sorted(symbol, sym, times, prices, sizes, buys, ids)
            else:  # out of order inside one message: one trade at a time, as if sent so
                for i in range(n - 1):
                    self._feed_sorted(
                        symbol, sym, times[i : i + 1], prices[i : i + 1], sizes[i : i + 1],
                        buys[i : i + 1], ids[i : i + 1],
                    )  # fmt: skip
                    if times[i] > sym.max_t:
                        sym.max_t = times[i]
                    self._advance_time(times[i])
                self._feed_sorted(
                    symbol, sym, times[-1:], prices[-1:], sizes[-1:], buys[-1:], ids[-1:]
                )
        if t_last > sym.max_t:
            sym.max_t = t_last
        if self._updates_ms:
            self._dirty[symbol] = None
        self._advance_time(t_last)

    def clock(self, time_ms: int) -> None:
        """Ingest's clock: everything it received before `time_ms` is already in the stream."""
        self._advance_time(time_ms)

    def gap(self, symbols: Sequence[str], from_ms: int, to_ms: int) -> None:
        """Trades of `symbols` (all, if empty) in [from_ms, to_ms] may be missing."""
        st = self.state
        horizon = st.now_ms - self._window
        for name in symbols or list(st.symbols):
            sym = st.symbols.get(name)
            if sym is None:
                continue
            sym.gaps.append((from_ms, to_ms))
            for k, lv in enumerate(sym.levels):
                for r in lv.records:
                    if (
                        r.end_ms > horizon
                        and not r.gap
                        and from_ms < r.end_ms
                        and to_ms >= r.open_ms
                    ):
                        r.gap = True
                        if not r.partial and (r.cnt or self._emit_empty):
                            r.revision += 1
                            st.counters.revisions += 1
                            self._emit_record(name, k, r)

    def seed(self, symbol: str, start_ms: int, prev_close: int) -> None:
        """Warm start: `symbol`'s stream is complete from `start_ms` on, after a last price.

        Candles that open exactly at `start_ms` are then full candles (emitted); trades before
        `start_ms` are not ours. Used to compare with exchange klines from a known boundary.
        """
        self._new_symbol(symbol, start_ms, prev_close)

    def remember_ids(self, symbol: str, times: Sequence[int], ids: Sequence[str]) -> None:
        """Rebuild the duplicate filter after a resume, from trades already aggregated."""
        sym = self.state.symbols.get(symbol)
        if sym is None:
            return
        for t, trade_id in zip(times, ids, strict=True):
            o = t - t % self._base_ms
            if not self._bucket_expired(sym, o):
                self._bucket(symbol, o).add(trade_id)

    def take(self) -> list[CoreCandle]:
        out, self.out = self.out, []
        return out

    def export_state(self) -> CoreState:
        self.state.dirty = list(self._dirty)
        return self.state

    # ------------------------------------------------------------ trade paths

    def _add(
        self,
        name: str,
        lv: Level,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        """Trades that all belong to the open base candle `lv`, first and last in place."""
        buckets = self._ids.get(name)
        if buckets is None:
            buckets = self._ids[name] = {}
        seen = buckets.get(lv.open_ms)
        if seen is None:
            seen = buckets[lv.open_ms] = set()
        n = len(ids)
        if seen.isdisjoint(ids):
            before = len(seen)
            seen.update(ids)
            if len(seen) - before != n:
                seen.difference_update(ids)
                self._add_dedup(name, lv, seen, times, prices, sizes, buys, ids)
                return
        else:
            self._add_dedup(name, lv, seen, times, prices, sizes, buys, ids)
            return
        hi = max(prices)
        lo = min(prices)
        if lv.cnt == 0:
            lv.ft = times[0]
            lv.fp = prices[0]
            lv.hi = hi
            lv.lo = lo
        else:
            if hi > lv.hi:
                lv.hi = hi
            if lo < lv.lo:
                lv.lo = lo
            if times[0] < lv.ft:  # a trade from before, delivered late within the wait
                lv.ft = times[0]
                lv.fp = prices[0]
        if times[-1] >= lv.lt:
            lv.lt = times[-1]
            lv.lp = prices[-1]
        lv.cnt += n
        lv.vol += sum(sizes)
        lv.turn += sum(map(mul, prices, sizes))
        lv.buy += sum(compress(sizes, buys))

    def _add_dedup(
        self,
        name: str,
        lv: Level,
        seen: set[str],
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        for i, trade_id in enumerate(ids):
            if trade_id in seen:
                self.state.counters.duplicates += 1
                continue
            seen.add(trade_id)
            _add_one(lv, times[i], prices[i], sizes[i], buys[i])

    def _feed_sorted(
        self,
        name: str,
        sym: SymbolState,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        n = len(times)
        base = sym.levels[0]
        base_plan = self.plan[0]
        limit = base.open_ms if base.active else self._base_limit(sym)
        i = 0
        if times[0] < limit:
            i = bisect_left(times, limit)
            for x in range(i):
                self._late(name, sym, times[x], prices[x], sizes[x], buys[x], ids[x])
            self._flush_revisions(name, sym)
        while i < n:
            t = times[i]
            if t >= sym.next_end:
                self._advance(name, sym, t)
                if sym.gaps or len(self._ids.get(name, ())) > _KEEP_BUCKETS:
                    self._prune(name, sym)
            if not base.active:
                base.open_ms = base_plan.floor(t)
                base.end_ms = base_plan.next_open(base.open_ms)
                base.active = True
                base.partial = False
                if base.end_ms < sym.next_end:
                    sym.next_end = base.end_ms
            j = bisect_left(times, base.end_ms, i)
            if i == 0 and j == n:
                self._add(name, base, times, prices, sizes, buys, ids)
            else:
                self._add(name, base, times[i:j], prices[i:j], sizes[i:j], buys[i:j], ids[i:j])
            i = j
        self._schedule(name, sym)

    def _late(
        self, name: str, sym: SymbolState, t: int, p: int, s: int, buy: bool, trade_id: str
    ) -> None:
        st = self.state
        if st.now_ms - t > self._window or t < sym.start_floor:
            st.counters.dropped += 1
            return
        seen = self._bucket(name, t - t % self._base_ms)
        if trade_id in seen:
            st.counters.duplicates += 1
            return
        seen.add(trade_id)
        st.counters.late += 1
        proven = max(sym.max_t, st.now_ms - self._latency)
        held = [False] * len(sym.levels)
        for k, lv in enumerate(sym.levels):
            feeder = self._feeders[k]
            if feeder >= 0 and held[feeder]:
                held[k] = True
            elif lv.active and t >= lv.open_ms:
                _add_one(lv, t, p, s, buy)
                held[k] = True
            elif k and not lv.active and t >= lv.closed_until:
                plan = self.plan[k]
                o = plan.floor(t)
                e = plan.next_open(o)
                if e > proven:
                    lv.open_ms, lv.end_ms, lv.active, lv.partial = o, e, True, False
                    _reset(lv)
                    _add_one(lv, t, p, s, buy)
                    held[k] = True
                else:
                    self._revise(name, sym, k, t, p, s, buy)
            elif self.plan[k].visible >= 0:
                self._revise(name, sym, k, t, p, s, buy)
        sym.next_end = min((lv.end_ms for lv in sym.levels if lv.active), default=NEVER)
        self._schedule(name, sym)

    # --------------------------------------------------------- closing candles

    def _advance_time(self, now: int) -> None:
        st = self.state
        if now > st.now_ms:
            st.now_ms = now
        deadlines = st.deadlines
        if deadlines and deadlines[0] <= st.now_ms:
            self._pop_due(st.now_ms)
        if self.config.updates_ms and st.now_ms // self.config.updates_ms > st.update_tick:
            st.update_tick = st.now_ms // self.config.updates_ms
            self._snapshots()

    def _pop_due(self, now: int) -> None:
        """Close what is due, deadline by deadline, symbols of one deadline in name order."""
        st = self.state
        deadlines = st.deadlines
        symbols = st.symbols
        boundary = now - self._latency
        while deadlines and deadlines[0] <= now:
            deadline = heapq.heappop(deadlines)
            names = st.due.pop(deadline)
            if len(names) > 1:
                names.sort()
            for name in names:
                sym = symbols[name]
                if sym.deadline != deadline:
                    continue  # rescheduled since
                sym.deadline = -1
                self._advance(name, sym, boundary)
                if sym.gaps or len(self._ids.get(name, ())) > _KEEP_BUCKETS:
                    self._prune(name, sym)
                self._schedule(name, sym)

    def _schedule(self, name: str, sym: SymbolState) -> None:
        if sym.next_end >= NEVER:
            return
        deadline = sym.next_end + self._latency
        if deadline != sym.deadline:
            sym.deadline = deadline
            due = self.state.due
            names = due.get(deadline)
            if names is None:
                due[deadline] = [name]
                heapq.heappush(self.state.deadlines, deadline)
            else:
                names.append(name)

    def _advance(self, name: str, sym: SymbolState, boundary: int) -> None:
        """Close every candle of `sym` that ends at or before `boundary`, finest level first."""
        end = NEVER
        for k, lv in enumerate(sym.levels):
            while lv.active and lv.end_ms <= boundary:
                self._close(name, sym, k)
            if lv.active and lv.end_ms < end:  # closing folds only into coarser levels
                end = lv.end_ms
        sym.next_end = end

    def _render(
        self, cnt: int, fp: int, lp: int, hi: int, lo: int, prev: int | None
    ) -> tuple[int, int, int, int]:
        if cnt == 0:
            if prev is None:  # pragma: no cover - a first candle always holds its first trade
                raise AssertionError("empty candle without a previous close")
            return prev, prev, prev, prev
        if self._bybit and prev is not None:
            return prev, (hi if hi > prev else prev), (lo if lo < prev else prev), lp
        return fp, hi, lo, lp

    def _close(self, name: str, sym: SymbolState, k: int) -> None:
        lv = sym.levels[k]
        plan = self.plan[k]
        cnt = lv.cnt
        if plan.visible >= 0:
            prev = lv.prev_close
            if cnt == 0:
                o = h = low = c = _known(prev)
            elif prev is not None and self._bybit:
                o, h, low, c = prev, (lv.hi if lv.hi > prev else prev), lv.lo, lv.lp
                if prev < low:
                    low = prev
            else:
                o, h, low, c = lv.fp, lv.hi, lv.lo, lv.lp
            gap = bool(sym.gaps) and self._overlaps_gap(sym, lv.open_ms, lv.end_ms)
            shown = not lv.partial and (cnt > 0 or self._emit_empty)
            if shown:
                self.state.counters.candles += 1
                self.out.append(
                    CoreCandle(
                        name, plan.visible, lv.open_ms, o, h, low, c, lv.vol, lv.turn, lv.buy,
                        cnt, 0, gap,
                    )
                )  # fmt: skip
            if self._window:
                records = lv.records
                records.append(
                    Record(
                        lv.open_ms, lv.end_ms, cnt, lv.ft, lv.fp, lv.lt, lv.lp, lv.hi, lv.lo,
                        lv.vol, lv.turn, lv.buy, lv.partial, gap, 0 if shown else -1, o, h, low, c,
                    )
                )  # fmt: skip
                if len(records) > _KEEP_RECORDS:
                    self._prune_records(lv)
            lv.prev_close = c
        elif cnt:
            lv.prev_close = lv.lp
        if cnt:
            for consumer in self._consumers[k]:
                self._fold(name, sym, consumer, lv)
        lv.closed_until = end = lv.end_ms
        if self._emit_empty:
            lv.open_ms = end
            lv.end_ms = plan.next_open(end)
            lv.partial = False
        else:
            lv.active = False
        lv.cnt = lv.vol = lv.turn = lv.buy = 0

    def _fold(self, name: str, sym: SymbolState, k: int, src: Level) -> None:
        """Fold the closed candle `src` (a finer level's) into level `k`'s open candle."""
        lv = sym.levels[k]
        while lv.active and lv.end_ms <= src.open_ms:
            self._close(name, sym, k)
        if not lv.active:
            plan = self.plan[k]
            lv.open_ms = plan.floor(src.open_ms)
            lv.end_ms = plan.next_open(lv.open_ms)
            lv.active = True
            lv.partial = False
        if lv.cnt == 0:
            lv.ft, lv.fp, lv.hi, lv.lo = src.ft, src.fp, src.hi, src.lo
        else:
            if src.hi > lv.hi:
                lv.hi = src.hi
            if src.lo < lv.lo:
                lv.lo = src.lo
        lv.lt, lv.lp = src.lt, src.lp
        lv.cnt += src.cnt
        lv.vol += src.vol
        lv.turn += src.turn
        lv.buy += src.buy

    def _prune_records(self, lv: Level) -> None:
        records = lv.records
        horizon = self.state.now_ms - self._window
        if records[0].end_ms > horizon:
            return
        count = 0
        for record in records:
            if record.end_ms > horizon:
                break
            count += 1
        if count:
            lv.pruned_close = records[count - 1].c
            del records[:count]

    def _bucket(self, name: str, open_ms: int) -> set[str]:
        buckets = self._ids.get(name)
        if buckets is None:
            buckets = self._ids[name] = {}
        seen = buckets.get(open_ms)
        if seen is None:
            seen = buckets[open_ms] = set()
        return seen

    def _bucket_expired(self, sym: SymbolState, open_ms: int) -> bool:
        """No trade of this base candle can be taken any more: its ids may be forgotten."""
        end = open_ms + self._base_ms
        return end <= self.state.now_ms - self._window and end <= self._base_limit(sym)

    def _base_limit(self, sym: SymbolState) -> int:
        """Trades before this time are late: their base-grid candle has closed.

        A dormant base (empty candles skipped) has candles that closed without ever opening:
        those that end by the proven time.
        """
        base = sym.levels[0]
        if base.active:
            return base.open_ms
        proven = max(sym.max_t, self.state.now_ms - self._latency)
        return max(base.closed_until, self.plan[0].floor(proven))

    def _prune(self, name: str, sym: SymbolState) -> None:
        buckets = self._ids.get(name)
        if buckets and len(buckets) > _KEEP_BUCKETS:
            for open_ms in [o for o in buckets if self._bucket_expired(sym, o)]:
                del buckets[open_ms]
        if sym.gaps:
            horizon = self.state.now_ms - self._window - self._max_len
            sym.gaps = [g for g in sym.gaps if g[1] >= horizon]

    @staticmethod
    def _overlaps_gap(sym: SymbolState, open_ms: int, end_ms: int) -> bool:
        return any(start < end_ms and stop >= open_ms for start, stop in sym.gaps)

    # --------------------------------------------------------------- revisions

    def _revise(
        self, name: str, sym: SymbolState, k: int, t: int, p: int, s: int, buy: bool
    ) -> None:
        """A late trade for a closed candle of level `k`: correct it and what derives from it."""
        lv = sym.levels[k]
        plan = self.plan[k]
        o = plan.floor(t)
        records = lv.records
        i = bisect_left(records, o, key=_OPEN)
        if i < len(records) and records[i].open_ms == o:
            _add_one(records[i], t, p, s, buy)
        else:
            e = plan.next_open(o)
            gap = bool(sym.gaps) and self._overlaps_gap(sym, o, e)
            record = Record(o, e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, gap, -1, 0, 0, 0, 0)
            _add_one(record, t, p, s, buy)
            records.insert(i, record)
        self._touched.setdefault(k, set()).add(o)

    def _flush_revisions(self, name: str, sym: SymbolState) -> None:
        """Emit each candle the late trades of one message changed, once, and what follows."""
        for k in sorted(self._touched):
            self._rerender(name, sym.levels[k], k, self._touched[k])
        self._touched.clear()

    def _rerender(self, name: str, lv: Level, k: int, touched: set[int]) -> None:
        records = lv.records
        i = bisect_left(records, min(touched), key=_OPEN)
        last_touched = max(touched)
        prev = records[i - 1].c if i else lv.pruned_close
        for j in range(i, len(records)):
            r = records[j]
            o, h, low, c = self._render(r.cnt, r.fp, r.lp, r.hi, r.lo, prev)
            changed = r.open_ms in touched or (o, h, low, c) != (r.o, r.h, r.l, r.c)
            if not changed:
                if r.open_ms > last_touched:
                    break
                prev = c
                continue
            close_changed = c != r.c
            r.o, r.h, r.l, r.c = o, h, low, c
            if not r.partial and (r.cnt or self._emit_empty):
                r.revision += 1
                if r.revision:
                    self.state.counters.revisions += 1
                else:
                    self.state.counters.candles += 1
                self._emit_record(name, k, r)
            prev = c
            if not close_changed and r.open_ms >= last_touched:
                break
        if records:
            lv.prev_close = records[-1].c

    def _emit_record(self, name: str, k: int, r: Record) -> None:
        self.out.append(
            CoreCandle(
                name, self.plan[k].visible, r.open_ms, r.o, r.h, r.l, r.c, r.vol, r.turn, r.buy,
                r.cnt, r.revision, r.gap,
            )
        )  # fmt: skip

    # -------------------------------------------------------------- snapshots

    def _snapshots(self) -> None:
        st = self.state
        for name in self._dirty:
            sym = st.symbols[name]
            for k, lv in enumerate(sym.levels):
                plan = self.plan[k]
                if plan.visible < 0 or not lv.active or lv.partial:
                    continue
                merged = Level(lv.open_ms, lv.end_ms, True)
                if lv.cnt:
                    _merge(merged, lv)
                feeder = plan.feeder
                while feeder >= 0:
                    part = sym.levels[feeder]
                    if part.active and part.cnt and part.open_ms >= lv.open_ms:
                        _merge(merged, part)
                    feeder = self._feeders[feeder]
                o, h, low, c = self._render(
                    merged.cnt, merged.fp, merged.lp, merged.hi, merged.lo, lv.prev_close
                )
                gap = bool(sym.gaps) and self._overlaps_gap(sym, lv.open_ms, lv.end_ms)
                st.counters.snapshots += 1
                self.out.append(
                    CoreCandle(
                        name, plan.visible, lv.open_ms, o, h, low, c, merged.vol, merged.turn,
                        merged.buy, merged.cnt, 0, gap, False,
                    )
                )  # fmt: skip
        self._dirty.clear()

    # ---------------------------------------------------------------- symbols

    def _new_symbol(self, name: str, start_ms: int, prev_close: int | None) -> SymbolState:
        levels = []
        for plan in self.plan:
            o = plan.floor(start_ms)
            levels.append(
                Level(
                    open_ms=o,
                    end_ms=plan.next_open(o),
                    active=True,
                    partial=prev_close is None or o != start_ms,
                    closed_until=o,
                    prev_close=prev_close,
                    pruned_close=prev_close,
                )
            )
        sym = SymbolState(levels=levels, start_floor=self.plan[0].floor(start_ms))
        sym.next_end = min(lv.end_ms for lv in levels)
        self.state.symbols[name] = sym
        self._schedule(name, sym)
        return sym
