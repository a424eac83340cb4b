"""Bybit kline frames and REST answers -> candles of the one format (pure)."""

from __future__ import annotations

import json
from decimal import Decimal

import msgspec
import pytest

from common.errors import BadMessageError
from common.intervals import Interval
from common.wire import Category, candle_encoder, candle_view_decoder
from ingest.klines.frames import (
    decode_frame,
    decode_rest,
    item_candle,
    parse_topic,
    rest_rows,
    topic,
)
from tests.support.procs import TESTDATA, need_testdata

CAPTURE = TESTDATA / "cryptofeed__BYBIT.publicTrade_kline_only.jsonl"
M1 = Interval.parse("1m")


def recorded_kline_frames(connection_addr_suffix: str) -> list[str]:
    """The recorded kline frame texts of one connection (linear or spot), in order."""
    need_testdata(CAPTURE.name)
    conns: dict[str, str] = {}
    frames = []
    for line in CAPTURE.read_text().splitlines():
        record = json.loads(line)
        if record["t"] == "connect":
            conns[record["conn"]] = record["addr"]
        if record["t"] != "recv" or '"topic":"kline.' not in record["data"]:
            continue
        if conns.get(record["conn"], "").endswith(connection_addr_suffix):
            frames.append(record["data"])
    return frames


def test_recorded_linear_confirm_comes_with_the_next_snapshot() -> None:
    frames = [decode_frame(f) for f in recorded_kline_frames("/linear")]
    btc = [f for f in frames if f.topic == "kline.1.BTCUSDT" and any(i.confirm for i in f.data)]
    assert len(btc) == 1
    confirm, following = btc[0].data
    assert confirm.confirm and not following.confirm
    assert following.start == confirm.end + 1
    interval, symbol = parse_topic(btc[0].topic)
    candle = item_candle(symbol, interval, confirm, Category.LINEAR)
    assert json.loads(candle_encoder.encode(candle)) == {
        "symbol": "BTCUSDT",
        "interval": 60000,
        "interval_label": "1m",
        "timestamp": 1786310760000,
        "open": 65119.9,
        "high": 65119.9,
        "low": 65114.2,
        "close": 65114.2,
        "volume": 3.712,
        "turnover": 241712.1394,
        "trade_count": 0,
        "buy_volume": 0,
        "sell_volume": 0,
        "closed": True,
        "revision": 0,
        "source": "bybit",
        "category": "linear",
        "gap": False,
    }
    # The exact text goes out, not a float rendering of it.
    assert b'"turnover":241712.1394,' in candle_encoder.encode(candle)


def test_recorded_spot_sends_confirms_alone() -> None:
    frames = [decode_frame(f) for f in recorded_kline_frames("/spot")]
    confirms = [f for f in frames if any(i.confirm for i in f.data)]
    assert {f.topic for f in confirms} == {"kline.1.BTCUSDT", "kline.1.ETHUSDT"}
    assert all(len(f.data) == 1 for f in confirms)
    eth = next(f for f in confirms if f.topic == "kline.1.ETHUSDT").data[0]
    view = candle_view_decoder.decode(
        candle_encoder.encode(item_candle("ETHUSDT", M1, eth, Category.SPOT))
    )
    assert (view.open, view.close, view.volume, view.turnover) == (
        Decimal("1923.09"),
        Decimal("1923.27"),
        Decimal("1.38307"),
        Decimal("2659.8546713"),
    )
    assert view.category == "spot"


def test_topics() -> None:
    assert topic(Interval.parse("1h"), "BTCUSDT") == "kline.60.BTCUSDT"
    assert topic(Interval.parse("1w"), "ETHUSDT") == "kline.W.ETHUSDT"
    assert parse_topic("kline.D.SOLUSDT") == (Interval.parse("1d"), "SOLUSDT")
    with pytest.raises(ValueError):
        topic(Interval.parse("2m"), "BTCUSDT")
    for bad in ("kline.7.BTCUSDT", "publicTrade.BTCUSDT", "kline.1"):
        with pytest.raises(BadMessageError):
            parse_topic(bad)


GOOD_ITEM = {
    "start": 1786310760000,
    "end": 1786310819999,
    "interval": "1",
    "open": "1",
    "close": "2",
    "high": "3",
    "low": "0.5",
    "volume": "10",
    "turnover": "15.5",
    "confirm": True,
    "timestamp": 1786310820000,
}


@pytest.mark.parametrize(
    "change",
    [
        {"start": "1786310760000"},  # a string where Bybit sends a number
        {"open": 1.5},  # a number where Bybit sends a string
        {"confirm": "true"},
        {"volume": None},
    ],
)
def test_malformed_frames_are_refused(change: dict[str, object]) -> None:
    item = {**GOOD_ITEM, **change}
    raw = json.dumps({"topic": "kline.1.X", "data": [item], "ts": 1, "type": "snapshot"})
    with pytest.raises(BadMessageError):
        decode_frame(raw)


def test_missing_field_and_empty_data_are_refused() -> None:
    item = {k: v for k, v in GOOD_ITEM.items() if k != "turnover"}
    with pytest.raises(BadMessageError):
        decode_frame(json.dumps({"topic": "kline.1.X", "data": [item], "ts": 1}))
    with pytest.raises(BadMessageError):
        decode_frame(json.dumps({"topic": "kline.1.X", "data": [], "ts": 1}))
    with pytest.raises(BadMessageError):
        decode_frame(b"not json")


@pytest.mark.parametrize(
    "change", [{"open": "1e5"}, {"low": "-0.5"}, {"high": "007"}, {"interval": "5"}, {"start": 5}]
)
def test_values_that_cannot_become_a_candle(change: dict[str, object]) -> None:
    item = {**GOOD_ITEM, **change}
    frame = decode_frame(json.dumps({"topic": "kline.1.X", "data": [item], "ts": 1}))
    with pytest.raises(BadMessageError):
        item_candle("X", M1, frame.data[0], Category.LINEAR)


def test_rest_rows_oldest_first_without_the_open_candle() -> None:
    answer = {
        "retCode": 0,
        "retMsg": "OK",
        "result": {
            "category": "linear",
            "symbol": "BTCUSDT",
            "list": [
                ["1786310880000", "65114.3", "65115", "65110", "65111", "1.5", "97671.45"],
                [
                    "1786310820000",
                    "65114.2",
                    "65114.3",
                    "65113.1",
                    "65114.3",
                    "7.035",
                    "458078.3588",
                ],
                [
                    "1786310760000",
                    "65119.9",
                    "65119.9",
                    "65114.2",
                    "65114.2",
                    "3.712",
                    "241712.1394",
                ],
            ],
        },
        "retExtInfo": {},
        "time": 1786310900000,
    }
    response = decode_rest(json.dumps(answer).encode())
    candles = rest_rows(response, M1, "BTCUSDT", Category.LINEAR, response.time_ms)
    assert [c.timestamp for c in candles] == [1786310760000, 1786310820000]
    assert [bytes(c.turnover) for c in candles] == [b"241712.1394", b"458078.3588"]
    assert all(c.closed and c.source == "bybit" for c in candles)


def test_rest_error_answer_shape() -> None:
    response = decode_rest(b'{"retCode":10001,"retMsg":"Invalid period!","result":{},"time":1}')
    assert response.ret_code == 10001
    assert response.ret_msg == "Invalid period!"
    with pytest.raises(BadMessageError):
        decode_rest(b"<html>502</html>")
    assert msgspec.json.encode(response.result) == b'{"symbol":"","category":"","list":[]}'
