"""Trades seen twice (around a reconnect or a shard takeover) are written once."""

from __future__ import annotations

from common.wire import Trade


class RecentIds:
    """At least the last `size` trade ids of one symbol (at most 2 × size), in two generations.

    When the young set is full it becomes the old one and the older is forgotten: bounded
    memory with set-speed lookups and no per-id bookkeeping (this runs for every trade).
    """

    __slots__ = ("_old", "_size", "_young")

    def __init__(self, size: int) -> None:
        self._size = size
        self._young: set[str] = set()
        self._old: set[str] = set()

    def __contains__(self, trade_id: str) -> bool:
        return trade_id in self._young or trade_id in self._old

    def add_all(self, trade_ids: list[str]) -> None:
        self._young.update(trade_ids)
        if len(self._young) >= self._size:
            self._old, self._young = self._young, set()

    def add(self, trade_id: str) -> bool:
        """Remember the id; False if it was already there."""
        if trade_id in self:
            return False
        self.add_all([trade_id])
        return True

    def isdisjoint(self, trade_ids: list[str]) -> bool:
        return self._young.isdisjoint(trade_ids) and self._old.isdisjoint(trade_ids)

    def __len__(self) -> int:
        return len(self._young) + len(self._old)


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
        self._recent(symbol).add_all(trade_ids)

    def fresh(self, symbol: str, trades: list[Trade]) -> list[Trade]:
        """The trades not seen before (usually the same list object: nothing copied)."""
        recent = self._ids.get(symbol)
        if recent is None:
            recent = self._recent(symbol)
        ids = [t.trade_id for t in trades]
        if recent.isdisjoint(ids):
            recent.add_all(ids)
            return trades
        keep = [t for t in trades if recent.add(t.trade_id)]
        self.dropped += len(trades) - len(keep)
        return keep

    def forget(self, symbols: list[str]) -> None:
        for symbol in symbols:
            self._ids.pop(symbol, None)
