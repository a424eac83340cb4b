"""The consumer interface of the original service, kept so that users' consumers keep working.

A consumer written for the original (`validate`, `setup`, `start`, `consume(list[dict])`, `stop`,
`_is_running`) runs here unchanged. Before `validate()` the manager sets `self.settings` (the
publish process's `PublishSettings`); a consumer with settings of its own reads them in
`validate()` and raises `ValueError` (or `common.errors.ConfigError`) with a clear message.

Built-in consumers override `consume_batch()` to get the raw candle JSON too.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from common.settings import PublishSettings
    from publish.batch import CandleBatch


class BaseConsumer:
    """Receives every closed candle (and revision) in stream order, in batches."""

    uses_group: ClassVar[bool] = False
    """True: replicas share the candles through a Redis consumer group (each candle once)."""

    history_candles: ClassVar[int] = 0
    """At start, `prime()` gets up to this many of the newest candles of each shard."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._is_running = False
        self.settings: PublishSettings | None = None
        self.logger = logging.getLogger(f"publish.consumers.{name}")

    @property
    def is_running(self) -> bool:
        return self._is_running

    def validate(self) -> None:
        """Check this consumer's settings; raise ValueError with a clear message if wrong."""

    async def setup(self) -> None:
        """Acquire resources (connections, files, listening sockets)."""

    async def start(self) -> None:
        self._is_running = True

    async def consume(self, data: list[dict[str, Any]]) -> None:
        """Handle a batch of candles as dicts (decimals as floats, as in the original)."""
        raise NotImplementedError

    async def consume_batch(self, batch: CandleBatch) -> None:
        """Handle a batch; the default hands `consume()` the candles as dicts."""
        await self.consume(batch.dicts())

    def wants_updates(self) -> bool:
        """True: also read the in-progress candles of `<p>:{k}:updates` (`consume_updates`)."""
        return False

    async def consume_updates(self, batch: CandleBatch) -> None:
        """Handle in-progress candles (`closed: false`); only called if `wants_updates()`."""

    def prime(self, raws: list[bytes]) -> None:
        """Candles from before this start (oldest first), to remember, not to deliver."""

    async def stop(self) -> None:
        self._is_running = False
