"""Trade stream entries into the candle core: decode, parse decimals, feed. Pure (no I/O).

A trade whose price or size is not a plain decimal the scale holds (common.decimals) is left out
of its message alone: the other trades go in, the bad one is reported (the shard counts and logs
it, rate-limited) and the candles holding its time are flagged `gap: true`, as for a gap entry.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from operator import attrgetter

from aggregate.candles import CandleCore
from common.decimals import SCALE_DIGITS, parse_scaled
from common.wire import (
    ClockEntry,
    GapEntry,
    RepairEntry,
    SeedEntry,
    Side,
    SymbolsEntry,
    Trade,
    TradesEntry,
    entry_decoder,
)

PRICE_CACHE_MAX = 200_000
_POW: tuple[int, ...] = tuple(10 ** (SCALE_DIGITS - n) for n in range(SCALE_DIGITS + 1))
_IS_BUY = {Side.BUY: True, Side.SELL: False}.__getitem__
_COLUMNS = attrgetter("time_ms", "price", "size", "side", "trade_id")


def _parse(text: str) -> int:
    """parse_scaled, with a shortcut for the plain digits the exchange sends; a price or size
    is never negative."""
    whole, dot, frac = text.partition(".")
    if whole.isascii() and whole.isdigit():
        if not dot:
            return int(whole) * _POW[0]
        if frac.isascii() and frac.isdigit() and len(frac) <= SCALE_DIGITS:
            return int(whole + frac) * _POW[len(frac)]
    value = parse_scaled(text)
    if value < 0:
        raise ValueError(f"negative: {text!r}")
    return value


class _Scaled(dict[str, int]):
    """Decimal text -> scaled integer; a lookup of a new text parses it (from C, via map)."""

    def __missing__(self, text: str) -> int:
        value = self[text] = _parse(text)
        return value


def good_trades(trades: Sequence[Trade]) -> tuple[list[Trade], list[tuple[Trade, str]]]:
    """The trades whose numbers parse, and the others with the reason."""
    good: list[Trade] = []
    bad: list[tuple[Trade, str]] = []
    for trade in trades:
        try:
            _parse(trade.price)
            _parse(trade.size)
        except ValueError as exc:
            bad.append((trade, str(exc)))
        else:
            good.append(trade)
    return good, bad


class EntryFeeder:
    """Feeds raw entry JSON to a core; remembers parsed decimal texts (prices repeat a lot)."""

    def __init__(self, core: CandleCore) -> None:
        self.core = core
        self._scaled = _Scaled()
        self.forgotten: list[str] = []  # symbols whose series a `symbols` entry ended

    def feed(self, payloads: Iterable[bytes]) -> list[str]:
        """Feed every entry; return a description of each entry or trade that was refused."""
        core = self.core
        if len(self._scaled) > PRICE_CACHE_MAX:
            self._scaled.clear()
        problems: list[str] = []
        for payload in payloads:
            try:
                entry = entry_decoder.decode(payload)
            except ValueError as exc:
                problems.append(f"bad stream entry: {exc}")
                continue
            if isinstance(entry, TradesEntry):
                if entry.trades:
                    self._trades(entry.symbol, entry.trades, problems)
            elif isinstance(entry, ClockEntry):
                core.clock(entry.time_ms)
            elif isinstance(entry, GapEntry):
                core.gap(entry.symbols, entry.from_ms, entry.to_ms, repairable=True)
            elif isinstance(entry, RepairEntry):
                core.repair(entry.symbols, entry.from_ms, entry.to_ms, entry.complete)
            elif isinstance(entry, SymbolsEntry):
                self.forgotten += core.retain(entry.symbols)
            elif isinstance(entry, SeedEntry):
                self._seed(entry, problems)
        return problems

    def _seed(self, entry: SeedEntry, problems: list[str]) -> None:
        if entry.symbol in self.core.state.symbols:
            return  # followed already: its own previous candle holds the close
        try:
            close = self._scaled[entry.close]
        except ValueError as exc:
            problems.append(f"bad seed of {entry.symbol}: close {entry.close!r}: {exc}")
            return
        self.core.seed(entry.symbol, entry.start_ms, close)

    def _trades(self, symbol: str, trades: Sequence[Trade], problems: list[str]) -> None:
        scale = self._scaled.__getitem__
        # Columns in C: one pass over the trades, then a map per column.
        times, prices, sizes, sides, ids = zip(*map(_COLUMNS, trades), strict=True)
        try:
            scaled_prices = list(map(scale, prices))
            scaled_sizes = list(map(scale, sizes))
        except ValueError:  # rare: the message's good trades alone, then the bad ones' gaps
            good, bad = good_trades(trades)
            if good:
                self._trades(symbol, good, problems)
            for trade, reason in bad:
                problems.append(f"bad trade of {symbol} at T={trade.time_ms}: {reason}")
                self.core.gap([symbol], trade.time_ms, trade.time_ms)
            return
        self.core.trades(symbol, times, scaled_prices, scaled_sizes, list(map(_IS_BUY, sides)), ids)
