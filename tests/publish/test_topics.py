from __future__ import annotations

import pytest

from publish.consumers.topics import ClientFilter, parse_topic, series_decoder
from tests.publish.helpers import candle


def test_topic_parts_and_matching() -> None:
    exact = parse_topic("1m.BTCUSDT")
    assert (exact.interval, exact.symbol) == (60_000, "BTCUSDT")
    assert exact.matches((60_000, "BTCUSDT"))
    assert not exact.matches((60_000, "ETHUSDT"))
    assert not exact.matches((300_000, "BTCUSDT"))
    assert parse_topic("60s.BTCUSDT").interval == 60_000
    assert parse_topic("*.BTCUSDT").matches((3_600_000, "BTCUSDT"))
    assert parse_topic("5m.*").matches((300_000, "ANYUSDT"))
    assert parse_topic("1m.BTC*").matches((60_000, "BTCPERP"))
    assert not parse_topic("1m.BTC*").matches((60_000, "ETHBTC"))
    assert parse_topic("1M.BTCUSDT").matches(("1M", "BTCUSDT"))
    assert parse_topic("1w.*").matches(("1w", "BTCUSDT"))


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("BTCUSDT", "is not '<interval>.<symbol>'"),
        ("1m.btcusdt", "is not '<interval>.<symbol>'"),
        ("1m.", "is not '<interval>.<symbol>'"),
        ("7x.BTCUSDT", "interval '7x' is not valid"),
        ("2w.BTCUSDT", "only 1w is supported"),
        (5, "is not a string"),
    ],
)
def test_bad_topics_say_what_is_allowed(text: object, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        parse_topic(text)


def test_series_key_of_a_candle() -> None:
    assert series_decoder.decode(candle("ETHUSDT", "5m", 300_000)).key == (300_000, "ETHUSDT")
    assert series_decoder.decode(candle("ETHUSDT", "1M", 2_592_000_000)).key == ("1M", "ETHUSDT")


def test_filter_starts_with_everything_narrows_and_widens() -> None:
    f = ClientFilter()
    assert f.key is None and f.wants((60_000, "X"))
    assert [t.text for t in f.subscribe(["1m.BTCUSDT", "5m.*"])] == ["1m.BTCUSDT", "5m.*"]
    assert f.wants((60_000, "BTCUSDT")) and f.wants((300_000, "ETHUSDT"))
    assert not f.wants((60_000, "ETHUSDT"))
    assert f.subscribe(["1m.BTCUSDT"]) == []  # already there
    with pytest.raises(ValueError, match=r"not subscribed: 1h\.BTCUSDT"):
        f.unsubscribe(["5m.*", "1h.BTCUSDT"])
    assert f.wants((300_000, "ETHUSDT"))  # all or nothing
    with pytest.raises(ValueError, match="interval"):
        f.subscribe(["1h.ETHUSDT", "bad.X"])
    assert not f.wants((3_600_000, "ETHUSDT"))
    f.unsubscribe(["5m.*", "1m.BTCUSDT"])
    assert f.key is None and f.wants((60_000, "ETHUSDT"))


def test_same_topics_share_a_key() -> None:
    a, b = ClientFilter(), ClientFilter()
    a.subscribe(["1m.BTCUSDT", "5m.*"])
    b.subscribe(["5m.*", "60s.BTCUSDT"])
    assert a.key == b.key


@pytest.mark.parametrize("symbol", ["BTC-26DEC25", "BTCUSDT-26DEC25", "BTC-26DEC25-100000-C"])
def test_topics_take_every_bybit_symbol_shape(symbol: str) -> None:
    topic = parse_topic(f"1m.{symbol}")
    assert topic.matches((60_000, symbol)) and not topic.matches((60_000, "BTCUSDT"))
    assert parse_topic("*.*-26DEC25*").matches((60_000, symbol))
