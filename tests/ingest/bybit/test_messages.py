from __future__ import annotations

import json

import msgspec
import pytest

from common.errors import BadMessageError
from common.wire import Side, Trade
from ingest.bybit.messages import OpReply, TradeMessage, parse_frame, request
from tests.support.procs import TESTDATA, need_testdata

LINEAR = (
    b'{"topic":"publicTrade.BTCUSDT","type":"snapshot","ts":1672304486868,'
    b'"data":[{"T":1672304486865,"s":"BTCUSDT","S":"Buy","v":"0.001","p":"16578.50",'
    b'"L":"PlusTick","i":"20f43950-d8dd-5b31-9112-a178eb6023af","BT":false,"seq":1783284617}]}'
)


def test_linear_trade_message() -> None:
    message = parse_frame(LINEAR)
    assert message == TradeMessage(
        "BTCUSDT",
        1672304486868,
        [
            Trade(
                1672304486865,
                "16578.50",
                "0.001",
                Side.BUY,
                "20f43950-d8dd-5b31-9112-a178eb6023af",
                1783284617,
            )
        ],
    )


def test_optional_fields_may_be_missing_and_seq_may_be_a_string() -> None:
    raw = (
        b'{"topic":"publicTrade.ETHUSDT","ts":5,"data":[{"T":4,"s":"ETHUSDT","S":"Sell",'
        b'"v":"1","p":"2","i":"229","seq":"77"}]}'
    )
    message = parse_frame(raw)
    assert isinstance(message, TradeMessage)
    assert message.trades == [Trade(4, "2", "1", Side.SELL, "229", 77)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            b'{"success":true,"ret_msg":"","conn_id":"x","req_id":"subsc-1","op":"subscribe"}',
            OpReply("subscribe", True, "", "subsc-1"),
        ),
        (
            b'{"success":false,"ret_msg":"error:handler not found,topic:publicTrade.NOPE",'
            b'"conn_id":"x","req_id":"","op":"subscribe"}',
            OpReply("subscribe", False, "error:handler not found,topic:publicTrade.NOPE", ""),
        ),
        (
            b'{"success":true,"ret_msg":"pong","conn_id":"x","op":"ping"}',
            OpReply("ping", True, "pong", ""),
        ),
        (b'{"args":["1672916271846"],"op":"pong"}', OpReply("pong", True, "", "")),
    ],
)
def test_op_replies(raw: bytes, expected: OpReply) -> None:
    reply = parse_frame(raw)
    assert reply == expected
    assert isinstance(reply, OpReply)
    assert reply.is_pong == (expected.op in ("ping", "pong"))


def test_other_topics_are_ignored() -> None:
    assert parse_frame(b'{"topic":"tickers.BTCUSDT","type":"snapshot","data":{}}') is None


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[1,2]",
        b"{}",
        b'{"topic":"publicTrade.BTCUSDT","ts":1}',
        b'{"topic":"publicTrade.BTCUSDT","data":[{"T":"x","s":"A","S":"Buy","v":"1","p":"1","i":"1"}]}',
        b'{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"s":"A","S":"Hold","v":"1","p":"1","i":"1"}]}',
        b'{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"s":"A","S":"Buy","v":"1","p":"1"}]}',
        b'{"topic":"publicTrade.BTCUSDT","data":[{"T":1,"s":"A","S":"Buy","v":"1","p":"1","i":"1","seq":"x"}]}',
    ],
)
def test_malformed_frames_raise_bad_message(raw: bytes) -> None:
    with pytest.raises(BadMessageError):
        parse_frame(raw)


def test_requests_are_bybit_ops() -> None:
    assert json.loads(request("subscribe", ["publicTrade.A"], "s-1")) == {
        "op": "subscribe",
        "args": ["publicTrade.A"],
        "req_id": "s-1",
    }
    assert json.loads(request("ping", [], "p-1")) == {"op": "ping", "req_id": "p-1"}


def test_every_recorded_trade_frame_parses_exactly() -> None:
    capture = TESTDATA / "cryptofeed__BYBIT.publicTrade_kline_only.jsonl"
    derived = TESTDATA / "cryptofeed__BYBIT.derived_publicTrade.csv"
    need_testdata(capture.name, derived.name)
    parsed: list[tuple[str, int, str, str, str, str]] = []
    for line in capture.read_text().splitlines():
        item = json.loads(line)
        if item["t"] != "recv":
            continue
        message = parse_frame(item["data"])
        if isinstance(message, TradeMessage):
            parsed.extend(
                (message.symbol, t.time_ms, t.side.value, t.size, t.price, t.trade_id)
                for t in message.trades
            )
    expected = []
    for row in derived.read_text().splitlines()[1:]:
        cols = row.split(",")
        expected.append((cols[1], int(cols[2]), cols[3], cols[4], cols[5], cols[7]))
    assert sorted(parsed) == sorted(expected)
    assert len(parsed) == 347
    assert msgspec.json.decode(b"1") == 1
