"""Gap repair in the candle core: trades fetched back for a gap revise closed candles within the
repair window, a complete repair clears the gap marks, the rest stays flagged, and the output is
the same through a checkpoint at any point. Expected values come from the Decimal reference
(tests/support/expected.py) over every trade the exchange made, sent or not."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from aggregate import checkpoint
from aggregate.candles import CandleCore, CoreConfig
from aggregate.feed import EntryFeeder
from aggregate.output import CandleWriter
from aggregate.state import CoreCandle
from common.intervals import parse_intervals
from common.wire import (
    CandleView,
    ClockEntry,
    GapEntry,
    RepairEntry,
    Side,
    Trade,
    TradesEntry,
    candle_view_decoder,
    entry_decoder,
    entry_encoder,
)
from tests.support.expected import Key, LedgerTrade, check_series

T0 = 1_786_310_700_000  # a minute boundary
INTERVALS = parse_intervals("1s,5s")
CONFIG = CoreConfig(INTERVALS, 80, revision_window_ms=5_000, repair_window_ms=60_000)
SYMBOL = "BTCUSDT"
END_MS = T0 + 40_000


def _trade(n: int) -> Trade:
    """Trade n of the exchange: every 97 ms, prices wandering, both sides."""
    price = f"{100 + (n * 7) % 13}.{n % 10}"
    side = Side.BUY if n % 3 else Side.SELL
    return Trade(T0 + 200 + n * 97, price, f"0.{n % 9 + 1}", side, f"id{n}", n)


EXCHANGE = [_trade(n) for n in range((END_MS - T0 - 400) // 97)]


@dataclass(frozen=True)
class Drop:
    from_ms: int  # the exchange sent nothing of SYMBOL from here ...
    to_ms: int  # ... to here; ingest reports the gap when it is back
    repair_at_ms: int  # stream time when the repaired trades and the repair entry come
    complete: bool = True


def _stream(drop: Drop) -> tuple[list[bytes], list[Trade]]:
    """The trade stream ingest writes around the drop (clock entries every 50 ms, as live), and
    the trades it fetched back."""
    sent = [t for t in EXCHANGE if not drop.from_ms <= t.time_ms < drop.to_ms]
    missed = [t for t in EXCHANGE if drop.from_ms <= t.time_ms < drop.to_ms]
    events: list[tuple[int, int, bytes]] = []  # (stream time, order, payload)
    for trade in sent:
        events.append((trade.time_ms, 1, entry_encoder.encode(TradesEntry(SYMBOL, [trade]))))
    for clock_ms in range(T0, max(END_MS, drop.repair_at_ms) + 1_000, 50):
        events.append((clock_ms, 0, entry_encoder.encode(ClockEntry(clock_ms))))
    gap = GapEntry([SYMBOL], drop.from_ms - 30, drop.to_ms, "reconnect")
    events.append((drop.to_ms, 2, entry_encoder.encode(gap)))
    repair = RepairEntry([SYMBOL], gap.from_ms, gap.to_ms, [SYMBOL] if drop.complete else [])
    events.append((drop.repair_at_ms, 3, entry_encoder.encode(TradesEntry(SYMBOL, missed))))
    events.append((drop.repair_at_ms, 4, entry_encoder.encode(repair)))
    events.sort(key=lambda e: (e[0], e[1]))
    return [payload for _, _, payload in events], missed


def _restored(core: CandleCore, fed: list[bytes]) -> CandleCore:
    """What a resume gives: the state through the checkpoint's JSON, the duplicate filter
    rebuilt from the trades before (aggregate.shard re-reads them)."""
    saved = checkpoint.Checkpoint(checkpoint.VERSION, "x", "1-0", "0-0", [], core.export_state())
    fresh = CandleCore(CONFIG, checkpoint.decoder.decode(checkpoint.encoder.encode(saved)).core)
    now = -1
    for payload in fed:
        entry = entry_decoder.decode(payload)
        if isinstance(entry, TradesEntry) and entry.trades:
            times = [t.time_ms for t in entry.trades]
            fresh.remember_ids(entry.symbol, times, [t.trade_id for t in entry.trades], now)
            now = max(now, *times)
        elif isinstance(entry, ClockEntry):
            now = max(now, entry.time_ms)
    return fresh


def _run(
    payloads: list[bytes], restarts: tuple[int, ...] = ()
) -> tuple[list[CoreCandle], CandleCore]:
    core = CandleCore(CONFIG)
    out: list[CoreCandle] = []
    for i, payload in enumerate(payloads):
        if i in restarts:
            core = _restored(core, payloads[:i])
        assert EntryFeeder(core).feed([payload]) == []
        out += core.take()
    return out, core


def _views(candles: list[CoreCandle]) -> list[CandleView]:
    writer = CandleWriter(INTERVALS, "linear")
    return [candle_view_decoder.decode(writer.encode(c)) for c in candles if c.closed]


def _latest(views: list[CandleView]) -> dict[Key, CandleView]:
    out: dict[Key, CandleView] = {}
    for v in views:
        key = (v.symbol, v.interval, v.timestamp)
        assert key not in out or v.revision == out[key].revision + 1, f"revision skipped: {v}"
        out[key] = v
    return out


def _ledger(trades: list[Trade]) -> list[LedgerTrade]:
    return [
        LedgerTrade(SYMBOL, t.time_ms, Decimal(t.price), Decimal(t.size), t.side is Side.BUY,
                    t.trade_id)
        for t in trades
    ]  # fmt: skip


def _over(view: CandleView, drop: Drop) -> bool:
    return view.timestamp < drop.to_ms and view.timestamp + view.interval > drop.from_ms - 30


def test_a_complete_repair_equals_the_exchange_and_clears_every_mark() -> None:
    """A 3.5 s drop (revision window 5 s); its trades come back 12 s later, past the revision
    window but within the repair window: every candle equals the exchange's trades, and the
    candles that went out flagged are written again with gap: false."""
    drop = Drop(T0 + 3_000, T0 + 6_500, T0 + 18_500)
    payloads, missed = _stream(drop)
    candles, core = _run(payloads)
    views = _views(candles)
    latest = _latest(views)
    check_series(_ledger(EXCHANGE), INTERVALS, latest, END_MS, {1000: 30, 5000: 6})
    assert [v for v in latest.values() if v.gap] == []
    flagged = {(v.interval, v.timestamp) for v in views if v.gap}
    over = {(v.interval, v.timestamp) for v in latest.values() if _over(v, drop)}
    assert flagged == over and len(over) == 4 + 2  # 1s: 3..6 s, 5s: 0..10 s
    assert core.state.counters.late == len(missed) and core.state.counters.unrepairable == 0
    assert core.state.counters.cleared == len(over)
    assert core.state.symbols[SYMBOL].repairs == [] and core.state.symbols[SYMBOL].gaps == []


def test_through_a_checkpoint_at_any_point_the_candles_are_the_same() -> None:
    drop = Drop(T0 + 3_000, T0 + 6_500, T0 + 18_500)
    payloads, _ = _stream(drop)
    straight, _ = _run(payloads)
    marks = [i for i, p in enumerate(payloads) if not p.startswith(b'{"type":"clock"')]
    for restarts in ((marks[60], marks[80]), tuple(range(0, len(payloads), 37))):
        resumed, _ = _run(payloads, restarts)
        assert resumed == straight


def test_a_partial_repair_adds_its_trades_and_keeps_the_marks() -> None:
    drop = Drop(T0 + 3_000, T0 + 6_500, T0 + 18_500, complete=False)
    payloads, _ = _stream(drop)
    candles, core = _run(payloads)
    latest = _latest(_views(candles))
    check_series(_ledger(EXCHANGE), INTERVALS, latest, END_MS, {1000: 30, 5000: 6})
    assert {k for k, v in latest.items() if v.gap} == {
        k for k, v in latest.items() if _over(v, drop)
    }
    assert core.state.counters.cleared == 0 and core.state.symbols[SYMBOL].repairs == []


def test_trades_older_than_the_repair_window_are_unrepairable() -> None:
    """The repair comes 61 s after the drop began: its trades older than the repair window
    (60 s) are dropped and counted; the younger ones go in; the marks stay."""
    drop = Drop(T0 + 3_000, T0 + 6_500, T0 + 3_000 + 61_000)
    payloads, missed = _stream(drop)
    candles, core = _run(payloads)
    latest = _latest(_views(candles))
    counters = core.state.counters
    too_old = [t for t in missed if t.time_ms < drop.repair_at_ms - 60_000]
    assert counters.unrepairable == len(too_old) > 0 and counters.cleared == 0
    assert counters.late == len(missed) - len(too_old)
    assert all(v.gap for v in latest.values() if _over(v, drop))
    # every candle is the one the trades that got in give
    got_in = [t for t in EXCHANGE if t not in too_old]
    check_series(_ledger(got_in), INTERVALS, latest, END_MS, {1000: 30})


def test_a_drop_longer_than_the_revision_window_is_repaired_where_candles_are_kept() -> None:
    """The drop (11 s) outlasts the revision window (5 s): its first 1s candles were let go
    before the gap entry came. Their trades are unrepairable (counted); the kept candles take
    theirs, and the gap marks stay (the repair is not whole)."""
    drop = Drop(T0 + 3_000, T0 + 14_000, T0 + 20_000)
    payloads, missed = _stream(drop)
    candles, core = _run(payloads)
    latest = _latest(_views(candles))
    counters = core.state.counters
    assert 0 < counters.unrepairable < len(missed) and counters.cleared == 0
    # flagged: what the gap entry found within the revision window, and the 5s candle open then
    flagged = [
        v
        for v in latest.values()
        if _over(v, drop) and v.timestamp + v.interval > drop.to_ms - 5_000
    ]
    assert len(flagged) == 5 + 2 and all(v.gap for v in flagged)
    # the 5s candles were all kept: they hold every trade; so do the 1s candles from the last
    # let go on, and the ones after the drop (each opens at the close before it)
    kept_from = min(v.timestamp for v in latest.values() if v.interval == 1000 and v.revision > 1)
    exact = {k: v for k, v in latest.items() if v.interval == 5000 or v.timestamp >= kept_from}
    check_series(_ledger(EXCHANGE), INTERVALS, exact, T0, {5000: 6})
    assert drop.from_ms < kept_from <= drop.to_ms - 5_000


def test_a_complete_repair_leaves_the_mark_of_another_gap_inside_its_window() -> None:
    """A trade with a bad price inside the drop (aggregate.feed flags its candles, not
    repairable): the complete repair clears every mark but the ones that trade left."""
    drop = Drop(T0 + 3_000, T0 + 6_500, T0 + 18_500)
    payloads, _ = _stream(drop)
    bad_ms = T0 + 4_400
    bad = b'{"type":"trades","symbol":"%s","trades":[[%d,"1e5","1","Buy","bad",0]]}' % (
        SYMBOL.encode(), bad_ms,
    )  # fmt: skip
    at = next(i for i, p in enumerate(payloads) if p.startswith(b'{"type":"gap"'))
    core = CandleCore(CONFIG)
    feeder = EntryFeeder(core)
    candles: list[CoreCandle] = []
    for i, payload in enumerate(payloads):
        problems = feeder.feed([payload, bad] if i == at else [payload])
        assert len(problems) == (1 if i == at else 0)
        candles += core.take()
    latest = _latest(_views(candles))
    flagged = {(v.interval, v.timestamp - T0) for v in latest.values() if v.gap}
    assert flagged == {(1000, 4_000)}  # (the 5s candle at 0 is the cold start's partial one)
    assert core.state.counters.cleared > 0
