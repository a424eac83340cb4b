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
DEDUP_MIN_MS = 10_000  # the duplicate filter's memory, at least (see CoreBase._rotate_ids)


@dataclass(frozen=True, slots=True)
class CoreConfig:
    intervals: tuple[Interval, ...]
    waiter_latency_ms: int = 80  # 0 = waiter mode off: a candle closes at its end
    revision_window_ms: int = 10_000
    open_at_previous_close: bool = True  # Bybit's rule; False = open at the first trade
    emit_empty: bool = True
    updates_ms: int = 0  # > 0: snapshots of changed in-progress candles at this stream period
    # Trades a gap repair fetched back revise closed candles within this window (at least the
    # revision window); 0: the revision window only. See aggregate.revisions.
    repair_window_ms: int = 0


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
        self._repair_window = max(config.repair_window_ms, self._window)
        self._keep_records = self._repair_window > 0  # closed candles kept for revisions
        self._bybit = config.open_at_previous_close
        self._emit_empty = config.emit_empty
        self._max_len = max(level.max_len_ms for level in self.plan)
        self._updates_ms = config.updates_ms
        # A level is dormant between candles (no empty candle is opened, nor closed) when empty
        # candles are skipped, and always when it is the hidden base grid: nothing shows its
        # empty candles, and closing them one by one would cost a step per grid length per
        # symbol (`333ms,1s`: a 1 ms grid; issue 14).
        self._dormant = [not self._emit_empty or plan.visible < 0 for plan in self.plan]
        # A chain of levels, each fed by the one before, with no level ever dormant or all of
        # them: CandleCore._advance walks levels only while they have candles to close.
        chain = self._feeders == list(range(-1, len(self.plan) - 1))
        self._nested_always = chain and not any(self._dormant)
        self._nested_dormant = chain and all(self._dormant)
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
        # The duplicate filter: trade ids by symbol, in two generations of `_ids_ms` of stream
        # time each (see _rotate_ids).
        self._ids_ms = max(DEDUP_MIN_MS, self._window + self._latency)
        self._young: dict[str, set[str]] = {}
        self._old: dict[str, set[str]] = {}
        self._ids_epoch = -1
        self._rotate_at = 0
        self._touched: dict[int, set[int]] = {}  # level -> opens of records changed by late trades
        # Previews kept for CandleCore.closes_at: per symbol, the boundary from which its preview
        # would differ and the candles; the deadline they are for; the symbols with input since.
        self._ahead: dict[str, tuple[int, list[CoreCandle]]] = {}
        self._ahead_for = -1
        self._ahead_stale: set[str] = set()
        self.out: list[CoreCandle] = []

    def seed(self, symbol: str, start_ms: int, prev_close: int) -> None:
        """Warm start: `symbol`'s stream is complete from `start_ms` on, after a last price.

        Candles that open exactly at `start_ms` are then full candles (emitted); trades before
        `start_ms` are not ours. Used to compare with exchange klines from a known boundary.
        """
        self._forget_previews()
        self._new_symbol(symbol, start_ms, prev_close)

    def remember_ids(
        self, symbol: str, times: Sequence[int], ids: Sequence[str], now_ms: int
    ) -> None:
        """Rebuild the duplicate filter after a resume: one trades entry already aggregated,
        with the stream time before it (aggregate.shard re-reads them)."""
        top = max(times)
        top = top if top > now_ms else now_ms
        if top >= self._rotate_at:
            self._rotate_ids(top)
        young = self._young.get(symbol)
        if young is None:
            young = self._young[symbol] = set()
        old = self._old.get(symbol, ())
        young.update(i for i in ids if i not in old)

    @property
    def ids_horizon_ms(self) -> int:
        """Trades that arrived before stream time (now // ms - 1) * ms are forgotten by now."""
        return self._ids_ms

    def remembered_ids(self, symbol: str | None = None) -> int:
        """How many trade ids the duplicate filter holds (of `symbol`, or of all)."""
        if symbol is not None:
            return len(self._young.get(symbol, ())) + len(self._old.get(symbol, ()))
        return sum(map(len, self._young.values())) + sum(map(len, self._old.values()))

    def _rotate_ids(self, now_ms: int) -> None:
        """A new generation of the duplicate filter at each multiple of `_ids_ms` of stream time,
        judged at each trades entry by its time: max(stream time before it, its latest T). The
        young ids become the old, the old are forgotten (both after a jump of two or more). So
        an id is remembered for at least `_ids_ms` of stream time after its entry's time (at
        most twice that), whatever its T; every quiet symbol is forgotten too, and the filter is
        a function of the stream alone (a resume rebuilds it exactly).

        `_ids_ms` >= revision window + waiter latency: a copy that can still revise a closed
        candle, or change one closing, is caught. A copy arriving later than that would count
        again in a candle still open (a long one); Bybit never repeats a trade and ingest drops
        the copies it sees (ingest.dedup), so this filter only catches the few left around a
        shard's takeover, seconds apart."""
        epoch = now_ms // self._ids_ms
        self._old = self._young if epoch == self._ids_epoch + 1 else {}
        self._young = {}
        self._ids_epoch = epoch
        self._rotate_at = (epoch + 1) * self._ids_ms

    def _fresh(self, name: str, ids: Sequence[str]) -> bool:
        """True, and remembered, when the ids are all new and distinct; else nothing changes
        (the caller goes trade by trade)."""
        young = self._young.get(name)
        if young is None:
            young = self._young[name] = set()
        old = self._old.get(name)
        if (old is not None and not old.isdisjoint(ids)) or not young.isdisjoint(ids):
            return False
        before = len(young)
        young.update(ids)
        if len(young) - before == len(ids):
            return True
        young.difference_update(ids)  # repeated inside the message
        return False

    def _seen(self, name: str, trade_id: str) -> bool:
        """The id was seen; if not, it is remembered now."""
        old = self._old.get(name)
        if old is not None and trade_id in old:
            return True
        young = self._young.get(name)
        if young is None:
            young = self._young[name] = set()
        if trade_id in young:
            return True
        young.add(trade_id)
        return False

    def retain(self, symbols: Sequence[str]) -> list[str]:
        """Forget every symbol not in `symbols`: its series ends (no more candles, not even
        empty ones; its open candle is dropped, incomplete). Returns the names forgotten."""
        keep = set(symbols)
        gone = sorted(name for name in self.state.symbols if name not in keep)
        self.forget(gone)
        return gone

    def forget(self, names: Sequence[str]) -> None:
        """Drop the state of `names`; a trade of one later starts it afresh (a cold start)."""
        if not names:
            return
        self._forget_previews()
        st = self.state
        gone = set(names)
        for name in names:
            st.symbols.pop(name, None)
            self._dirty.pop(name, None)  # its trade ids go with the filter's next generations
        for deadline, due in st.due.items():
            if not gone.isdisjoint(due):
                st.due[deadline] = [name for name in due if name not in gone]

    def _forget_previews(self) -> None:
        """An input that may change any symbol's candles: no kept preview is used again."""
        self._ahead = {}

    def take(self) -> list[CoreCandle]:
        out, self.out = self.out, []
        return out

    def export_state(self) -> CoreState:
        self.state.dirty = list(self._dirty)
        return self.state

    def _render(
        self, cnt: int, fp: int, lp: int, hi: int, lo: int, prev: int | None
    ) -> tuple[int, int, int, int]:
        """A candle's OHLC from its statistics: the one statement of Bybit's open rule.

        With `open_at_previous_close` (Bybit's rule) a candle opens at the previous close, and its
        high and low include that open; the first candle of a series (no previous close) opens at
        its first trade. An empty candle is flat at the previous close. CandleCore._close and
        _close_any inline this for the hot path: a change here goes there too.
        """
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

    def _horizon(self, sym: SymbolState) -> int:
        """Closed candles of `sym` that end at or before this are let go: those the revision
        window no longer reaches, except, while a repair is open, from its start on (up to
        the repair window)."""
        now = self.state.now_ms
        horizon = now - self._window
        if sym.repairs:
            held = min(r.from_ms for r in sym.repairs)
            floor = now - self._repair_window
            if held < floor:
                held = floor
            if held < horizon:
                horizon = held
        return horizon

    def _prune_gaps(self, sym: SymbolState) -> None:
        """Forget gaps no kept candle overlaps, and repairs too old to revise anything."""
        if sym.repairs:
            oldest = self.state.now_ms - self._repair_window
            sym.repairs = [r for r in sym.repairs if r.to_ms >= oldest]
        horizon = self._horizon(sym) - self._max_len
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
