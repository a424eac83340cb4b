"""A consumer written for the original service, with its import paths, registers and runs."""

from __future__ import annotations

from typing import Any

from publish.consumers import ConsumerManager as NewManager
from streamer.consumers import ConsumerManager
from streamer.consumers.base import BaseConsumer


class OriginalStyle(BaseConsumer):
    def __init__(self, name: str = "orig") -> None:
        super().__init__(name)
        self.seen: list[dict[str, Any]] = []

    def validate(self) -> None:
        pass

    async def setup(self) -> None:
        pass

    async def start(self) -> None:
        self._is_running = True

    async def consume(self, data: list[dict[str, Any]]) -> None:
        if self._is_running:
            self.seen.extend(data)

    async def stop(self) -> None:
        self._is_running = False


async def test_original_import_paths_work() -> None:
    assert ConsumerManager is NewManager
    ConsumerManager.register_consumer("orig-alias", OriginalStyle)
    consumer = OriginalStyle()
    await consumer.start()
    await consumer.consume([{"symbol": "BTCUSDT", "open": 1.5}])
    await consumer.stop()
    await consumer.consume([{"symbol": "ETHUSDT"}])
    assert consumer.seen == [{"symbol": "BTCUSDT", "open": 1.5}]
