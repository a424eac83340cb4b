"""The WebSocket server in-process: auth, TLS, subscriptions, snapshots, fan-out, slow clients."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from common.errors import ConfigError
from publish.batch import CandleBatch
from publish.consumers.manager import ConsumerManager
from publish.consumers.websocket import WebSocketConsumer, _Client
from tests.publish.helpers import USER, basic, candle, self_signed, series, ws_settings
from tests.support.redisproc import free_port
from tests.support.waiting import async_wait_until


async def started(**overrides: object) -> WebSocketConsumer:
    settings = ws_settings(free_port(), **overrides)
    (consumer,) = ConsumerManager.create(["websocket"], settings)
    assert isinstance(consumer, WebSocketConsumer)
    await consumer.setup()
    await consumer.start()
    return consumer


@pytest.fixture
async def server() -> AsyncIterator[WebSocketConsumer]:
    consumer = await started()
    yield consumer
    await consumer.stop()


def url(consumer: WebSocketConsumer, scheme: str = "ws") -> str:
    assert consumer.settings is not None
    return f"{scheme}://127.0.0.1:{consumer.settings.websocket_port}/"


async def client(consumer: WebSocketConsumer) -> ClientConnection:
    conn = await connect(url(consumer), additional_headers=basic(), compression=None)
    await async_wait_until(lambda: _true(len(consumer._clients) > 0), what="registration")
    return conn


async def _true(value: bool) -> bool:
    return value


async def recv_json(conn: ClientConnection) -> Any:
    return msgspec.json.decode(await asyncio.wait_for(conn.recv(), 5))


async def op(conn: ClientConnection, name: str, *args: str) -> dict[str, object]:
    await conn.send(msgspec.json.encode({"op": name, "args": list(args)}).decode())
    reply = await recv_json(conn)
    assert isinstance(reply, dict)
    return reply


async def feed(consumer: WebSocketConsumer, raws: list[bytes]) -> None:
    await consumer.consume_batch(CandleBatch(raws, {}))


@pytest.mark.parametrize(
    "headers",
    [{}, basic(key="wrong"), basic(user="bob"), {"Authorization": "Basic !!notbase64"},
     {"Authorization": "Bearer x"}],
)  # fmt: skip
async def test_wrong_or_missing_credentials_get_401(
    server: WebSocketConsumer, headers: dict[str, str]
) -> None:
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server), additional_headers=headers)
    assert err.value.response.status_code == 401
    assert err.value.response.headers["WWW-Authenticate"].startswith('Basic realm="klines"')
    assert not server._clients


async def test_no_credentials_refuses_to_start_unless_disabled() -> None:
    with pytest.raises(ConfigError) as err:
        ConsumerManager.create(["websocket"], ws_settings(free_port(), wss_auth_key=""))
    assert "STREAMER_WSS_AUTH_USER and STREAMER_WSS_AUTH_KEY must both be set" in str(err.value)
    consumer = await started(wss_auth_key="", wss_auth_user="", wss_auth_disabled=True)
    try:
        conn = await connect(url(consumer))
        await feed(consumer, [candle()])
        assert await recv_json(conn) == [msgspec.json.decode(candle())]
        await conn.close()
    finally:
        await consumer.stop()


async def test_port_in_use_is_a_clear_start_error(server: WebSocketConsumer) -> None:
    assert server.settings is not None
    other = WebSocketConsumer()
    other.settings = server.settings
    other.validate()
    with pytest.raises(ConfigError) as err:
        await other.setup()
    assert f"cannot listen on 127.0.0.1:{server.settings.websocket_port}" in str(err.value)
    assert "in use" in str(err.value)


async def test_health_path_and_unknown_path(server: WebSocketConsumer) -> None:
    with pytest.raises(InvalidStatus) as err:
        await connect(url(server) + "other", additional_headers=basic())
    assert err.value.response.status_code == 404
    assert server.settings is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", server.settings.websocket_port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert (await reader.read(100)).startswith(b"HTTP/1.1 200")
    writer.close()


async def test_tls_with_a_generated_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    consumer = await started(websocket_tls_cert=cert, websocket_tls_key=key)
    try:
        context = ssl.create_default_context(cafile=str(cert))
        conn = await connect(url(consumer, "wss"), ssl=context, additional_headers=basic())
        await async_wait_until(lambda: _true(bool(consumer._clients)), what="registration")
        await feed(consumer, [candle()])
        assert await recv_json(conn) == [msgspec.json.decode(candle())]
        await conn.close()
        with pytest.raises(InvalidStatus) as err:
            await connect(url(consumer, "wss"), ssl=context)
        assert err.value.response.status_code == 401
        with pytest.raises(ssl.SSLCertVerificationError):
            await connect(url(consumer, "wss"), additional_headers=basic())
    finally:
        await consumer.stop()


async def test_subscribe_filters_and_snapshots(server: WebSocketConsumer) -> None:
    btc_1m_old = candle("BTCUSDT", timestamp=1_786_310_760_000, close="1.1")
    btc_1m = candle("BTCUSDT", close="1.2")
    eth_1m = candle("ETHUSDT", close="2.2")
    btc_5m = candle("BTCUSDT", "5m", 300_000, 1_786_310_700_000, close="3.3")
    await feed(server, [btc_1m, btc_1m_old, eth_1m, btc_5m])  # older one after: not the latest
    conn = await client(server)
    reply = await op(conn, "subscribe", "1m.BTCUSDT", "5m.*")
    assert reply == {
        "op": "subscribe", "success": True, "ret_msg": "subscribed",
        "args": ["1m.BTCUSDT", "5m.*"],
    }  # fmt: skip
    snapshot = await recv_json(conn)
    assert snapshot == [msgspec.json.decode(btc_1m), msgspec.json.decode(btc_5m)]

    eth_5m = candle("ETHUSDT", "5m", 300_000, 1_786_311_000_000)
    eth_1m_next = candle("ETHUSDT", timestamp=1_786_310_880_000)
    btc_1m_next = candle("BTCUSDT", timestamp=1_786_310_880_000)
    await feed(server, [eth_1m_next, eth_5m, btc_1m_next])
    assert await recv_json(conn) == [msgspec.json.decode(eth_5m), msgspec.json.decode(btc_1m_next)]

    reply = await op(conn, "unsubscribe", "5m.*")
    assert reply["success"] is True
    await feed(server, [eth_5m, btc_1m])
    assert await recv_json(conn) == [msgspec.json.decode(btc_1m)]

    # `*` in the interval part, a prefix pattern, and `60s` being the same series as `1m`.
    reply = await op(conn, "subscribe", "*.ETH*", "60s.BTCUSDT")
    assert reply["args"] == ["*.ETH*"]
    assert await recv_json(conn) == [msgspec.json.decode(eth_1m_next), msgspec.json.decode(eth_5m)]

    # No topic left: every candle again.
    assert (await op(conn, "unsubscribe", "1m.BTCUSDT", "*.ETH*"))["success"] is True
    other = candle("XRPUSDT", "1h", 3_600_000, 1_786_309_200_000)
    await feed(server, [other])
    assert await recv_json(conn) == [msgspec.json.decode(other)]
    await conn.close()


async def test_bad_ops_get_error_replies_and_the_connection_lives(
    server: WebSocketConsumer,
) -> None:
    conn = await client(server)
    cases: list[tuple[str | bytes, object, str]] = [
        ("not json", None, "bad request: JSON is malformed"),
        ('{"args": []}', None, "bad request: Object missing required field `op`"),
        ('{"op": "subscribe", "args": [1]}', None, "bad request: Expected `str`, got `int`"),
        ('{"op": "subscribe", "args": ["BTCUSDT"]}', "subscribe", "is not '<interval>.<symbol>'"),
        ('{"op": "subscribe", "args": ["7x.BTCUSDT"]}', "subscribe", "interval '7x' is not valid"),
        ('{"op": "subscribe", "args": []}', "subscribe", "'args' must be a non-empty list"),
        ('{"op": "unsubscribe", "args": ["1m.ETHUSDT"]}', "unsubscribe", "not subscribed"),
        ('{"op": "explode"}', "explode", "unknown op"),
        (b"\x00\x01binary", None, "binary frames are not accepted"),
        ("[1, 2]", None, "bad request: Expected `object`, got `array`"),
    ]
    for message, op_name, text in cases:
        await conn.send(message)
        reply = await recv_json(conn)
        assert isinstance(reply, dict), message
        assert reply["op"] == op_name and reply["success"] is False, reply
        assert text in str(reply["ret_msg"]), reply
    assert await op(conn, "ping") == {"op": "ping", "success": True, "ret_msg": "pong", "args": []}
    # A failed subscribe changed nothing: still every candle.
    await feed(server, [candle("ETHUSDT")])
    assert await recv_json(conn) == [msgspec.json.decode(candle("ETHUSDT"))]
    # An oversized frame closes the connection (1009), and the server carries on.
    await conn.send("x" * 70_000)
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(conn.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    again = await client(server)
    assert (await op(again, "ping"))["success"] is True
    await again.close()


async def test_frames_hold_up_to_max_frame_candles() -> None:
    consumer = await started(websocket_max_frame_candles=3)
    try:
        conn = await client(consumer)
        raws = series(7)
        await feed(consumer, raws)
        frames = [await recv_json(conn) for _ in range(3)]
        assert [len(f) for f in frames] == [3, 3, 1]
        assert [c for f in frames for c in f] == [msgspec.json.decode(r) for r in raws]
        # The exact digits survive: no float noise.
        exact = candle(close="0.30000000000000000001")
        assert await _raw_frame(consumer, conn, [exact]) == b"[" + exact + b"]"
        await conn.close()
    finally:
        await consumer.stop()


async def _raw_frame(
    consumer: WebSocketConsumer, conn: ClientConnection, raws: list[bytes]
) -> bytes:
    await feed(consumer, raws)
    message = await asyncio.wait_for(conn.recv(), 5)
    return message.encode() if isinstance(message, str) else message


async def test_100_concurrent_clients_each_get_every_candle(server: WebSocketConsumer) -> None:
    conns = await asyncio.gather(
        *(connect(url(server), additional_headers=basic(), compression=None) for _ in range(100))
    )
    await async_wait_until(lambda: _true(len(server._clients) == 100), what="100 clients")
    raws = series(500)
    for start in range(0, 500, 100):
        await feed(server, raws[start : start + 100])
    expected = [msgspec.json.decode(r) for r in raws]

    async def receive_all(conn: ClientConnection) -> list[object]:
        got: list[object] = []
        while len(got) < len(expected):
            got.extend(await recv_json(conn))
        return got

    results = await asyncio.gather(*(receive_all(c) for c in conns))
    assert all(r == expected for r in results)
    await asyncio.gather(*(c.close() for c in conns))


async def test_max_clients_refuses_with_503() -> None:
    consumer = await started(websocket_max_clients=2)
    try:
        first, second = await client(consumer), await client(consumer)
        await async_wait_until(lambda: _true(len(consumer._clients) == 2), what="2 clients")
        with pytest.raises(InvalidStatus) as err:
            await connect(url(consumer), additional_headers=basic())
        assert err.value.response.status_code == 503
        await first.close()
        await second.close()
    finally:
        await consumer.stop()


async def test_a_client_that_stops_reading_is_closed_and_never_delays_the_others() -> None:
    consumer = await started(websocket_client_buffer=20, websocket_max_frame_candles=10)
    try:
        # The stalled client: a small receive buffer, and it never reads.
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        assert consumer.settings is not None
        sock.connect(("127.0.0.1", consumer.settings.websocket_port))
        stalled = await connect(
            url(consumer), sock=sock, additional_headers=basic(), compression=None, max_queue=1
        )
        healthy = await client(consumer)
        await async_wait_until(lambda: _true(len(consumer._clients) == 2), what="2 clients")

        def open_clients() -> list[_Client]:
            return [c for c in consumer._clients if not c.outbox.closing]

        big = series(1000, symbols=50)  # 100 frames of 10 candles, ~3.5 KB each
        delays: list[float] = []
        for _ in range(500):
            sent = time.monotonic()
            await feed(consumer, big)
            got = 0
            while got < len(big):
                got += len(await recv_json(healthy))
            delays.append(time.monotonic() - sent)
            if not any(
                c.outbox.conn.remote_address == stalled.local_address for c in open_clients()
            ):
                break
        assert len(open_clients()) == 1, "the stalled client was not closed"
        # What this protects: the healthy client never waits on the stalled one (a publisher that
        # awaited the stalled socket would hold it until the test's timeout, as it never reads).
        # 1000 candles per round take well under a second idle; 10 s is room for a loaded machine.
        assert max(delays) < 10.0, delays
        # The healthy client still gets everything, on time.
        await feed(consumer, big[:10])
        assert len(await recv_json(healthy)) == 10
        # The stalled client, once it reads again, finds the close code and reason.
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await asyncio.wait_for(stalled.recv(), 10)
        assert closed.value.rcvd is not None
        assert closed.value.rcvd.code == 1008
        assert closed.value.rcvd.reason == "client too slow: more than 20 frames queued"
        await healthy.close()
    finally:
        await consumer.stop()


def test_user_name_is_used() -> None:
    assert USER == "alice"


async def test_a_client_that_answers_no_pings_is_dropped() -> None:
    consumer = await started(websocket_ping_interval_s=0.2)
    try:
        conn = await client(consumer)
        conn.transport.pause_reading()  # it no longer sees the server's pings, so never answers
        await async_wait_until(
            lambda: _true(not consumer._clients), timeout_s=5, what="the silent client dropped"
        )
        conn.transport.abort()
    finally:
        await consumer.stop()


async def test_a_revision_replaces_the_snapshot(server: WebSocketConsumer) -> None:
    first = candle("BTCUSDT", close="1.0")
    revised = candle("BTCUSDT", close="1.1", revision=1)
    await feed(server, [first, revised])
    conn = await client(server)
    assert (await op(conn, "subscribe", "1m.BTCUSDT"))["success"] is True
    assert await recv_json(conn) == [msgspec.json.decode(revised)]
    await conn.close()
