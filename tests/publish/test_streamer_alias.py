"""A consumer written for the original service imports from `streamer.consumers` and works."""

from __future__ import annotations

import publish.consumers
from streamer.consumers import BaseConsumer, ConsumerManager
from streamer.consumers.base import BaseConsumer as BaseFromModule
from tests.publish.test_manager import Recorder


async def test_original_import_paths_are_the_same_classes() -> None:
    assert BaseConsumer is BaseFromModule is publish.consumers.BaseConsumer
    assert ConsumerManager is publish.consumers.ConsumerManager
    ConsumerManager.register_consumer("orig-alias", Recorder)
    consumer = Recorder()
    await consumer.start()
    await consumer.consume([{"symbol": "BTCUSDT", "open": 1.5}])
    await consumer.stop()
    await consumer.consume([{"symbol": "ETHUSDT"}])
    assert consumer.got == [{"symbol": "BTCUSDT", "open": 1.5}]
