"""Alias of `publish.consumers`, the original service's import path."""

from publish.consumers import BaseConsumer, ConsumerManager

__all__ = ["BaseConsumer", "ConsumerManager"]
