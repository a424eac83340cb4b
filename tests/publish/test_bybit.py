"""Bybit topics and kline items, pure."""

from __future__ import annotations

import msgspec

from common.bybitws import KlineItem
from common.intervals import parse_intervals
from publish.consumers.bybit import TopicParser, kline_fields_decoder
from tests.publish.helpers import candle

PARSER = TopicParser(parse_intervals("1s,7m,1h,1d,1w,1M"))


def test_bybit_codes_and_labels_name_configured_series() -> None:
    cases = {
        "kline.60.BTCUSDT": ("60", (3_600_000, "BTCUSDT")),
        "kline.1h.BTCUSDT": ("1h", (3_600_000, "BTCUSDT")),
        "kline.60m.BTCUSDT": ("60m", (3_600_000, "BTCUSDT")),
        "kline.D.ETHUSDT": ("D", (86_400_000, "ETHUSDT")),
        "kline.1s.ETHUSDT": ("1s", (1000, "ETHUSDT")),
        "kline.1000ms.ETHUSDT": ("1000ms", (1000, "ETHUSDT")),
        "kline.7m.X1": ("7m", (420_000, "X1")),
        "kline.W.BTCUSDT": ("W", ("1w", "BTCUSDT")),
        "kline.1w.BTCUSDT": ("1w", ("1w", "BTCUSDT")),
        "kline.M.BTCUSDT": ("M", ("1M", "BTCUSDT")),
        "kline.60.BTC-26DEC25": ("60", (3_600_000, "BTC-26DEC25")),  # a dated future
        "kline.1s.ETH-27MAR26": ("1s", (1000, "ETH-27MAR26")),
    }
    for text, (code, key) in cases.items():
        topic = PARSER.parse(text)
        assert topic is not None, text
        assert (topic.text, topic.code, topic.key) == (text, code, key)


def test_unknown_topics() -> None:
    for text in [
        "kline.1.BTCUSDT",  # 1m is not configured
        "kline.5.BTCUSDT", "kline.2s.BTCUSDT", "kline.1.btcusdt", "kline.1h.*",
        "kline.1h.BTC*", "kline. 1h.BTCUSDT", "kline.1h.", "kline.1h", "publicTrade.BTCUSDT",
        "tickers.BTCUSDT", "kline.1x.BTCUSDT", "kline.0s.BTCUSDT", "", "kline..BTCUSDT",
    ]:  # fmt: skip
        assert PARSER.parse(text) is None, text


def test_items_keep_the_exact_digits_and_end_a_millisecond_before_the_next_open() -> None:
    month = PARSER.parse("kline.M.BTCUSDT")
    assert month is not None
    feb = 1_769_904_000_000  # 2026-02-01 00:00 UTC; March starts 28 days later
    raw = candle(
        label="1M", interval_ms=2_592_000_000, timestamp=feb, close="0.1000000000000000001"
    )
    item = month.item(kline_fields_decoder.decode(raw), 42)
    assert item == KlineItem(
        start=feb, end=feb + 28 * 86_400_000 - 1, interval="M", open="65114.2",
        close="0.1000000000000000001", high="65114.3", low="65113.1", volume="7.035",
        turnover="458078.3588", confirm=True, timestamp=42,
    )  # fmt: skip
    open_candle = raw.replace(b'"closed":true', b'"closed":false')
    assert (
        msgspec.to_builtins(month.item(kline_fields_decoder.decode(open_candle), 1))["confirm"]
        is False
    )
