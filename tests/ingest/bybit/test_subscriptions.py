from __future__ import annotations

from common.wire import Category
from ingest.bybit.instruments import Instrument, check_symbols, parse_page, trading_symbols
from ingest.bybit.subscriptions import (
    MAX_TOPIC_CHARS_PER_CONNECTION,
    assign,
    chunk_requests,
    topic_chars,
)


def test_spot_requests_hold_at_most_ten_args() -> None:
    topics = [f"publicTrade.S{i}USDT" for i in range(25)]
    chunks = chunk_requests(topics, Category.SPOT)
    assert [len(c) for c in chunks] == [10, 10, 5]
    assert [t for c in chunks for t in c] == topics
    assert len(chunk_requests(topics, Category.LINEAR)) == 1


def test_assign_spreads_by_topic_characters() -> None:
    placed, extra = assign(["AAUSDT", "BBUSDT", "CCUSDT", "DDUSDT"], [0, 0, 100])
    assert extra == 0
    assert sorted(len(p) for p in placed) == [0, 2, 2]
    assert placed[2] == []


def test_assign_opens_connections_past_21000_characters() -> None:
    symbols = [f"S{i:05d}USDT" for i in range(2000)]  # 22 chars per topic: 44,000 in all
    placed, extra = assign(symbols, [0])
    assert extra == 2
    assert sorted(s for p in placed for s in p) == sorted(symbols)
    assert all(topic_chars(p) < MAX_TOPIC_CHARS_PER_CONNECTION for p in placed)


def test_unknown_and_not_trading_symbols_are_named_with_close_matches() -> None:
    instruments = [
        Instrument("BTCUSDT", "Trading"),
        Instrument("ETHUSDT", "Trading"),
        Instrument("OLDUSDT", "Closed"),
    ]
    assert check_symbols(["BTCUSDT", "BTCUSD", "OLDUSDT", "ZZZ"], instruments) == [
        "BTCUSD: unknown (did you mean BTCUSDT?)",
        "OLDUSDT: status Closed, not Trading",
        "ZZZ: unknown",
    ]
    assert trading_symbols(instruments) == ["BTCUSDT", "ETHUSDT"]


def test_instruments_page() -> None:
    page = parse_page(
        b'{"retCode":0,"retMsg":"OK","result":{"category":"linear","nextPageCursor":"abc",'
        b'"list":[{"symbol":"BTCUSDT","status":"Trading","extra":1}]},"time":1}'
    )
    assert page.next_cursor == "abc"
    assert page.instruments == [Instrument("BTCUSDT", "Trading")]
    spot = parse_page(b'{"retCode":0,"retMsg":"OK","result":{"list":[]}}')
    assert spot.next_cursor == ""
