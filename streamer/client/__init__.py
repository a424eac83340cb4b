"""A small async library for readers of the candle streams that must not miss a candle.

    from streamer.client import CandleReader

    async with CandleReader.from_url("redis://127.0.0.1:6390/0", "my-bot") as reader:
        async for candle, replaces in reader:
            ...  # candle.close is a Decimal; replaces: a revision of a candle you may hold

It finds the shards in `<p>:meta`, reads every shard's candle stream `<p>:{k}:klines` from
the position it stored under `<p>:{k}:reader:<name>`, hands out each candle with exact
`Decimal` values and whether it replaces one handed out before, and fills a hole that a trim of
the stream left while it was away from the history store. The client shape is redis-py's
(`from_url`, `async with`, `aclose()`). See streamer/client/reader.py for the guarantees.
"""

from common.wire import CandleView
from streamer.client.reader import CandleReader, FillReport, Read, ReaderError

__all__ = ["CandleReader", "CandleView", "FillReport", "Read", "ReaderError"]
