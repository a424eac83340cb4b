"""Compatibility with the original single-process service's import paths, and the reader library.

Consumers written for it (`from streamer.consumers.base import BaseConsumer`,
`from streamer.consumers import ConsumerManager`) keep working unchanged. `streamer.client` is
the async library for downstream readers of the candle streams (docs/protocol.md,
"Reading candles from your code").
"""
