"""The candle JSON's field order is a public contract (docs/formats.md "The candle"): the candle
types share their leading fields through a base, and a subclass's fields must still follow them."""

from __future__ import annotations

import json
import re
from pathlib import Path

from common.wire import BackfilledCandle, Candle, candle_encoder, raw_number

DOCS = Path(__file__).resolve().parents[2] / "docs" / "formats.md"


def _documented_fields() -> list[str]:
    page = DOCS.read_text()
    section = page[page.index("## The candle") :]
    example = re.search(r"```json\n(.*?)```", section, re.DOTALL)
    assert example is not None
    return list(json.loads(example.group(1)))


def test_a_candle_is_written_in_the_documented_field_order() -> None:
    one = raw_number("1")
    candle = Candle(
        symbol="BTCUSDT", interval=60_000, interval_label="1m", timestamp=0, open=one, high=one,
        low=one, close=one, volume=one, turnover=one, trade_count=1, buy_volume=one,
        sell_volume=raw_number("0"),
    )  # fmt: skip
    backfilled = BackfilledCandle(
        symbol="BTCUSDT", interval=60_000, interval_label="1m", timestamp=0, open=one, high=one,
        low=one, close=one, volume=one, turnover=one,
    )  # fmt: skip
    documented = _documented_fields()
    assert list(json.loads(candle_encoder.encode(candle))) == documented
    assert list(json.loads(candle_encoder.encode(backfilled))) == documented
