"""The candle core's foundation: configuration, exact merging, per-symbol bookkeeping.

aggregate.candles (the trade and closing paths) and aggregate.revisions (late trades, gaps)
build on `CoreBase`; the rules are in aggregate.candles' docstring.
"""

# In this hot path a comparison is cheaper than a call to max()/min().
# ruff: noqa: PLR1730

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from operator import le

from aggregate.plan import DAY_MS, LevelPlan, plan_levels
from aggregate.state import NEVER, CoreCandle, CoreState, Level, Record, SymbolState
from common.intervals import Interval

KEEP_RECORDS = 8  # closed candles per level before expired ones are looked for, at least
KEEP_BUCKETS = 8  # id sets per symbol before expired ones are looked for (more is harmless)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    intervals: tuple[Interval, ...]
    waiter_latency_ms: int = 80  # 0 = waiter mode off: a candle closes at its end
    revision_window_ms: int = 10_000
    open_at_previous_close: bool = True  # Bybit's rule; False = open at the first trade
    emit_empty: bool = True
    updates_ms: int = 0  # > 0: snapshots of changed in-progress candles at this stream period


def ascending(times: Sequence[int]) -> bool:
    return all(map(le, times, islice(times, 1, None)))


def add_one(lv: Level | Record, t: int, p: int, s: int, buy: bool) -> None:
    """Add one trade; `t` ties go after what is there (it arrived later)."""
    if lv.cnt == 0:  # its other fields may be left from an earlier candle (see Level)
        lv.ft = lv.lt = t
        lv.fp = lv.lp = lv.hi = lv.lo = p
        lv.cnt = 1
        lv.vol = s
        lv.turn = s * p
        lv.buy = s if buy else 0
        return
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


def merge(lv: Level, src: Level) -> None:
    """Fold `src` (a later stretch of time) into `lv`."""
    if lv.cnt == 0:  # its other fields may be left from an earlier candle (see Level)
        lv.ft, lv.fp, lv.hi, lv.lo = src.ft, src.fp, src.hi, src.lo
        lv.cnt, lv.vol, lv.turn, lv.buy = src.cnt, src.vol, src.turn, src.buy
    else:
        if src.hi > lv.hi:
            lv.hi = src.hi
        if src.lo < lv.lo:
            lv.lo = src.lo
        lv.cnt += src.cnt
        lv.vol += src.vol
        lv.turn += src.turn
        lv.buy += src.buy
    lv.lt, lv.lp = src.lt, src.lp


def known(prev: int | None) -> int:
    if prev is None:  # pragma: no cover - a first candle always holds its first trade
        raise AssertionError("empty candle without a previous close")
    return prev


def reset(lv: Level) -> None:
    lv.cnt = lv.vol = lv.turn = lv.buy = 0


class CoreBase:
    """State, configuration and the helpers both the trade paths and the revisions use."""

    def __init__(self, config: CoreConfig, state: CoreState | None = None) -> None:
        self.config = config
        self.plan: list[LevelPlan] = plan_levels(config.intervals)
        self._consumers: list[list[int]] = [[] for _ in self.plan]
        for index, level in enumerate(self.plan):
            if level.feeder >= 0:
                self._consumers[level.feeder].append(index)
        self._feeders = [level.feeder for level in self.plan]
        self._visible = [level.visible for level in self.plan]
        self._fixed = [level.fixed_ms for level in self.plan]
        self._base_ms = self.plan[0].fixed_ms
        self._latency = config.waiter_latency_ms
        self._window = config.revision_window_ms
        self._bybit = config.open_at_previous_close
        self._emit_empty = config.emit_empty
        self._max_len = max(level.max_len_ms for level in self.plan)
        self._updates_ms = config.updates_ms
        # A chain of levels, each fed by the one before, with empty candles emitted (no level
        # ever dormant) or not: CandleCore._advance walks levels only while they have candles
        # to close.
        chain = self._feeders == list(range(-1, len(self.plan) - 1))
        self._nested_always = self._emit_empty and chain
        self._nested_dormant = not self._emit_empty and chain
        # Levels whose empty candles take the short path (CandleCore._close_empty).
        self._plain_empty = [
            self._emit_empty and plan.visible >= 0 and plan.fixed_ms > 0 for plan in self.plan
        ]
        # Records per level before expired ones are looked for: twice what the window holds,
        # so that a look finds about half of them expired (keeping more is harmless).
        self._prune_at = [
            min(64, max(KEEP_RECORDS, 2 * (self._window // (plan.fixed_ms or DAY_MS) + 1)))
            for plan in self.plan
        ]
        self.state = state if state is not None else CoreState()
        self._dirty: dict[str, None] = dict.fromkeys(self.state.dirty)
        self._ids: dict[str, dict[int, set[str]]] = {}
        self._touched: dict[int, set[int]] = {}  # level -> opens of records changed by late trades
        self.out: list[CoreCandle] = []

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
                self._bucket(symbol, sym, o).add(trade_id)

    def take(self) -> list[CoreCandle]:
        out, self.out = self.out, []
        return out

    def export_state(self) -> CoreState:
        self.state.dirty = list(self._dirty)
        return self.state

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

    def _schedule(self, name: str, sym: SymbolState) -> None:
        if sym.next_end >= NEVER:
            return
        deadline = sym.next_end + self._latency
        if deadline != sym.deadline:
            self._queue(name, sym, deadline)

    def _queue(self, name: str, sym: SymbolState, deadline: int) -> None:
        """Close `name`'s due candles at `deadline` (stream time); an earlier entry goes stale."""
        sym.deadline = deadline
        due = self.state.due
        names = due.get(deadline)
        if names is None:
            due[deadline] = [name]
            heapq.heappush(self.state.deadlines, deadline)
        else:
            names.append(name)

    def _bucket(self, name: str, sym: SymbolState, open_ms: int) -> set[str]:
        buckets = self._buckets(name, sym)
        seen = buckets.get(open_ms)
        if seen is None:
            seen = buckets[open_ms] = set()
        return seen

    def _buckets(self, name: str, sym: SymbolState) -> dict[int, set[str]]:
        """`name`'s id sets by base-grid open; about to take one more, so the expired ones go
        when there are many."""
        buckets = self._ids.get(name)
        if buckets is None:
            buckets = self._ids[name] = {}
        elif len(buckets) >= KEEP_BUCKETS:
            # _bucket_expired, for every bucket at once
            last = min(self.state.now_ms - self._window, self._base_limit(sym)) - self._base_ms
            for open_ms in [o for o in buckets if o <= last]:
                del buckets[open_ms]
        return buckets

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

    def _prune_gaps(self, sym: SymbolState) -> None:
        horizon = self.state.now_ms - self._window - self._max_len
        sym.gaps = [g for g in sym.gaps if g[1] >= horizon]

    @staticmethod
    def _overlaps_gap(sym: SymbolState, open_ms: int, end_ms: int) -> bool:
        return any(start < end_ms and stop >= open_ms for start, stop in sym.gaps)

    def _emit_record(self, name: str, k: int, r: Record) -> None:
        self.out.append(
            CoreCandle(
                name, self.plan[k].visible, r.open_ms, r.o, r.h, r.l, r.c, r.vol, r.turn, r.buy,
                r.cnt, r.revision, r.gap,
            )
        )  # fmt: skip

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
                    merge(merged, lv)
                feeder = plan.feeder
                while feeder >= 0:
                    part = sym.levels[feeder]
                    if part.active and part.cnt and part.open_ms >= lv.open_ms:
                        merge(merged, part)
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
