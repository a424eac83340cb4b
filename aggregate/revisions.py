"""Late trades, ingest gaps and their repairs: closed candles emitted again with revision + 1.

A late trade (its base candle has closed) goes into every level on the level's own terms: an
open candle simply includes it, a closed one is corrected from its `Record` and emitted again
while stream time - T <= the revision window, with the following candles whose open derives from
its close (Bybit's open rule). Never pushed into the next candle.

Gap repair (ingest.repair): a gap entry opens a `Repair` per symbol; until its repair entry comes,
the symbol's closed candles from the gap's start are kept, and a trade inside the gap revises
them while stream time - T <= the repair window (longer than the revision window: the REST
requests take time). A candle it cannot reach (let go before the gap entry came, or older than
the window) drops it, counts it `unrepairable` and taints the repair. A repair entry closes the
symbol's repairs inside its window; for a symbol it names `complete` whose repairs are not
tainted, the gaps they came with are forgotten and every kept candle they flagged is written
again with `gap: false` (unless another gap still overlaps it).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from operator import attrgetter

from aggregate.corebase import CoreBase, add_one, reset
from aggregate.state import NEVER, Level, Record, Repair, SymbolState

_OPEN = attrgetter("open_ms")


class LateTrades(CoreBase):
    """What `CandleCore` does with trades for candles already closed, and with gap notices."""

    def gap(
        self, symbols: Sequence[str], from_ms: int, to_ms: int, *, repairable: bool = False
    ) -> None:
        """Trades of `symbols` (all, if empty) in [from_ms, to_ms] may be missing; with
        `repairable`, ingest may fetch them back (a gap entry: see the module's docstring)."""
        self._forget_previews()
        st = self.state
        horizon = st.now_ms - self._window
        for name in symbols or list(st.symbols):
            sym = st.symbols.get(name)
            if sym is None:
                continue
            sym.gaps.append((from_ms, to_ms))
            if repairable and self._keep_records:
                sym.repairs.append(Repair(from_ms, to_ms))
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

    def _late(
        self, name: str, sym: SymbolState, t: int, p: int, s: int, buy: bool, trade_id: str
    ) -> None:
        """A trade whose base candle has closed: into each level's candle on its own terms
        (candles.py's rules), so a level takes it as it would configured alone."""
        st = self.state
        if t < sym.start_floor:  # before the first candle of every level: not ours
            st.counters.dropped += 1
            return
        old = self._old.get(name)
        young = self._young.get(name)
        if (old is not None and trade_id in old) or (young is not None and trade_id in young):
            st.counters.duplicates += 1
            return
        recent = st.now_ms - t <= self._window
        repair = None if recent or not sym.repairs else self._repair_of(sym, t)
        if repair is not None:
            recent = st.now_ms - t <= self._repair_window
        proven = max(sym.max_t, st.now_ms - self._latency)
        held = [False] * len(sym.levels)
        taken = dropped = False
        for k, lv in enumerate(sym.levels):
            feeder = self._feeders[k]
            if feeder >= 0 and held[feeder]:  # its closed candle will fold in here
                held[k] = True
            elif (lv.active and t >= lv.open_ms) or (
                k and not lv.active and t >= lv.closed_until and self._open_for(lv, k, t, proven)
            ):
                add_one(lv, t, p, s, buy)
                held[k] = taken = True
            elif self.plan[k].visible < 0:
                pass  # a hidden base: only the levels it feeds count
            elif recent and self.plan[k].floor(t) >= lv.pruned_until:
                self._revise(name, sym, k, t, p, s, buy)
                taken = True
            else:
                dropped = True
        if dropped:
            st.counters.dropped += 1
            if repair is not None:
                repair.tainted = True
                st.counters.unrepairable += 1
        if not taken:
            return
        self._seen(name, trade_id)
        st.counters.late += 1
        sym.next_end = min((lv.end_ms for lv in sym.levels if lv.active), default=NEVER)
        self._schedule(name, sym)

    def _open_for(self, lv: Level, k: int, t: int, proven: int) -> bool:
        """A dormant level's candle holding `t` has not closed yet: open it (empty)."""
        plan = self.plan[k]
        o = plan.floor(t)
        e = plan.next_open(o)
        if e <= proven:
            return False
        lv.open_ms, lv.end_ms, lv.active, lv.partial = o, e, True, False
        reset(lv)
        return True

    @staticmethod
    def _repair_of(sym: SymbolState, t: int) -> Repair | None:
        for repair in sym.repairs:
            if repair.from_ms <= t <= repair.to_ms:
                return repair
        return None

    def _prune_records(self, lv: Level, horizon: int) -> None:
        """Let go the records that end at or before `horizon` (CoreBase._horizon)."""
        records = lv.records
        if records[0].end_ms > horizon:
            return
        count = 0
        for record in records:
            if record.end_ms > horizon:
                break
            count += 1
        if count:
            lv.pruned_close = records[count - 1].c
            lv.pruned_until = records[count - 1].end_ms
            del records[:count]

    def repair(
        self, symbols: Sequence[str], from_ms: int, to_ms: int, complete: Sequence[str]
    ) -> None:
        """A repair entry: the repairs of `symbols` inside [from_ms, to_ms] are closed; those of
        `complete` clear their candles' gap marks (see the module's docstring)."""
        self._forget_previews()
        st = self.state
        whole = set(complete)
        for name in symbols:
            sym = st.symbols.get(name)
            if sym is None or not sym.repairs:
                continue
            inside = [r for r in sym.repairs if from_ms <= r.from_ms and r.to_ms <= to_ms]
            if not inside:
                continue  # closed already (a repair written twice), or too old
            sym.repairs = [
                r for r in sym.repairs if not (from_ms <= r.from_ms and r.to_ms <= to_ms)
            ]
            if name not in whole or any(r.tainted for r in inside):
                continue
            # the gaps these repairs came with (not, say, a bad trade's inside the window)
            closed = {(r.from_ms, r.to_ms) for r in inside}
            sym.gaps = [g for g in sym.gaps if (g[0], g[1]) not in closed]
            self._clear(name, sym, from_ms, to_ms)

    def _clear(self, name: str, sym: SymbolState, from_ms: int, to_ms: int) -> None:
        """Write again, with `gap: false`, every kept candle over the window that went out
        flagged and that no gap left overlaps."""
        st = self.state
        for k, lv in enumerate(sym.levels):
            for r in lv.records:
                if (
                    r.gap
                    and from_ms < r.end_ms
                    and to_ms >= r.open_ms
                    and not self._overlaps_gap(sym, r.open_ms, r.end_ms)
                ):
                    r.gap = False
                    if not r.partial and (r.cnt or self._emit_empty):
                        r.revision += 1
                        st.counters.revisions += 1
                        st.counters.cleared += 1
                        self._emit_record(name, k, r)

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
            add_one(records[i], t, p, s, buy)
        else:
            e = plan.next_open(o)
            gap = bool(sym.gaps) and self._overlaps_gap(sym, o, e)
            record = Record(o, e, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, False, gap, -1, 0, 0, 0, 0)
            add_one(record, t, p, s, buy)
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
