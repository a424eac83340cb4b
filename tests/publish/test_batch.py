"""What a consumer gets of each candle: floats (the original interface), raw JSON, or Decimals."""

from __future__ import annotations

from decimal import Decimal

from publish.batch import CandleBatch
from tests.publish.helpers import candle


def test_views_are_exact_decimals_next_to_the_float_dicts() -> None:
    raw = candle(close="0.10000000000000000001")
    batch = CandleBatch([raw], {0: [b"1-0"]})
    (view,) = batch.views()
    assert view.close == Decimal("0.10000000000000000001")  # every digit the aggregator wrote
    assert view.turnover == Decimal("458078.3588") and view.trade_count == 55
    assert batch.dicts()[0]["close"] == 0.1  # the original interface: a float, rounded
    assert batch.views() is batch.views()  # decoded once per batch, whichever consumer asks
