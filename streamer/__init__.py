"""Compatibility with the original single-process service's import paths.

Consumers written for it (`from streamer.consumers.base import BaseConsumer`,
`from streamer.consumers import ConsumerManager`) keep working unchanged.
"""
