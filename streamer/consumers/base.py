"""Alias of `publish.consumers.base`, the original service's import path."""

from publish.consumers.base import BaseConsumer

__all__ = ["BaseConsumer"]
