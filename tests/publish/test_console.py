from __future__ import annotations

import io

import msgspec

from publish.batch import CandleBatch
from publish.consumers.console import ConsoleConsumer, format_candle
from tests.publish.helpers import candle

ORIGINAL = (
    b'{"symbol":"XRPUSDT","interval":1000,"timestamp":1767110584000,"open":1.8755,'
    b'"high":1.8755,"low":1.8755,"close":1.8755,"volume":0.0,"trade_count":0}'
)


def test_the_original_line_is_kept_and_new_fields_follow() -> None:
    line = format_candle(ORIGINAL)
    # The original printed the open time in the host's local time (UTC+3 in its README's log);
    # here it is always UTC.
    assert line.startswith(
        "[XRPUSDT] [1000ms] timestamp=1767110584000 (2025-12-30 16:03:04) open=1.8755 "
        "high=1.8755 low=1.8755 close=1.8755 volume=0.0 trade_count=0 "
    )
    assert line.endswith(
        "turnover=0 buy_volume=0 sell_volume=0 interval_label= closed=true revision=0 "
        "source=trades category= gap=false"
    )


def test_digits_are_the_candles_own() -> None:
    line = format_candle(candle(close="0.30000000000000000001"))
    assert " close=0.30000000000000000001 " in line
    assert " turnover=458078.3588 buy_volume=3.1 sell_volume=3.935 interval_label=1m " in line


async def test_consumer_writes_one_line_per_candle_and_accepts_dicts() -> None:
    out = io.StringIO()
    consumer = ConsoleConsumer(out=out)
    await consumer.consume_batch(CandleBatch([ORIGINAL], {}))
    assert out.getvalue() == ""  # not started
    await consumer.start()
    await consumer.consume_batch(CandleBatch([ORIGINAL, candle()], {}))
    await consumer.consume([msgspec.json.decode(ORIGINAL)])
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0] == lines[2]
    assert lines[1].startswith("[BTCUSDT] [60000ms] timestamp=1786310820000 (2026-08-09 ")
