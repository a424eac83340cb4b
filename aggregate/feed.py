"""Trade stream entries into the candle core: decode, parse decimals, feed. Pure (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable

from aggregate.candles import CandleCore
from common.decimals import parse_scaled
from common.wire import ClockEntry, GapEntry, Side, TradesEntry, entry_decoder

_BUY = Side.BUY
PRICE_CACHE_MAX = 200_000


class EntryFeeder:
    """Feeds raw entry JSON to a core; remembers parsed decimal texts (prices repeat a lot)."""

    def __init__(self, core: CandleCore) -> None:
        self.core = core
        self._scaled: dict[str, int] = {}

    def feed(self, payloads: Iterable[bytes]) -> list[str]:
        """Feed every entry; return a description of each entry or trade that was refused."""
        core = self.core
        scaled = self._scaled
        if len(scaled) > PRICE_CACHE_MAX:
            scaled.clear()
        problems: list[str] = []
        for payload in payloads:
            try:
                entry = entry_decoder.decode(payload)
            except ValueError as exc:
                problems.append(f"bad stream entry: {exc}")
                continue
            if isinstance(entry, TradesEntry):
                trades = entry.trades
                try:
                    core.trades(
                        entry.symbol,
                        [t.time_ms for t in trades],
                        [scaled.get(t.price) or self._parse(t.price) for t in trades],
                        [scaled.get(t.size) or self._parse(t.size) for t in trades],
                        [t.side is _BUY for t in trades],
                        [t.trade_id for t in trades],
                    )
                except ValueError as exc:
                    problems.append(f"bad trade of {entry.symbol}: {exc}")
            elif isinstance(entry, ClockEntry):
                core.clock(entry.time_ms)
            elif isinstance(entry, GapEntry):
                core.gap(entry.symbols, entry.from_ms, entry.to_ms)
        return problems

    def _parse(self, text: str) -> int:
        value = self._scaled[text] = parse_scaled(text)
        return value
