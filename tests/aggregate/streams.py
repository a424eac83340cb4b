"""Random trade streams (hypothesis) and a driver that feeds one to the core or the reference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import strategies as st

from aggregate import checkpoint
from aggregate.candles import CandleCore, CoreConfig
from common.decimals import PRODUCT_DIGITS, SCALE_DIGITS, parse_scaled
from tests.aggregate.reference import CandleValue, Reference

SYMBOLS = ("AAA", "BBB", "CCC")


@dataclass(frozen=True)
class Msg:
    symbol: str
    trades: tuple[tuple[int, str, str, bool, str], ...]  # T, price, size, buy, id


@dataclass(frozen=True)
class Clock:
    time_ms: int


@dataclass(frozen=True)
class Gap:
    symbols: tuple[str, ...]
    from_ms: int
    to_ms: int


Event = Msg | Clock | Gap


@st.composite
def decimals(draw: st.DrawFn, low: int, high: int, digits: int) -> str:
    """A decimal text with exactly `digits` decimals (Bybit sends the instrument's digits)."""
    units = draw(st.integers(low, high))
    text = str(Decimal(units).scaleb(-digits))
    return text if "E" not in text else f"{Decimal(units).scaleb(-digits):.{digits}f}"


@st.composite
def streams(
    draw: st.DrawFn,
    start_ms: int,
    step_ms: int,
    late_ms: int,
    dup_ms: int,
    messages: tuple[int, int] = (1, 30),
) -> list[Event]:
    """Mostly in-order messages, with clock ticks, gaps, re-sent trades and late trades.

    Prices have 1 to 8 decimals (one count per symbol, as an instrument's tick), sizes 0 to 8
    (down to 0.00000001). A re-sent message comes within `dup_ms` of stream time of its first
    sending (the duplicate filter's promise, aggregate.corebase).
    """
    t = start_ms + draw(st.integers(0, step_ms * 4))
    now = t
    price_digits = {name: draw(st.integers(1, 8)) for name in SYMBOLS}
    size_digits = {name: draw(st.integers(0, 8)) for name in SYMBOLS}
    events: list[Event] = []
    sent: list[tuple[int, Msg]] = []
    serial = 0
    for _ in range(draw(st.integers(*messages))):
        kind = draw(st.sampled_from(["trades"] * 6 + ["clock", "gap", "dup", "late", "unordered"]))
        recent = [msg for at, msg in sent if now - at <= dup_ms]
        if kind == "dup" and recent:
            msg = draw(st.sampled_from(recent[-8:]))
            events.append(Msg(msg.symbol, msg.trades[: draw(st.integers(1, len(msg.trades)))]))
            continue
        if kind == "clock":
            tick = t + draw(st.integers(0, step_ms * 3))
            now = max(now, tick)
            events.append(Clock(tick))
            continue
        if kind == "gap":
            names = tuple(draw(st.sets(st.sampled_from(SYMBOLS), max_size=2)))
            start = t - draw(st.integers(0, late_ms * 2))
            events.append(Gap(names, start, start + draw(st.integers(0, step_ms * 2))))
            continue
        symbol = draw(st.sampled_from(SYMBOLS))
        trades = []
        if kind == "late":
            times = [t - draw(st.integers(1, late_ms * 2))]
        else:
            times = []
            for _ in range(draw(st.integers(1, 4))):
                t += draw(st.integers(0, step_ms))
                times.append(t)
            if kind == "unordered":
                times = draw(st.permutations(times))
        digits = price_digits[symbol]
        for time_ms in times:
            serial += 1
            price = draw(decimals(9_990 * 10 ** (digits - 1), 10_010 * 10 ** (digits - 1), digits))
            size = draw(decimals(1, 5 * 10 ** size_digits[symbol], size_digits[symbol]))
            trades.append((time_ms, price, size, draw(st.booleans()), f"id{serial}"))
        msg = Msg(symbol, tuple(trades))
        now = max(now, *times)
        sent.append((now, msg))
        events.append(msg)
    return events


Emitted = dict[tuple[str, str, int], list[tuple[int, CandleValue]]]


def run_reference(ref: Reference, events: list[Event]) -> Emitted:
    for event in events:
        if isinstance(event, Msg):
            ref.message(
                event.symbol,
                [(t, Decimal(p), Decimal(v), buy, tid) for t, p, v, buy, tid in event.trades],
            )
        elif isinstance(event, Clock):
            ref.clock(event.time_ms)
        else:
            ref.gap(list(event.symbols), event.from_ms, event.to_ms)
    out: Emitted = defaultdict(list)
    for key, revision, value in ref.emitted:
        out[key].append((revision, value))
    return dict(out)


def feed_core(core: CandleCore, event: Event) -> None:
    if isinstance(event, Msg):
        trades = event.trades
        core.trades(
            event.symbol,
            [tr[0] for tr in trades],
            [parse_scaled(tr[1]) for tr in trades],
            [parse_scaled(tr[2]) for tr in trades],
            [tr[3] for tr in trades],
            [tr[4] for tr in trades],
        )
    elif isinstance(event, Clock):
        core.clock(event.time_ms)
    else:
        core.gap(list(event.symbols), event.from_ms, event.to_ms)


def scaled(value: int, digits: int = SCALE_DIGITS) -> Decimal:
    return Decimal(value).scaleb(-digits)


def _values(core: CandleCore, labels: list[str], out: Emitted) -> None:
    for c in core.take():
        assert c.closed
        value: CandleValue = (
            scaled(c.open), scaled(c.high), scaled(c.low), scaled(c.close),
            scaled(c.volume), scaled(c.turnover, PRODUCT_DIGITS), c.trade_count,
            scaled(c.buy_volume), c.gap,
        )  # fmt: skip
        out[(c.symbol, labels[c.interval], c.open_ms)].append((c.revision, value))


def restored(core: CandleCore, seen: list[Event]) -> CandleCore:
    """What a restart gives: the state through a checkpoint's JSON, the duplicate filter rebuilt
    from the trades before (aggregate.shard re-reads them from the stream, with stream time)."""
    saved = checkpoint.Checkpoint(checkpoint.VERSION, "x", "1-0", "0-0", [], core.export_state())
    state = checkpoint.decoder.decode(checkpoint.encoder.encode(saved)).core
    fresh = CandleCore(core.config, state)
    now = -1
    for event in seen:
        if isinstance(event, Msg):
            times = [tr[0] for tr in event.trades]
            fresh.remember_ids(event.symbol, times, [tr[4] for tr in event.trades], now)
            now = max(now, *(tr[0] for tr in event.trades))
        elif isinstance(event, Clock):
            now = max(now, event.time_ms)
    return fresh


def run_core(config: CoreConfig, events: list[Event], restart_at: int = -1) -> Emitted:
    """The core's candles; `restart_at`: restored from a checkpoint before that event."""
    core = CandleCore(config)
    out: Emitted = defaultdict(list)
    labels = [interval.label for interval in config.intervals]
    for i, event in enumerate(events):
        if i == restart_at:
            core = restored(core, events[:i])
        feed_core(core, event)
        _values(core, labels, out)
    return dict(out)
