"""`python -m bench.aggregate_fanout`: `python -m aggregate` that also sends each write's closed
candles to WebSocket clients of its own the moment Redis has taken the write (port
BENCH_FANOUT_PORT; frames of FRAME_CANDLES candles, the aggregator's JSON as publish sends it).
Only the bench's control for what one process for the aggregator and publish would save on a
candle's way (bench/boundary.py `--fanout`: a second WebSocket user beside publish's, in the same
trials); never for use: no authentication, no subscriptions, no resume, nothing kept.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast, serve

from aggregate import shard
from aggregate.__main__ import main

FRAME_CANDLES = 100  # STREAMER_WEBSOCKET_MAX_FRAME_CANDLES's default
CLOSED_ARG = 5  # the write script's argument of the closed candles' JSON, joined by newlines

_clients: set[ServerConnection] = set()
_server: list[asyncio.Future[None]] = []  # the server's task, started by the first write
_send = shard.ShardAggregator._send


async def _hold(ws: ServerConnection) -> None:
    _clients.add(ws)
    try:
        await ws.wait_closed()
    finally:
        _clients.discard(ws)


async def _serve(port: int) -> None:
    async with serve(_hold, "127.0.0.1", port, compression=None) as server:
        await server.serve_forever()


async def _send_and_fan_out(self: shard.ShardAggregator, w: Any, *, together: bool = False) -> None:
    if not _server:
        _server.append(asyncio.ensure_future(_serve(int(os.environ["BENCH_FANOUT_PORT"]))))
    await _send(self, w, together=together)
    if w.closed and _clients:
        raws = w.args[CLOSED_ARG].split(b"\n")
        for first in range(0, len(raws), FRAME_CANDLES):
            broadcast(_clients, b"[" + b",".join(raws[first : first + FRAME_CANDLES]) + b"]")


if __name__ == "__main__":
    setattr(shard.ShardAggregator, "_send", _send_and_fan_out)  # noqa: B010  (a method replaced)
    sys.exit(main(sys.argv[1:]))
