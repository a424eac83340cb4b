"""The candle core: trade stream entries in, candles out. Pure: no I/O, no clock of its own.

Input, per Bybit message: the symbol and parallel sequences of trade times (ms), prices and sizes
(scaled integers, common.decimals), taker-is-buyer flags and trade ids, in the order Bybit sent
them. Plus clock ticks (stream time) and gap notices. Output: `CoreCandle`s in `out`.

Rules (docs/pipeline.md, "Candle rules", say them for users):
- Time is stream time only: max of trade times and clock ticks. A candle closes when stream time
  reaches its end + the waiter latency, or earlier when a trade of the same symbol at or after its
  end proves it complete (Bybit delivers a symbol's trades in order).
- Each interval on its own: a trade goes into every candle holding its T that is still open, and
  revises every closed one while stream time - T <= the revision window (emitted again with
  revision + 1, with the following candles whose open derives from its close); it is dropped,
  and counted, only from the candles where neither holds. Never pushed into the next candle. So
  an interval's candles do not depend on which other intervals are configured. (Trades go into
  the base grid only; one whose base candle has closed is *late* and goes to each level
  directly: aggregate.revisions.)
- Duplicate trade ids count once: ids are remembered for a generation of stream time, at least
  revision window + waiter latency (CoreBase._rotate_ids).
"""

# In this hot path a comparison is cheaper than a call to max()/min().
# ruff: noqa: PLR1730

from __future__ import annotations

import heapq
from bisect import bisect_left
from collections.abc import Callable, Sequence

from aggregate.corebase import CoreConfig, add_one, ascending, known, merge
from aggregate.revisions import LateTrades
from aggregate.speedups import summarize
from aggregate.state import NEVER, CoreCandle, CoreState, Level, Record, SymbolState

__all__ = ["CandleCore", "CoreConfig"]


