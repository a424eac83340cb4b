"""A Redis pub/sub subscriber: the candles the `redis` consumer publishes, as they come.

    python -m examples.pubsub_subscriber redis://127.0.0.1:6390/0 [--channel klines]

Each message is a JSON array of candles (STREAMER_REDIS_CHANNEL). Numbers are read as `Decimal`,
so the exchange's digits stay exact. Pub/sub keeps nothing: what is published while the
subscriber is away is lost to it (a reconnect resumes at the live moment). A reader that must
not miss anything reads the candle streams instead (examples/stream_reader.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from decimal import Decimal

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError


async def follow(url: str, channel: str) -> None:
    """Until Ctrl-C or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    client = aioredis.Redis.from_url(url)
    try:
        while not stop.is_set():
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(channel)
                while not stop.is_set():
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                    if message is not None and message["type"] == "message":
                        for candle in json.loads(message["data"], parse_float=Decimal):
                            show(candle)
            except RedisConnectionError as exc:
                print(f"connection lost ({exc}); reconnecting", file=sys.stderr, flush=True)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1)
            finally:
                # Bounded: redis-py's PubSub.aclose can wait forever for its socket to close
                # (redis/redis-py#3941); this one is done with it either way.
                with contextlib.suppress(TimeoutError, RedisConnectionError):
                    await asyncio.wait_for(pubsub.aclose(), 2)  # type: ignore[no-untyped-call]  # redis-py
    finally:
        await client.aclose()


def show(candle: dict[str, object]) -> None:
    label = candle.get("interval_label") or f"{candle['interval']}ms"
    print(
        f"{candle['symbol']} {label} {candle['timestamp']} c={candle['close']} "
        f"v={candle['volume']} rev={candle['revision']}",
        flush=True,
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.pubsub_subscriber",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="the pipeline's Redis, e.g. redis://127.0.0.1:6390/0")
    parser.add_argument("--channel", default="klines", help="STREAMER_REDIS_CHANNEL")
    args = parser.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the loop has started
        asyncio.run(follow(args.url, args.channel))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
