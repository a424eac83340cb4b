"""A pool of connections with the symbols spread over them (least topic characters first)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Protocol

from common.lifecycle import TaskSet
from common.wire import Category
from ingest.bybit.subscriptions import assign, topic_chars
from ingest.connection import Connection, OnFrame, OnGap, OnTrades, TopicsOf

log = logging.getLogger(__name__)


class OpenPool(Protocol):
    """Opens the pool with its per-frame hooks: the shards take one, and open their pool with
    their own methods (they both feed it symbols and are fed its frames)."""

    def __call__(
        self,
        *,
        on_trades: OnTrades,
        on_gap: OnGap,
        topics_of: TopicsOf | None = None,
        on_frame: OnFrame | None = None,
    ) -> Pool: ...


class Pool:
    def __init__(
        self,
        url: str,
        category: Category,
        size: int,
        *,
        ping_interval_s: float,
        dead_after_s: float,
        on_trades: OnTrades,
        on_gap: OnGap,
        tasks: TaskSet,
        stop: asyncio.Event,
        topics_of: TopicsOf | None = None,
        on_frame: OnFrame | None = None,
    ) -> None:
        self._topics_of = topics_of
        self._on_frame = on_frame
        self._url = url
        self._category = category
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        self._on_trades = on_trades
        self._on_gap = on_gap
        self._tasks = tasks
        self._stop = stop
        self.connections: list[Connection] = []
        for _ in range(size):
            self._open()

    def _open(self) -> Connection:
        conn = Connection(
            f"ws{len(self.connections)}",
            self._url,
            self._category,
            ping_interval_s=self._ping_interval_s,
            dead_after_s=self._dead_after_s,
            on_trades=self._on_trades,
            on_gap=self._on_gap,
            topics_of=self._topics_of,
            on_frame=self._on_frame,
        )
        self.connections.append(conn)
        self._tasks.spawn(conn.run(self._stop), name=f"connection-{conn.name}")
        return conn

    async def add(self, symbols: list[str]) -> None:
        have = {s for c in self.connections for s in c.desired}
        new = [s for s in symbols if s not in have]
        if not new:
            return
        placed, extra = assign(new, [topic_chars(c.desired) for c in self.connections])
        if extra:
            log.warning(
                "Bybit's 21,000 topic characters per connection: opening %d more connections",
                extra,
            )
            for _ in range(extra):
                self._open()
        for conn, chunk in zip(self.connections, placed, strict=False):
            if chunk:
                await conn.add(chunk)

    async def remove(self, symbols: list[str]) -> None:
        gone = set(symbols)
        removals = [
            conn.remove([s for s in conn.desired if s in gone])
            for conn in self.connections
            if gone & conn.desired
        ]
        await asyncio.gather(*removals)

    async def wait_subscribed(self, symbols: list[str], timeout_s: float) -> bool:
        """Wait until every connection holding one of `symbols` has all its acks back."""
        wanted = set(symbols)
        deadline = time.monotonic() + timeout_s
        for conn in self.connections:
            if not wanted & conn.desired:
                continue
            left = deadline - time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.settled.wait(), max(0.0, left))
            if not conn.settled.is_set():
                return False
        return True

    def open_gaps(self, symbols: list[str]) -> list[tuple[list[str], int]]:
        """Windows not reported yet (a connection down or resubscribing) that hold any of
        `symbols`: those of them it carries, and since when."""
        wanted = set(symbols)
        return [
            (sorted(wanted & conn.desired), conn.gap_from_ms)
            for conn in self.connections
            if conn.gap_from_ms is not None and wanted & conn.desired
        ]

    @property
    def connected(self) -> bool:
        return all(c.connected for c in self.connections if c.desired)

    def symbols(self) -> set[str]:
        return {s for c in self.connections for s in c.desired}
