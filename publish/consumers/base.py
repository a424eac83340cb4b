"""The consumer interface of the original service, kept so that users' consumers keep working.

A consumer written for the original (`validate`, `setup`, `start`, `consume(list[dict])`, `stop`,
`_is_running`) runs here unchanged. Before `validate()` the manager sets `self.settings` (the
publish process's `PublishSettings`); a consumer with settings of its own reads them in
`validate()` and raises `ValueError` (or `common.errors.ConfigError`) with a clear message.

Built-in consumers override `consume_batch()` to get the raw candle JSON too (`batch.raws`, the
exact digits) or exact `Decimal` candles (`batch.views()`).

A consumer that raises gets the same batch again (capped backoff) and its position stays where
it was; after STREAMER_CONSUMER_MAX_FAILURES failures in a row it is stopped (publish/runner.py).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from common.keys import Keys
    from common.settings import PublishSettings
    from publish.batch import CandleBatch
    from publish.reader import StreamReader


class BaseConsumer:
    """Receives every closed candle (and revision) in stream order, in batches."""

    uses_group: ClassVar[bool] = False
    """True: the publish replicas share this consumer's candles through a Redis consumer group
    (`<STREAMER_PUBLISH_GROUP>:<name>`), so each candle reaches exactly one replica (a sink that
    must see each candle once however many replicas run: a database, a queue). False (the
    default): every replica sees every candle, from its own position (console, a WebSocket
    feed per replica)."""

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
        """Handle a batch; the default hands `consume()` the candles as dicts. Override it for
        the exact digits: `batch.raws` (candle JSON bytes) or `batch.views()` (Decimals)."""
        await self.consume(batch.dicts())

    def wants_updates(self) -> bool:
        """True: also read the in-progress candles of `<p>:{k}:updates` (`consume_updates`)."""
        return False

    async def consume_updates(self, batch: CandleBatch) -> None:
        """Handle in-progress candles (`closed: false`); only called if `wants_updates()`."""

    def stream_reader(
        self, client: aioredis.Redis, keys: Keys, shards: int, replica: str
    ) -> StreamReader | None:
        """A reader of its own, for a consumer that keeps its position with its output (the
        `postgres` consumer commits it with the rows); None: the publisher's usual readers."""
        return None

    def healthy(self) -> bool:
        """False turns the process's `/health` red (e.g. the consumer's database is away)."""
        return True

    def prime(self, raws: list[bytes]) -> None:
        """Candles from before this start (oldest first), to remember, not to deliver."""

    async def stop(self) -> None:
        self._is_running = False
