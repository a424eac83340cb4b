"""Trades seen twice (around a reconnect or a shard takeover) are written once."""

from __future__ import annotations

from collections import deque

from common.wire import Trade


class RecentIds:
    """The last `size` trade ids of one symbol, as a set with FIFO eviction."""

    __slots__ = ("_order", "_seen", "_size")

    def __init__(self, size: int) -> None:
        self._size = size
        self._seen: set[str] = set()
        self._order: deque[str] = deque()

    def add(self, trade_id: str) -> bool:
        """Remember the id; False if it was already there."""
        if trade_id in self._seen:
            return False
        self._seen.add(trade_id)
        self._order.append(trade_id)
        if len(self._order) > self._size:
            self._seen.discard(self._order.popleft())
        return True

    def __len__(self) -> int:
        return len(self._order)


class Deduper:
    def __init__(self, per_symbol: int = 4096) -> None:
        self._per_symbol = per_symbol
        self._ids: dict[str, RecentIds] = {}
        self.dropped = 0

    def _recent(self, symbol: str) -> RecentIds:
        recent = self._ids.get(symbol)
        if recent is None:
            recent = self._ids[symbol] = RecentIds(self._per_symbol)
        return recent

    def seed(self, symbol: str, trade_ids: list[str]) -> None:
        recent = self._recent(symbol)
        for trade_id in trade_ids:
            recent.add(trade_id)

    def fresh(self, symbol: str, trades: list[Trade]) -> list[Trade]:
        """The trades not seen before (usually the same list object: nothing copied)."""
        add = self._recent(symbol).add
        keep = [add(t.trade_id) for t in trades]
        if all(keep):
            return trades
        self.dropped += keep.count(False)
        return [t for t, k in zip(trades, keep, strict=True) if k]

    def forget(self, symbols: list[str]) -> None:
        for symbol in symbols:
            self._ids.pop(symbol, None)
