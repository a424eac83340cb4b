"""Random trade streams (hypothesis) and a driver that feeds one to the core or the reference."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from decimal import Decimal

from hypothesis import strategies as st

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
def streams(draw: st.DrawFn, start_ms: int, step_ms: int, late_ms: int) -> list[Event]:
    """Mostly in-order messages, with clock ticks, gaps, re-sent trades and late trades."""
    t = start_ms + draw(st.integers(0, step_ms * 4))
    events: list[Event] = []
    sent: list[Msg] = []
    serial = 0
    for _ in range(draw(st.integers(1, 30))):
        kind = draw(st.sampled_from(["trades"] * 6 + ["clock", "gap", "dup", "late", "unordered"]))
        if kind == "dup" and sent:
            msg = draw(st.sampled_from(sent))
            events.append(Msg(msg.symbol, msg.trades[: draw(st.integers(1, len(msg.trades)))]))
            continue
        if kind == "clock":
            events.append(Clock(t + draw(st.integers(0, step_ms * 3))))
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
        for time_ms in times:
            serial += 1
            price = Decimal(draw(st.integers(9_990, 10_010))) / 100
            size = Decimal(draw(st.integers(1, 5_000))) / 1000
            trades.append((time_ms, str(price), str(size), draw(st.booleans()), f"id{serial}"))
        msg = Msg(symbol, tuple(trades))
        sent.append(msg)
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


def run_core(config: CoreConfig, events: list[Event]) -> Emitted:
    core = CandleCore(config)
    out: Emitted = defaultdict(list)
    labels = [interval.label for interval in config.intervals]
    for event in events:
        feed_core(core, event)
        for c in core.take():
            assert c.closed
            value: CandleValue = (
                scaled(c.open), scaled(c.high), scaled(c.low), scaled(c.close),
                scaled(c.volume), scaled(c.turnover, PRODUCT_DIGITS), c.trade_count,
                scaled(c.buy_volume), c.gap,
            )  # fmt: skip
            out[(c.symbol, labels[c.interval], c.open_ms)].append((c.revision, value))
    return dict(out)
