"""A consumer of your own: append every candle as one JSON line to a file.

Written against the original service's interface (BaseConsumer, ConsumerManager), so the same
class works there and here. Two ways to run it:

    # 1. let `python -m publish` import this module, which registers the consumer "file":
    STREAMER_CONSUMER_MODULES=examples.custom_consumer_example \
    KLINES_FILE=klines.jsonl python -m publish console file

    # 2. or run this file, which registers it and starts the publisher with the names given:
    KLINES_FILE=klines.jsonl python examples/custom_consumer_example.py file console

(An installed package can instead declare it as an entry point:
`[project.entry-points."streamer.consumers"] file = "mypackage.module:FileConsumer"`.)

Two things every sink should do, shown here: keep the exact digits (the candle's own JSON, or
`batch.views()` for Decimals; never floats), and never block the event loop (the disk write runs
in a worker thread, so the WebSocket feed and the other consumers go on meanwhile). A write that
fails raises: the publisher hands the same batch again, its position kept.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import IO, Any

from publish.batch import CandleBatch
from publish.consumers import ConsumerManager
from publish.consumers.base import BaseConsumer


class FileConsumer(BaseConsumer):
    """Appends one JSON object per candle to $KLINES_FILE (default klines.jsonl), exactly as the
    aggregator wrote it."""

    def __init__(self, name: str = "file") -> None:
        super().__init__(name)
        self.path = Path("klines.jsonl")
        self._file: IO[bytes] | None = None

    def validate(self) -> None:
        # Settings of your own: read them here and fail with a clear message.
        self.path = Path(os.environ.get("KLINES_FILE", "klines.jsonl"))
        if not self.path.parent.is_dir():
            raise ValueError(f"KLINES_FILE: folder {str(self.path.parent)!r} does not exist")

    async def setup(self) -> None:
        self._file = await asyncio.to_thread(self.path.open, "ab")

    async def start(self) -> None:
        self._is_running = True

    async def consume_batch(self, batch: CandleBatch) -> None:
        """The candles' JSON bytes as written: every digit kept (a float would round them)."""
        if self._is_running:
            await asyncio.to_thread(self._write, b"".join(raw + b"\n" for raw in batch.raws))

    async def consume(self, data: list[dict[str, Any]]) -> None:
        """The original service's interface (it has no raw JSON): numbers as it gives them."""
        if self._is_running:
            lines = "".join(json.dumps(candle) + "\n" for candle in data)
            await asyncio.to_thread(self._write, lines.encode())

    def _write(self, data: bytes) -> None:
        assert self._file is not None
        self._file.write(data)
        self._file.flush()

    async def stop(self) -> None:
        self._is_running = False
        if self._file is not None:
            await asyncio.to_thread(self._file.close)
            self._file = None


ConsumerManager.register_consumer("file", FileConsumer)


if __name__ == "__main__":
    from publish.__main__ import main

    raise SystemExit(main(sys.argv[1:]))
