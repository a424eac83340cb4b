"""Trade stream entries into the candle core: decode, parse decimals, feed. Pure (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable
from operator import attrgetter

from aggregate.candles import CandleCore
from common.decimals import SCALE_DIGITS, parse_scaled
from common.wire import ClockEntry, GapEntry, Side, TradesEntry, entry_decoder

PRICE_CACHE_MAX = 200_000
_POW: tuple[int, ...] = tuple(10 ** (SCALE_DIGITS - n) for n in range(SCALE_DIGITS + 1))
_IS_BUY = {Side.BUY: True, Side.SELL: False}.__getitem__
_COLUMNS = attrgetter("time_ms", "price", "size", "side", "trade_id")


def _parse(text: str) -> int:
    """parse_scaled, with a shortcut for the plain digits the exchange sends."""
    whole, dot, frac = text.partition(".")
    if whole.isascii() and whole.isdigit():
        if not dot:
            return int(whole) * _POW[0]
        if frac.isascii() and frac.isdigit() and len(frac) <= SCALE_DIGITS:
            return int(whole + frac) * _POW[len(frac)]
    return parse_scaled(text)


class _Scaled(dict[str, int]):
    """Decimal text -> scaled integer; a lookup of a new text parses it (from C, via map)."""

    def __missing__(self, text: str) -> int:
        value = self[text] = _parse(text)
        return value


class EntryFeeder:
    """Feeds raw entry JSON to a core; remembers parsed decimal texts (prices repeat a lot)."""

    def __init__(self, core: CandleCore) -> None:
        self.core = core
        self._scaled = _Scaled()

    def feed(self, payloads: Iterable[bytes]) -> list[str]:
        """Feed every entry; return a description of each entry or trade that was refused."""
        core = self.core
        scale = self._scaled.__getitem__
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
                if not entry.trades:
                    continue
                # Columns in C: one pass over the trades, then a map per column.
                times, prices, sizes, sides, ids = zip(*map(_COLUMNS, entry.trades), strict=True)
                try:
                    core.trades(
                        entry.symbol, times, list(map(scale, prices)), list(map(scale, sizes)),
                        list(map(_IS_BUY, sides)), ids,
                    )  # fmt: skip
                except ValueError as exc:
                    problems.append(f"bad trade of {entry.symbol}: {exc}")
            elif isinstance(entry, ClockEntry):
                core.clock(entry.time_ms)
            elif isinstance(entry, GapEntry):
                core.gap(entry.symbols, entry.from_ms, entry.to_ms)
        return problems
