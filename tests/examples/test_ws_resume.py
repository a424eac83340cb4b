"""examples/ws_resume.py's reconnect rule, against a WebSocket server that plays publish's
resume protocol (docs/protocol.md "Resume") from a script: the first connection is cut while its
history is half sent. The series the history had not come to yet got nothing, so the client must
resume from where it started, not from the newest candle of the series it did get.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from examples.ws_resume import Candle, follow


def candle(symbol: str, ts: int) -> dict[str, Any]:
    return {"symbol": symbol, "interval": 1000, "timestamp": ts, "revision": 0, "close": "1.5"}


# Stored history: series A, then series B, oldest first (as publish sends it).
HISTORY = [candle("A", 1000), candle("A", 2000), candle("B", 1000), candle("B", 2000)]
LIVE = candle("A", 3000)  # after the second connection's history: the end of the script


async def test_a_connection_cut_during_its_history_resumes_from_its_own_since() -> None:
    asked: list[int] = []
    got: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def handler(ws: ServerConnection) -> None:
        request = json.loads(await ws.recv())
        since = request["since"]
        asked.append(since)
        history = [c for c in HISTORY if c["timestamp"] >= since]
        reply = f"subscribed; {len(history)} candles of 2 series first"
        await ws.send(json.dumps({"op": "subscribe", "success": True, "ret_msg": reply}))
        if len(asked) == 1:
            await ws.send(json.dumps(history[:2]))  # series A only, then the connection dies
            assert ws.transport is not None
            ws.transport.abort()
            return
        await ws.send(json.dumps(history[:2]))
        await ws.send(json.dumps(history[2:]))
        await ws.send(json.dumps([LIVE]))
        await ws.wait_closed()

    def on_candle(c: Candle, replaces: bool) -> None:
        assert not replaces
        got.append((c["symbol"], c["timestamp"]))
        if c == LIVE:
            stop.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        task = asyncio.create_task(
            follow(f"ws://127.0.0.1:{port}/", "u", "k", ["1s.*"], 1000, on_candle, stop)
        )
        await asyncio.wait_for(stop.wait(), 30)
        await asyncio.wait_for(task, 10)
    assert asked == [1000, 1000]  # not 2000: B's candle at 1000 was never sent
    assert sorted(set(got)) == [("A", 1000), ("A", 2000), ("A", 3000), ("B", 1000), ("B", 2000)]
    assert len(got) == len(set(got))  # A's candles, sent again, were skipped
