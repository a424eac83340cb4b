"""The Bybit-compatible path `/v5/public/<category>` in-process: auth (header or `auth=` query),
Bybit's acks, errors and pongs, kline frames byte for byte, confirm true/false, unsubscribe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from publish.batch import CandleBatch
from publish.consumers.manager import ConsumerManager
from publish.consumers.websocket import WebSocketConsumer
from tests.publish.helpers import KEY, USER, basic, candle, ws_settings
from tests.support.redisproc import free_port
from tests.support.waiting import async_wait_until

T0 = 1_786_310_820_000  # a minute boundary


async def started(**overrides: object) -> WebSocketConsumer:
    values: dict[str, object] = {"kline_intervals": "1s,1m,1h,1w"}
    values.update(overrides)
    (consumer,) = ConsumerManager.create(["websocket"], ws_settings(free_port(), **values))
    assert isinstance(consumer, WebSocketConsumer)
    await consumer.setup()
    await consumer.start()
    return consumer


@pytest.fixture
async def server() -> AsyncIterator[WebSocketConsumer]:
    consumer = await started()
    yield consumer
    await consumer.stop()


def url(consumer: WebSocketConsumer, category: str = "linear", query: str = "") -> str:
    assert consumer.settings is not None
    port = consumer.settings.websocket_port
    return f"ws://127.0.0.1:{port}/v5/public/{category}{query}"


def auth_query(user: str = USER, key: str = KEY) -> str:
    return "?auth=" + quote(f"{user}:{key}", safe="")


async def recv(conn: ClientConnection) -> dict[str, Any]:
    frame = msgspec.json.decode(await asyncio.wait_for(conn.recv(), 5))
    assert isinstance(frame, dict)
    return frame


async def send(conn: ClientConnection, message: object) -> None:
    await conn.send(msgspec.json.encode(message).decode())


async def subscribed(consumer: WebSocketConsumer, *topics: str) -> ClientConnection:
    conn = await connect(url(consumer, query=auth_query()), compression=None)
    await send(conn, {"op": "subscribe", "req_id": "s1", "args": list(topics)})
    reply = await recv(conn)
    assert reply["success"] is True and reply["op"] == "subscribe", reply
    return conn


async def feed(consumer: WebSocketConsumer, raws: list[bytes], *, updates: bool = False) -> None:
    batch = CandleBatch(raws, {})
    await (consumer.consume_updates(batch) if updates else consumer.consume_batch(batch))


@pytest.mark.parametrize(
    "query, headers",
    [("", {}), (auth_query(key="wrong"), {}), (auth_query(user="bob"), {}), ("?auth=", {}),
     ("?auth=" + quote(USER), {}), ("", basic(key="wrong"))],
)  # fmt: skip
async def test_wrong_or_missing_credentials_get_401(
    server: WebSocketConsumer, query: str, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server, query=query), additional_headers=headers)
    assert err.value.response.status_code == 401


async def test_query_auth_or_basic_auth_on_both_paths(server: WebSocketConsumer) -> None:
    assert server.settings is not None
    feed_url = f"ws://127.0.0.1:{server.settings.websocket_port}/"
    for address, headers in [
        (url(server, query=auth_query()), {}),
        (url(server), basic()),
        (feed_url + auth_query(), {}),  # the candle feed at / takes `auth=` too
        (url(server, query="?x=1&" + auth_query()[1:]), {}),
    ]:
        conn = await connect(address, additional_headers=headers)
        await send(conn, {"op": "ping"})
        assert (await recv(conn))["ret_msg"] == "pong"
        await conn.close()


async def test_other_categories_are_not_found(server: WebSocketConsumer) -> None:
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server, "spot", auth_query()))
    assert err.value.response.status_code == 404
    assert b"/v5/public/linear" in err.value.response.body


async def test_acks_errors_and_pongs_as_bybit_sends_them(server: WebSocketConsumer) -> None:
    conn = await connect(url(server, query=auth_query()))
    await send(conn, {"op": "subscribe", "req_id": "r1", "args": ["kline.1.BTCUSDT"]})
    ack = await recv(conn)
    conn_id = ack["conn_id"]
    assert isinstance(conn_id, str) and len(conn_id) == 36
    assert ack == {"success": True, "ret_msg": "", "conn_id": conn_id, "req_id": "r1",
                   "op": "subscribe"}  # fmt: skip
    await send(conn, {"op": "subscribe", "args": [
        "kline.1.BTCUSDT", "kline.2s.BTCUSDT", "publicTrade.BTCUSDT", "kline.1.btcusdt",
        "kline.1s.ETHUSDT", "kline.60.ETHUSDT", "kline.W.ETHUSDT", "kline.1M.ETHUSDT",
    ]})  # fmt: skip
    replies = [await recv(conn) for _ in range(5)]
    assert [r["ret_msg"] for r in replies] == [
        "error:already subscribed,topic:kline.1.BTCUSDT",
        "error:handler not found,topic:kline.2s.BTCUSDT",  # 2s is not configured
        "error:handler not found,topic:publicTrade.BTCUSDT",
        "error:handler not found,topic:kline.1.btcusdt",
        "error:handler not found,topic:kline.1M.ETHUSDT",
    ]
    assert all(r["success"] is False and r["req_id"] == "" for r in replies[:4])
    assert await recv(conn) == {"success": True, "ret_msg": "", "conn_id": conn_id,
                                "req_id": "", "op": "subscribe"}  # fmt: skip
    await send(conn, {"op": "ping", "req_id": "p"})
    assert await recv(conn) == {"success": True, "ret_msg": "pong", "conn_id": conn_id,
                                "req_id": "p", "op": "ping"}  # fmt: skip
    await conn.send("hello")
    assert str((await recv(conn))["ret_msg"]).startswith("Failed to decode incoming data")
    await send(conn, {"op": "unsubscribe", "req_id": "u", "args": ["kline.1.BTCUSDT"]})
    assert (await recv(conn))["op"] == "unsubscribe"
    await conn.close()


def _item(start: int, end: int, code: str, confirm: bool, ts: int, close: str = "65114.3") -> bytes:
    return (
        f'{{"start":{start},"end":{end},"interval":"{code}","open":"65114.2","close":"{close}",'
        f'"high":"65114.3","low":"65113.1","volume":"7.035","turnover":"458078.3588",'
        f'"confirm":{"true" if confirm else "false"},"timestamp":{ts}}}'
    ).encode()


async def test_kline_frames_byte_for_byte(server: WebSocketConsumer) -> None:
    conn = await subscribed(server, "kline.1.BTCUSDT", "kline.1s.BTCUSDT", "kline.60.ETHUSDT",
                            "kline.1h.ETHUSDT", "kline.W.XRPUSDT")  # fmt: skip
    exact = "0.30000000000000000001"
    before = int(time.time() * 1000)
    await feed(server, [
        candle("BTCUSDT", timestamp=T0, close=exact),
        candle("BTCUSDT", "1s", 1000, T0 + 1000),
        candle("ETHUSDT", "1h", 3_600_000, T0 - 20 * 60_000),
        candle("XRPUSDT", "1w", 604_800_000, 1_786_233_600_000),  # a Monday
        candle("SOLUSDT", timestamp=T0),  # nobody's topic
    ])  # fmt: skip
    frames: dict[str, bytes] = {}
    for _ in range(5):
        raw = await asyncio.wait_for(conn.recv(), 5)
        assert isinstance(raw, str)
        frames[msgspec.json.decode(raw)["topic"]] = raw.encode()
    ts = msgspec.json.decode(frames["kline.1.BTCUSDT"])["ts"]
    assert before <= ts <= int(time.time() * 1000)

    def frame(topic: str, item: bytes) -> bytes:
        return b'{"topic":"%s","data":[%s],"ts":%d,"type":"snapshot"}' % (topic.encode(), item, ts)

    h1 = T0 - 20 * 60_000
    assert frames == {
        "kline.1.BTCUSDT": frame("kline.1.BTCUSDT", _item(T0, T0 + 59_999, "1", True, ts, exact)),
        "kline.1s.BTCUSDT": frame("kline.1s.BTCUSDT", _item(T0 + 1000, T0 + 1999, "1s", True, ts)),
        "kline.60.ETHUSDT": frame("kline.60.ETHUSDT", _item(h1, h1 + 3_599_999, "60", True, ts)),
        "kline.1h.ETHUSDT": frame("kline.1h.ETHUSDT", _item(h1, h1 + 3_599_999, "1h", True, ts)),
        "kline.W.XRPUSDT": frame(
            "kline.W.XRPUSDT",
            _item(1_786_233_600_000, 1_786_233_600_000 + 604_799_999, "W", True, ts),
        ),
    }
    await conn.close()


async def test_confirm_false_for_updates_and_revisions_pushed_again() -> None:
    consumer = await started(websocket_updates=True)
    try:
        conn = await subscribed(consumer, "kline.1.BTCUSDT")
        in_progress = candle("BTCUSDT", timestamp=T0, close="1.5").replace(
            b'"closed":true', b'"closed":false'
        )
        await feed(consumer, [in_progress], updates=True)
        first = await recv(conn)
        assert [(i["start"], i["close"], i["confirm"]) for i in first["data"]] == [
            (T0, "1.5", False)
        ]
        # The closed candle, then the next minute's in-progress one; then a revision.
        await feed(consumer, [candle("BTCUSDT", timestamp=T0, close="1.6")])
        await feed(consumer, [in_progress.replace(b"%d" % T0, b"%d" % (T0 + 60_000))], updates=True)
        await feed(consumer, [candle("BTCUSDT", timestamp=T0, close="1.7", revision=1)])
        # An update of a candle that already closed here is late: never sent after its confirm.
        await feed(consumer, [in_progress], updates=True)
        got = [await recv(conn) for _ in range(3)]
        assert [(i["start"], i["close"], i["confirm"]) for f in got for i in f["data"]] == [
            (T0, "1.6", True), (T0 + 60_000, "1.5", False), (T0, "1.7", True),
        ]  # fmt: skip
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(conn.recv(), 0.3)
        await conn.close()
    finally:
        await consumer.stop()


async def test_unsubscribe_stops_the_topic_and_others_carry_on(server: WebSocketConsumer) -> None:
    conn = await subscribed(server, "kline.1.BTCUSDT", "kline.1.ETHUSDT")
    other = await subscribed(server, "kline.1.BTCUSDT")
    await send(conn, {"op": "unsubscribe", "req_id": "s1", "args": ["kline.1.BTCUSDT"]})
    assert (await recv(conn))["op"] == "unsubscribe"
    await feed(server, [candle("BTCUSDT"), candle("ETHUSDT")])
    assert (await recv(conn))["topic"] == "kline.1.ETHUSDT"
    assert (await recv(other))["topic"] == "kline.1.BTCUSDT"
    await conn.close()
    bybit = server._bybit
    assert bybit is not None
    await async_wait_until(lambda: _true(len(bybit.clients) == 1), what="one left")
    await feed(server, [candle("BTCUSDT", timestamp=T0 + 60_000)])
    assert (await recv(other))["data"][0]["start"] == T0 + 60_000
    await other.close()


async def test_spot_acks_and_one_frame_per_candle() -> None:
    consumer = await started(bybit_category="spot")
    try:
        conn = await connect(url(consumer, "spot", auth_query()))
        await send(conn, {"op": "subscribe", "args": ["kline.1.BTCUSDT"]})
        ack = await recv(conn)
        assert ack == {"success": True, "ret_msg": "subscribe", "conn_id": ack["conn_id"],
                       "op": "subscribe"}  # fmt: skip
        await feed(
            consumer, [candle("BTCUSDT", timestamp=T0), candle("BTCUSDT", timestamp=T0 + 60_000)]
        )
        raws = [await asyncio.wait_for(conn.recv(), 5) for _ in range(2)]
        assert all(isinstance(r, str) and r.startswith('{"type":"snapshot","topic":') for r in raws)
        assert [msgspec.json.decode(r)["data"][0]["start"] for r in raws] == [T0, T0 + 60_000]
        await conn.close()
    finally:
        await consumer.stop()


async def _true(value: bool) -> bool:
    return value
