from __future__ import annotations

import json
from typing import Any

from common.bybitws import MAX_TOPIC_CHARS, Session, SubscribeFault
from common.wire import Category

KNOWN = {"publicTrade.BTCUSDT", "publicTrade.ETHUSDT", "kline.1.BTCUSDT"}


def _session(category: Category = Category.LINEAR, **kwargs: Any) -> Session:
    return Session(
        category,
        "conn-1",
        lambda topic: topic in KNOWN or topic.startswith("publicTrade.SYM"),
        **kwargs,
    )


def _replies(session: Session, request: object) -> list[dict[str, Any]]:
    text = request if isinstance(request, str) else json.dumps(request)
    return [json.loads(r) for r in session.handle(text).replies]


def test_linear_ack_and_pong_shapes() -> None:
    s = _session()
    ack = {"op": "subscribe", "req_id": "sub-1", "args": ["publicTrade.BTCUSDT"]}
    assert _replies(s, ack) == [
        {"success": True, "ret_msg": "", "conn_id": "conn-1", "req_id": "sub-1", "op": "subscribe"}
    ]
    assert _replies(s, {"op": "ping"}) == [
        {"success": True, "ret_msg": "pong", "conn_id": "conn-1", "req_id": "", "op": "ping"}
    ]
    unsub = {"op": "unsubscribe", "args": ["publicTrade.BTCUSDT"]}
    assert _replies(s, unsub)[0]["op"] == "unsubscribe"
    assert s.topics == set()


def test_spot_ack_and_pong_shapes() -> None:
    s = _session(Category.SPOT)
    reply = _replies(s, {"op": "subscribe", "req_id": "r", "args": ["publicTrade.BTCUSDT"]})
    assert reply == [
        {"success": True, "ret_msg": "subscribe", "conn_id": "conn-1", "req_id": "r",
         "op": "subscribe"}
    ]  # fmt: skip
    assert _replies(s, {"op": "ping"}) == [
        {"success": True, "ret_msg": "pong", "conn_id": "conn-1", "op": "ping"}
    ]


def test_error_frames_name_one_topic_and_the_rest_is_acked() -> None:
    s = _session()
    first = _replies(s, {"op": "subscribe", "args": ["kline.1.BTCUSDT"]})
    assert first[0]["success"] is True
    args = ["kline.1.BTCUSDT", "publicTrade.NOTASYMBOL", "publicTrade.ETHUSDT"]
    request = {"op": "subscribe", "req_id": "e1", "args": args}
    replies = _replies(s, request)
    assert [r["ret_msg"] for r in replies] == [
        "error:already subscribed,topic:kline.1.BTCUSDT",
        "error:handler not found,topic:publicTrade.NOTASYMBOL",
        "",
    ]
    assert [r["success"] for r in replies] == [False, False, True]
    assert {r["req_id"] for r in replies} == {"e1"}
    assert s.topics == {"kline.1.BTCUSDT", "publicTrade.ETHUSDT"}


def test_spot_more_than_ten_args_is_refused() -> None:
    s = _session(Category.SPOT)
    args = [f"publicTrade.SYM{i}USDT" for i in range(11)]
    assert _replies(s, {"op": "subscribe", "req_id": "x", "args": args}) == [
        {"success": False, "ret_msg": "args size >10", "conn_id": "conn-1", "op": "subscribe"}
    ]
    assert s.topics == set()
    assert _replies(s, {"op": "subscribe", "args": args[:10]})[-1]["success"] is True


def test_total_topic_length_limit_per_connection() -> None:
    s = _session()
    topics = [f"publicTrade.SYM{i:06d}USDT" for i in range(2000)]  # 25 characters each
    fits = MAX_TOPIC_CHARS // 25
    assert _replies(s, {"op": "subscribe", "args": topics[:fits]})[-1]["success"] is True
    assert s.chars == fits * 25
    refused = _replies(s, {"op": "subscribe", "req_id": "big", "args": topics[fits : fits + 1]})
    assert refused == [
        {"success": False, "ret_msg": "args length >21000", "conn_id": "conn-1",
         "req_id": "big", "op": "subscribe"}
    ]  # fmt: skip
    _replies(s, {"op": "unsubscribe", "args": topics[:1]})
    assert _replies(s, {"op": "subscribe", "args": topics[fits : fits + 1]})[-1]["success"]


def test_bad_json_and_unknown_op() -> None:
    s = _session()
    (bad,) = _replies(s, "hello")
    assert bad["success"] is False
    assert bad["ret_msg"].startswith(
        "Failed to decode incoming data:readObjectStart: expect { or n, but found h"
    )
    (invalid,) = _replies(s, {"op": "auth", "req_id": "9"})
    assert invalid == {
        "success": False, "ret_msg": "error:invalid op", "conn_id": "conn-1", "req_id": "9",
        "op": "auth",
    }  # fmt: skip


def test_subscribe_faults() -> None:
    refuse = _session(fault=lambda: SubscribeFault.REFUSE)
    (reply,) = _replies(refuse, {"op": "subscribe", "args": ["publicTrade.BTCUSDT"]})
    assert (reply["success"], reply["ret_msg"]) == (False, "Params Error")
    stall = _session(fault=lambda: SubscribeFault.STALL)
    outcome = stall.handle(json.dumps({"op": "subscribe", "args": ["publicTrade.BTCUSDT"]}))
    assert outcome.replies == [] and outcome.subscribed == [] and stall.topics == set()
