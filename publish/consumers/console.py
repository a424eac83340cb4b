"""`console`: one line per candle on stdout, in the original service's format plus the new fields.

    [XRPUSDT] [1000ms] timestamp=1767110584000 (2025-12-30 19:03:04) open=1.8755 high=1.8755
    low=1.8755 close=1.8755 volume=0.0 trade_count=0 turnover=0.0 buy_volume=0.0 sell_volume=0.0
    interval_label=1s closed=true revision=0 source=trades category=linear gap=false

(one line). Numbers are the candle JSON's own digits; the date in brackets is the open time, UTC.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import Any, TextIO

import msgspec

from publish.batch import CandleBatch
from publish.consumers.base import BaseConsumer


class _Candle(msgspec.Struct, kw_only=True, gc=False):
    symbol: str
    interval: int
    timestamp: int
    open: msgspec.Raw
    high: msgspec.Raw
    low: msgspec.Raw
    close: msgspec.Raw
    volume: msgspec.Raw
    trade_count: int
    turnover: msgspec.Raw = msgspec.Raw(b"0")
    buy_volume: msgspec.Raw = msgspec.Raw(b"0")
    sell_volume: msgspec.Raw = msgspec.Raw(b"0")
    interval_label: str = ""
    closed: bool = True
    revision: int = 0
    source: str = "trades"
    category: str = ""
    gap: bool = False


_decoder = msgspec.json.Decoder(_Candle)


def _text(raw: msgspec.Raw) -> str:
    return bytes(raw).decode()


def format_candle(raw: bytes) -> str:
    """The console line of one candle JSON."""
    c = _decoder.decode(raw)
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(c.timestamp // 1000))
    return (
        f"[{c.symbol}] [{c.interval}ms] timestamp={c.timestamp} ({when}) "
        f"open={_text(c.open)} high={_text(c.high)} low={_text(c.low)} close={_text(c.close)} "
        f"volume={_text(c.volume)} trade_count={c.trade_count} "
        f"turnover={_text(c.turnover)} buy_volume={_text(c.buy_volume)} "
        f"sell_volume={_text(c.sell_volume)} interval_label={c.interval_label} "
        f"closed={str(c.closed).lower()} revision={c.revision} source={c.source} "
        f"category={c.category} gap={str(c.gap).lower()}"
    )


class ConsoleConsumer(BaseConsumer):
    def __init__(self, name: str = "console", out: TextIO | None = None) -> None:
        super().__init__(name)
        self._out = out

    async def consume(self, data: list[dict[str, Any]]) -> None:
        """Dicts from callers of the original interface: printed with Python's number text."""
        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        if not self._is_running or not batch.raws:
            return
        text = "\n".join(format_candle(raw) for raw in batch.raws) + "\n"
        # In a thread: a terminal or pipe that is slow to read blocks this consumer only.
        await asyncio.to_thread(self._write, text)

    def _write(self, text: str) -> None:
        out = self._out or sys.stdout
        out.write(text)
        out.flush()
