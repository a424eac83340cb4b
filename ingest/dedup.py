"""Trades seen twice (around a reconnect or a shard takeover) are written once."""

from __future__ import annotations

from common.wire import Trade


class RecentIds:
    """At least the last `size` trade ids of one symbol (at most 2 × size), in two generations.

    When the young set is full it becomes the old one and the older is forgotten: bounded
    memory with set-speed lookups and no per-id bookkeeping (this runs for every trade).
    """

    __slots__ = ("old", "size", "young")

    def __init__(self, size: int) -> None:
        self.size = size
        self.young: set[str] = set()
        self.old: set[str] = set()

    def __contains__(self, trade_id: str) -> bool:
        return trade_id in self.young or trade_id in self.old

    def rotate(self) -> None:
        self.old, self.young = self.young, set()

    def add_all(self, trade_ids: list[str]) -> None:
        self.young.update(trade_ids)
        if len(self.young) >= self.size:
            self.rotate()

    def add(self, trade_id: str) -> bool:
        """Remember the id; False if it was already there."""
        if trade_id in self:
            return False
        self.add_all([trade_id])
        return True

    def __len__(self) -> int:
        return len(self.young) + len(self.old)


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
        young, old = recent.young, recent.old
        if len(trades) == 1:  # most messages: one trade, no set building
            trade_id = trades[0].trade_id
            if trade_id in young or trade_id in old:
                self.dropped += 1
                return []
            young.add(trade_id)
            if len(young) >= recent.size:
                recent.rotate()
            return trades
        ids = [t.trade_id for t in trades]
        if young.isdisjoint(ids) and old.isdisjoint(ids):
            recent.add_all(ids)
            return trades
        keep = [t for t in trades if recent.add(t.trade_id)]
        self.dropped += len(trades) - len(keep)
        return keep

    def unsee(self, symbol: str, trade_ids: list[str]) -> None:
        """These trades were never written after all (ingest.writer's on_dropped): a copy of
        them (a gap repair) is welcome."""
        recent = self._ids.get(symbol)
        if recent is not None:
            recent.young.difference_update(trade_ids)
            recent.old.difference_update(trade_ids)

    def forget(self, symbols: list[str]) -> None:
        for symbol in symbols:
            self._ids.pop(symbol, None)
