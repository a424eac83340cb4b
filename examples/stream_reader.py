"""A reader that must not miss a candle: every candle of every shard's candle stream, through
the reader library (`streamer.client`), from where it stopped last time.

    python -m examples.stream_reader redis://127.0.0.1:6390/0 my-reader [--prefix streamer]

Stop it (Ctrl-C, SIGTERM) and start it again: it goes on after the last candle it printed,
nothing missed, nothing twice. Candles come with exact `Decimal` prices and sizes; a revision
says it replaces the candle printed before at its time (keep the latest per symbol, interval and
open time). After an outage longer than the candle streams keep, the hole is filled from the
history store (a line on stderr says so).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from streamer.client import CandleReader


async def follow(url: str, name: str, prefix: str) -> None:
    async with CandleReader.from_url(url, name, prefix=prefix, start="latest") as reader:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, reader.stop)  # the position is saved on the way out
        async for candle, replaces in reader:
            label = candle.interval_label or f"{candle.interval}ms"
            note = " replaces" if replaces else ""
            print(
                f"{candle.symbol} {label} {candle.timestamp} o={candle.open} h={candle.high} "
                f"l={candle.low} c={candle.close} v={candle.volume} rev={candle.revision}{note}",
                flush=True,
            )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m examples.stream_reader",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("url", help="the pipeline's Redis, e.g. redis://127.0.0.1:6390/0")
    parser.add_argument("name", help="this reader's name: its position is kept under it")
    parser.add_argument("--prefix", default="streamer", help="STREAMER_REDIS_PREFIX")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the reader has started
        asyncio.run(follow(args.url, args.name, args.prefix))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
