"""The candle core's state: plain msgspec Structs, so a checkpoint is one msgpack encode.

Prices and sizes are scaled integers (common.decimals, SCALE_DIGITS); turnover carries
PRODUCT_DIGITS. A candle's trade statistics (`cnt`, first/last trade, high/low, sums) are kept
separately from its rendered OHLC, because the open rule (Bybit: open = previous close) is applied
when the candle is rendered, and a revision of one candle may change the next one's open.
"""

from __future__ import annotations

import msgspec

NEVER = 1 << 62
"""A time later than any real one (no deadline, no end)."""


class Record(msgspec.Struct, array_like=True, gc=False):
    """A closed candle kept for the revision window: its statistics and what was emitted."""

    open_ms: int
    end_ms: int
    cnt: int
    ft: int
    fp: int
    lt: int
    lp: int
    hi: int
    lo: int
    vol: int
    turn: int
    buy: int
    partial: bool
    gap: bool
    revision: int  # of the last visible emission; -1 = never emitted (partial or skipped empty)
    o: int
    h: int
    l: int  # noqa: E741 - the candle's low, next to o/h/c
    c: int


class Level(msgspec.Struct, array_like=True, gc=False):
    """One symbol's candles at one level (an interval, or the hidden base grid).

    The next candle of a dormant level is a new `Level` (one allocation is cheaper than a store
    per field): hold `SymbolState.levels[k]`, not a `Level`, across anything that may fold.
    With `cnt` 0 the other statistics mean nothing (a close only sets `cnt` to 0): whatever
    adds to an empty candle sets them.
    """

    open_ms: int = 0
    end_ms: int = 0
    active: bool = False
    partial: bool = False
    closed_until: int = 0  # end of the last closed candle
    cnt: int = 0
    ft: int = 0
    fp: int = 0
    lt: int = 0
    lp: int = 0
    hi: int = 0
    lo: int = 0
    vol: int = 0
    turn: int = 0
    buy: int = 0
    prev_close: int | None = None  # close of the last closed candle
    pruned_close: int | None = None  # close of the candle before records[0]
    records: list[Record] = msgspec.field(default_factory=list)


class SymbolState(msgspec.Struct, array_like=True, gc=False):
    levels: list[Level]
    start_floor: int  # base-grid open of the first trade: trades before it are not ours
    max_t: int = -1  # latest trade time seen: proves every candle ending at or before it complete
    next_end: int = NEVER  # earliest end among active levels
    deadline: int = -1  # the deadline queued for this symbol (-1: none)
    gaps: list[tuple[int, int]] = msgspec.field(default_factory=list)


class Counters(msgspec.Struct, array_like=True, gc=False):
    trades_in: int = 0
    duplicates: int = 0
    late: int = 0
    dropped: int = 0
    revisions: int = 0
    candles: int = 0
    snapshots: int = 0


class CoreState(msgspec.Struct, array_like=True, gc=False):
    now_ms: int = -1  # stream time: max of trade times and clock entries seen
    symbols: dict[str, SymbolState] = msgspec.field(default_factory=dict)
    due: dict[int, list[str]] = msgspec.field(default_factory=dict)  # deadline -> symbols
    deadlines: list[int] = msgspec.field(default_factory=list)  # a heap of the keys of `due`
    dirty: list[str] = msgspec.field(default_factory=list)
    update_tick: int = 0
    counters: Counters = msgspec.field(default_factory=Counters)


class CoreCandle(msgspec.Struct, array_like=True, gc=False, frozen=True):
    """A candle out of the core: `interval` indexes the configured intervals; values scaled."""

    symbol: str
    interval: int
    open_ms: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    turnover: int
    buy_volume: int
    trade_count: int
    revision: int = 0
    gap: bool = False
    closed: bool = True
