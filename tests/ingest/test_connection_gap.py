"""Where a dropped connection's gap starts, over a real WebSocket.

Found by the repair suite (a rare failure): a candle about 90 ms before a drop lacked its last
trades and carried no gap mark. Bybit's messages of one moment span its batching time across
symbols, so a message lost in the drop can hold trades older than the last message received.
The gap started at the last message's `ts`, after them: they were in no stream and under no gap.
The stand-in exchange here is a small WebSocket server speaking Bybit's frames.
"""

from __future__ import annotations

import asyncio
import json
import time

from websockets.asyncio.server import ServerConnection, serve

from common.wire import Category
from ingest.bybit.messages import TradeMessage
from ingest.connection import Connection

BATCHED_MS = 60  # how far back the oldest trade of the first message lies


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _push(symbol: str, ts: int, trade_ms: int, trade_id: str) -> str:
    trade = {"T": trade_ms, "s": symbol, "S": "Buy", "v": "1", "p": "10.5", "i": trade_id}
    return json.dumps({"topic": f"publicTrade.{symbol}", "type": "snapshot", "ts": ts,
                       "data": [trade]})  # fmt: skip


async def test_a_drop_s_gap_reaches_back_to_the_oldest_trade_sent_with_the_last_ones() -> None:
    received: list[TradeMessage] = []
    both_in = asyncio.Event()
    gaps: list[tuple[list[str], int, int]] = []
    gap_reported = asyncio.Event()
    sessions = 0
    oldest: list[int] = []

    async def exchange(ws: ServerConnection) -> None:
        nonlocal sessions
        sessions += 1
        op = json.loads(await ws.recv())
        await ws.send(json.dumps({"success": True, "ret_msg": "", "conn_id": "c",
                                  "req_id": op["req_id"], "op": "subscribe"}))  # fmt: skip
        if sessions > 1:
            await ws.wait_closed()
            return
        now = _now_ms()
        oldest.append(now - BATCHED_MS)
        # Sent together: AAA's trades reach back BATCHED_MS, BBB's are fresh. A third message
        # of the same moment (CCC's, as old as AAA's) is lost in the drop.
        await ws.send(_push("AAAUSDT", now, now - BATCHED_MS, "a1"))
        await ws.send(_push("BBBUSDT", now, now - 1, "b1"))
        await both_in.wait()
        ws.transport.abort()

    def on_trades(message: TradeMessage, received_ms: int) -> None:
        received.append(message)
        if len(received) == 2:
            both_in.set()

    def on_gap(symbols: list[str], from_ms: int, to_ms: int) -> None:
        gaps.append((symbols, from_ms, to_ms))
        gap_reported.set()

    async with serve(exchange, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        conn = Connection(
            "ws0", f"ws://127.0.0.1:{port}/v5/public/linear", Category.LINEAR,
            ping_interval_s=20, dead_after_s=30, on_trades=on_trades, on_gap=on_gap,
        )  # fmt: skip
        await conn.add(["AAAUSDT", "BBBUSDT", "CCCUSDT"])
        stop = asyncio.Event()
        task = asyncio.create_task(conn.run(stop))
        try:
            await asyncio.wait_for(gap_reported.wait(), 10)
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
    assert [m.symbol for m in received] == ["AAAUSDT", "BBBUSDT"]
    [(symbols, from_ms, to_ms)] = gaps
    assert symbols == ["AAAUSDT", "BBBUSDT", "CCCUSDT"]
    # CCC's lost trades are as old as AAA's oldest: the gap covers them (the receive times of
    # the two messages lie within a few ms of each other)
    assert from_ms <= oldest[0] + 10, (from_ms, oldest[0])
    assert to_ms >= from_ms