class CandleCore(LateTrades):
    """One shard's candles for every symbol and interval, from one pass over its stream."""

    def __init__(self, config: CoreConfig, state: CoreState | None = None) -> None:
        super().__init__(config, state)
        # Close every candle of a symbol that ends at or before a time, finest level first:
        # the walk that fits the levels, chosen once.
        self._advance: Callable[[str, SymbolState, int], None] = self._advance_any
        if self._nested_always:
            self._advance = self._advance_nested
        elif self._nested_dormant:
            self._advance = self._advance_chain

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
        self._ahead_stale.add(symbol)  # its kept preview, if any, is not used (closes_at)
        top = times[0] if n == 1 else max(times)
        if top >= self._rotate_at or st.now_ms >= self._rotate_at:
            self._rotate_ids(top if top > st.now_ms else st.now_ms)
        sym = st.symbols.get(symbol)
        if sym is None:
            sym = self._new_symbol(symbol, times[0], None)
        st.counters.trades_in += n
        base = sym.levels[0]
        t_first = times[0]
        t_last = times[-1]
        done = False
        if t_last < sym.next_end and (
            n == 1 or (top == t_last and min(times) == t_first)
        ):  # first and last in place, closing nothing: the common case, no per-trade work
            if base.active:
                if t_first >= base.open_ms:
                    self._add(symbol, sym, base, times, prices, sizes, buys, ids)
                    done = True
            else:
                done = self._open_base(symbol, sym, base, times, prices, sizes, buys, ids)
        if not done:
            t_last = self._feed(symbol, sym, times, prices, sizes, buys, ids)
        if t_last > sym.max_t:
            sym.max_t = t_last
        if t_last > st.now_ms:
            st.now_ms = t_last
        if self._updates_ms:
            self._dirty[symbol] = None
            self._advance_time(t_last)
        elif st.deadlines and st.deadlines[0] <= st.now_ms:
            self._pop_due(st.now_ms)

    def _feed(
        self,
        symbol: str,
        sym: SymbolState,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> int:
        """Any message: trades split by base candle, late ones revised; returns its latest time."""
        if len(times) == 1 or ascending(times):
            self._feed_sorted(symbol, sym, times, prices, sizes, buys, ids)
            return times[-1]
        # out of order inside one message: one trade at a time, as if sent so
        for i in range(len(times) - 1):
            self._feed_sorted(
                symbol, sym, times[i : i + 1], prices[i : i + 1], sizes[i : i + 1],
                buys[i : i + 1], ids[i : i + 1],
            )  # fmt: skip
            if times[i] > sym.max_t:
                sym.max_t = times[i]
            self._advance_time(times[i])
        self._feed_sorted(symbol, sym, times[-1:], prices[-1:], sizes[-1:], buys[-1:], ids[-1:])
        return max(times)

    def _open_base(
        self,
        name: str,
        sym: SymbolState,
        base: Level,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> bool:
        """A dormant base (empty candles skipped, or hidden) and a message that fits in one base
        candle not closed yet, first and last in place: open the candle with it, and say so."""
        t_first = times[0]
        o = t_first - t_first % self._base_ms
        e = o + self._base_ms
        if times[-1] >= e:
            return False
        st = self.state
        if (  # the base limit is at most each of these; otherwise work it out
            (t_first < st.now_ms or t_first < sym.max_t or t_first < base.closed_until)
            and t_first < self._base_limit(sym)
        ):
            return False
        sym.next_end = e  # coarser ends are later base boundaries
        if not self._fresh(name, ids):  # ids seen before, or twice in this message
            base.open_ms = o
            base.end_ms = e
            base.active = True
            base.partial = False
            self._add(name, sym, base, times, prices, sizes, buys, ids)
        else:  # a new Level: one allocation instead of a store per field
            hi, lo, vol, turn, buy = summarize(prices, sizes, buys)
            sym.levels[0] = Level(
                o, e, True, False, base.closed_until, len(ids), t_first, prices[0], times[-1],
                prices[-1], hi, lo, vol, turn, buy, base.prev_close, base.pruned_close,
                base.records, base.pruned_until,
            )  # fmt: skip
        deadline = e + self._latency
        if deadline != sym.deadline:
            self._queue(name, sym, deadline)
        return True

    def clock(self, time_ms: int) -> None:
        """Ingest's clock: everything it received before `time_ms` is already in the stream."""
        self._advance_time(time_ms)

    def _add(
        self,
        name: str,
        sym: SymbolState,
        lv: Level,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        """Trades that all belong to the open base candle `lv`, first and last in place."""
        if not self._fresh(name, ids):
            self._add_dedup(name, lv, times, prices, sizes, buys, ids)
            return
        n = len(ids)
        hi, lo, vol, turn, buy = summarize(prices, sizes, buys)
        if lv.cnt == 0:  # its other fields are left from an earlier candle
            lv.ft, lv.fp, lv.lt, lv.lp, lv.hi, lv.lo = (
                times[0],
                prices[0],
                times[-1],
                prices[-1],
                hi,
                lo,
            )
            lv.cnt = n
            lv.vol = vol
            lv.turn = turn
            lv.buy = buy
            return
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
        lv.vol += vol
        lv.turn += turn
        lv.buy += buy

    def _add_dedup(
        self,
        name: str,
        lv: Level,
        times: Sequence[int],
        prices: Sequence[int],
        sizes: Sequence[int],
        buys: Sequence[bool],
        ids: Sequence[str],
    ) -> None:
        for i, trade_id in enumerate(ids):
            if self._seen(name, trade_id):
                self.state.counters.duplicates += 1
                continue
            add_one(lv, times[i], prices[i], sizes[i], buys[i])

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
                if sym.gaps:
                    self._prune_gaps(sym)
            if not base.active:
                base.open_ms = base_plan.floor(t)
                base.end_ms = base_plan.next_open(base.open_ms)
                base.active = True
                base.partial = False
                if base.end_ms < sym.next_end:
                    sym.next_end = base.end_ms
            j = bisect_left(times, base.end_ms, i)
            if i == 0 and j == n:
                self._add(name, sym, base, times, prices, sizes, buys, ids)
            else:
                self._add(name, sym, base, times[i:j], prices[i:j], sizes[i:j], buys[i:j], ids[i:j])
            i = j
        self._schedule(name, sym)

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
        due = st.due
        symbols = st.symbols
        latency = self._latency
        boundary = now - latency
        while deadlines and deadlines[0] <= now:
            deadline = heapq.heappop(deadlines)
            names = due.pop(deadline)
            if len(names) > 1:
                names.sort()
            for name in names:
                sym = symbols[name]
                if sym.deadline != deadline:
                    continue  # rescheduled since
                self._advance(name, sym, boundary)
                if sym.gaps:
                    self._prune_gaps(sym)
                if sym.next_end >= NEVER:
                    sym.deadline = -1
                else:  # the next deadline is later than this one
                    self._queue(name, sym, sym.next_end + latency)

    def previews(self) -> list[CoreCandle]:
        """The candles the next waiter deadline will close, as they stand now: for the writer
        to render while it waits (aggregate.output.CandleWriter.prepare), not at the deadline,
        where a boundary's candles wait for each other. Only between a boundary and its
        deadline, with the waiter on, and for the common case: levels nested and always open,
        a symbol with no gap whose candles are shown and close one per level. A late trade
        taken in before the deadline makes its preview unequal to the candle then closed, which
        is rendered anew. Each symbol's complete preview is kept for `closes_at`."""
        st = self.state
        self._ahead = {}
        self._ahead_stale = set()
        if not self._latency or not self._nested_always or not st.deadlines:
            return []
        deadline = st.deadlines[0]
        boundary = deadline - self._latency
        if st.now_ms < boundary:
            return []
        self._ahead_for = deadline
        out: list[CoreCandle] = []
        symbols = st.symbols
        ahead = self._ahead
        for name in st.due.get(deadline, ()):
            sym = symbols[name]
            if sym.deadline == deadline and not sym.gaps:
                start = len(out)
                until = self._preview(name, sym, boundary, out)
                if until > boundary:
                    ahead[name] = (until, out[start:])
        return out

    def closes_at(self, time_ms: int) -> list[CoreCandle] | None:
        """Exactly the candles `clock(time_ms)` would emit now, in its order, computed without
        closing anything; None unless that is one waiter deadline closing candles of the common
        kind only (`previews`), with no in-progress updates. The shard writes these before
        the core closes them (aggregate.shard: the deadline's write goes out at once, the
        bookkeeping of the close runs while Redis stores it). A symbol's kept preview is used
        while no input of its own came in since (`trades` marks it); a gap, repair, seed or a
        change of the symbol set drops them all."""
        st = self.state
        deadlines = st.deadlines
        if not self._latency or not self._nested_always or self._updates_ms or not deadlines:
            return None
        now = time_ms if time_ms > st.now_ms else st.now_ms
        deadline = deadlines[0]
        if deadline > now:
            return None
        for other in st.due:
            if other <= now and other != deadline:
                return None  # more than one deadline: left to `clock`
        boundary = now - self._latency
        ahead = self._ahead if self._ahead_for == deadline else {}
        stale = self._ahead_stale
        symbols = st.symbols
        out: list[CoreCandle] = []
        names = st.due[deadline]
        last = ""
        for name in sorted(names) if len(names) > 1 else names:
            if name == last:
                continue  # queued twice for this deadline: closed once
            last = name
            sym = symbols[name]
            if sym.deadline != deadline:
                continue  # rescheduled since
            if sym.gaps:
                return None
            kept = None if name in stale else ahead.get(name)
            if kept is not None and boundary < kept[0]:
                out += kept[1]
            elif self._preview(name, sym, boundary, out) <= boundary:
                return None
        return out

    def _preview(self, name: str, sym: SymbolState, boundary: int, out: list[CoreCandle]) -> int:
        """`previews` for one symbol: what `_advance_nested` would emit at `boundary`. Returns
        the boundary from which that would differ (the next end that would close), or 0 when
        the close is not of the kind previewed (what it appended then is incomplete)."""
        # The statistics each level will hold when it closes: its own, with the candle of the
        # level before folded in (`_close` folds it first, when it had trades). A partial
        # candle (a symbol's first, begun before its first trade) is not shown, but its trades
        # fold into the next level all the same.
        cnt = vol = turn = buy = hi = lo = fp = lp = 0
        until = NEVER
        for k, lv in enumerate(sym.levels):
            if lv.end_ms > boundary:
                return lv.end_ms if lv.end_ms < until else until
            following = self.plan[k].next_open(lv.end_ms)
            if following <= boundary:
                return 0  # more than one candle of it closes: left to the close
            if following < until:
                until = following
            if not cnt:
                cnt, vol, turn, buy = lv.cnt, lv.vol, lv.turn, lv.buy
                fp, hi, lo, lp = lv.fp, lv.hi, lv.lo, lv.lp
            elif lv.cnt:
                cnt, vol, turn, buy = cnt + lv.cnt, vol + lv.vol, turn + lv.turn, buy + lv.buy
                fp, hi, lo = lv.fp, max(hi, lv.hi), min(lo, lv.lo)
            if lv.partial:
                continue
            prev = lv.prev_close
            visible, o = self._visible[k], lv.open_ms
            if not cnt:
                if prev is None:
                    return 0
                out.append(CoreCandle(name, visible, o, prev, prev, prev, prev, 0, 0, 0, 0))
            elif prev is None or not self._bybit:
                out.append(CoreCandle(name, visible, o, fp, hi, lo, lp, vol, turn, buy, cnt))
            else:  # Bybit's open rule, as in `_close`
                out.append(CoreCandle(name, visible, o, prev, max(hi, prev), min(lo, prev), lp,
                                      vol, turn, buy, cnt))  # fmt: skip
        return until

    def _advance_nested(self, name: str, sym: SymbolState, boundary: int) -> None:
        """`_advance` when every level is always open and each nests the one before: ends never
        decrease along the levels, so the first level with nothing to close ends the walk."""
        plain = self._plain_empty
        levels = sym.levels
        for k, lv in enumerate(levels):
            if lv.end_ms > boundary:
                break
            while lv.end_ms <= boundary:
                if plain[k] and not lv.cnt and not lv.partial and not sym.gaps:
                    self._close_empty(name, lv, k)
                else:
                    self._close(name, sym, k)
        sym.next_end = levels[0].end_ms

    def _advance_chain(self, name: str, sym: SymbolState, boundary: int) -> None:
        """`_advance` when levels are dormant between candles and each nests the one before.

        Every open candle holds a time by which no open candle ends (a trade at or after an
        end proves that candle complete), so the ends of open candles never decrease along the
        levels: the first open one not due is the next end.
        """
        for k, lv in enumerate(sym.levels):
            if lv.active:
                if lv.end_ms > boundary:
                    sym.next_end = lv.end_ms
                    return
                self._close(name, sym, k)  # dormant then: nothing folds into it here
        sym.next_end = NEVER

    def _advance_any(self, name: str, sym: SymbolState, boundary: int) -> None:
        """Close every candle of `sym` that ends at or before `boundary`, finest level first."""
        end = NEVER
        for k, lv in enumerate(sym.levels):
            if lv.active:
                if lv.end_ms <= boundary:
                    self._close_due(name, sym, k, boundary)
                if lv.active and lv.end_ms < end:  # closing folds only into coarser levels
                    end = lv.end_ms
        sym.next_end = end

    def _close_due(self, name: str, sym: SymbolState, k: int, boundary: int) -> None:
        lv = sym.levels[k]
        plain = self._plain_empty[k]
        while lv.active and lv.end_ms <= boundary:
            if plain and not lv.cnt and not lv.partial and not sym.gaps:
                self._close_empty(name, lv, k)
            else:
                self._close(name, sym, k)

    def _close_empty(self, name: str, lv: Level, k: int) -> None:
        """`_close` for the most common candle of all: emitted, empty, no gap, fixed length."""
        o = lv.open_ms
        e = lv.end_ms
        c = known(lv.prev_close)
        self.state.counters.candles += 1
        self.out.append(CoreCandle(name, self.plan[k].visible, o, c, c, c, c, 0, 0, 0, 0))
        if self._keep_records:
            records = lv.records
            records.append(Record(o, e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, False, 0, c, c, c, c))
            if len(records) > self._prune_at[k]:
                self._prune_records(lv, self.state.now_ms - self._window)  # no gap: no repair
        lv.closed_until = lv.open_ms = e
        lv.end_ms = e + self.plan[k].fixed_ms

    def _close(self, name: str, sym: SymbolState, k: int) -> None:
        """Emit level `k`'s candle, keep its record, fold it into the levels it feeds."""
        lv = sym.levels[k]
        cnt = lv.cnt
        visible = self._visible[k]
        if cnt and visible >= 0 and not lv.partial and not sym.gaps:
            # The common candle (shown, with trades, no gap): _close_any, shortened.
            open_ms = lv.open_ms
            prev = lv.prev_close
            hi = lv.hi
            lo = lv.lo
            c = lv.lp
            vol = lv.vol
            turn = lv.turn
            buy = lv.buy
            if prev is None or not self._bybit:
                o, h, low = lv.fp, hi, lo
            else:  # Bybit's open rule, CoreBase._render inlined
                o, h, low = prev, (hi if hi > prev else prev), (lo if lo < prev else prev)
            self.state.counters.candles += 1
            self.out.append(CoreCandle(name, visible, open_ms, o, h, low, c, vol, turn, buy, cnt))
            if self._keep_records:
                records = lv.records
                horizon = self.state.now_ms - self._window  # no gap here, so no repair either
                if records and records[-1].end_ms <= horizon:
                    # all expired (a quiet symbol): gone at once, before they pile up
                    lv.pruned_close = records[-1].c
                    lv.pruned_until = records[-1].end_ms
                    records.clear()
                records.append(
                    Record(
                        open_ms, lv.end_ms, cnt, lv.ft, lv.fp, lv.lt, c, hi, lo, vol, turn, buy,
                        False, False, 0, o, h, low, c,
                    )
                )  # fmt: skip
                if len(records) > self._prune_at[k]:
                    self._prune_records(lv, horizon)
            lv.prev_close = c
        else:
            self._close_any(name, sym, k, lv)
        if cnt:
            for consumer in self._consumers[k]:
                self._fold(name, sym, consumer, lv)
        lv.closed_until = end = lv.end_ms
        if self._dormant[k]:
            lv.active = False
        else:
            lv.open_ms = end
            lv.end_ms = self.plan[k].next_open(end)
            lv.partial = False
        lv.cnt = 0  # its other fields are left as they are: see Level

    def _close_any(self, name: str, sym: SymbolState, k: int, lv: Level) -> None:
        """The candle's part of `_close`: emitted if shown, kept as a record, its close noted."""
        cnt = lv.cnt
        visible = self._visible[k]
        if visible < 0:
            if cnt:
                lv.prev_close = lv.lp
            return
        open_ms = lv.open_ms
        prev = lv.prev_close
        c = lv.lp if cnt else known(prev)
        vol, turn, buy = (lv.vol, lv.turn, lv.buy) if cnt else (0, 0, 0)
        if not cnt:  # Bybit's open rule, CoreBase._render inlined
            o = h = low = c
        elif prev is None or not self._bybit:
            o, h, low = lv.fp, lv.hi, lv.lo
        else:
            o, h, low = prev, max(lv.hi, prev), min(lv.lo, prev)
        gap = bool(sym.gaps) and self._overlaps_gap(sym, open_ms, lv.end_ms)
        shown = not lv.partial and (cnt > 0 or self._emit_empty)
        if shown:
            self.state.counters.candles += 1
            self.out.append(
                CoreCandle(name, visible, open_ms, o, h, low, c, vol, turn, buy, cnt, 0, gap)
            )
        if self._keep_records:
            records = lv.records
            horizon = self._horizon(sym)
            if records and records[-1].end_ms <= horizon:
                lv.pruned_close = records[-1].c  # all expired: gone at once
                lv.pruned_until = records[-1].end_ms
                records.clear()
            records.append(
                Record(
                    open_ms, lv.end_ms, cnt, lv.ft, lv.fp, lv.lt, lv.lp, lv.hi, lv.lo, vol, turn,
                    buy, lv.partial, gap, 0 if shown else -1, o, h, low, c,
                )
            )  # fmt: skip
            if len(records) > self._prune_at[k]:
                self._prune_records(lv, horizon)
        lv.prev_close = c

    def _fold(self, name: str, sym: SymbolState, k: int, src: Level) -> None:
        """Fold the closed candle `src` (a finer level's) into level `k`'s open candle."""
        lv = sym.levels[k]
        open_ms = src.open_ms
        while lv.active and lv.end_ms <= open_ms:
            self._close(name, sym, k)
        if not lv.active:  # the next candle of a dormant level: a new Level, one allocation
            fixed = self._fixed[k]
            if fixed:
                o = open_ms - open_ms % fixed
                e = o + fixed
            else:
                plan = self.plan[k]
                o = plan.floor(open_ms)
                e = plan.next_open(o)
            sym.levels[k] = Level(
                o, e, True, False, lv.closed_until, src.cnt, src.ft, src.fp,
                src.lt, src.lp, src.hi, src.lo, src.vol, src.turn, src.buy, lv.prev_close,
                lv.pruned_close, lv.records, lv.pruned_until,
            )  # fmt: skip
            return
        merge(lv, src)
