"""Consumers: where candles go. `from publish.consumers import ConsumerManager, BaseConsumer`."""

from publish.consumers.base import BaseConsumer
from publish.consumers.manager import ConsumerManager

__all__ = ["BaseConsumer", "ConsumerManager"]
