"""Late trades and ingest gaps: closed candles emitted again, corrected, with revision + 1.

A late trade within the revision window goes into every level: an open candle simply includes
it, a closed one is corrected from its `Record` and emitted again, with the following candles
whose open derives from its close (Bybit's open rule). Never pushed into the next candle.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from operator import attrgetter

from aggregate.corebase import CoreBase, add_one, reset
from aggregate.state import NEVER, Level, Record, SymbolState

_OPEN = attrgetter("open_ms")


class LateTrades(CoreBase):
    """What `CandleCore` does with trades for candles already closed, and with gap notices."""

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

    def _late(
        self, name: str, sym: SymbolState, t: int, p: int, s: int, buy: bool, trade_id: str
    ) -> None:
        st = self.state
        if st.now_ms - t > self._window or t < sym.start_floor:
            st.counters.dropped += 1
            return
        seen = self._bucket(name, sym, t - t % self._base_ms)
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
                add_one(lv, t, p, s, buy)
                held[k] = True
            elif k and not lv.active and t >= lv.closed_until:
                plan = self.plan[k]
                o = plan.floor(t)
                e = plan.next_open(o)
                if e > proven:
                    lv.open_ms, lv.end_ms, lv.active, lv.partial = o, e, True, False
                    reset(lv)
                    add_one(lv, t, p, s, buy)
                    held[k] = True
                else:
                    self._revise(name, sym, k, t, p, s, buy)
            elif self.plan[k].visible >= 0:
                self._revise(name, sym, k, t, p, s, buy)
        sym.next_end = min((lv.end_ms for lv in sym.levels if lv.active), default=NEVER)
        self._schedule(name, sym)

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
