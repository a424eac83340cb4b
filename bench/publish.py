"""Publisher fan-out: candle deliveries/s to 100 WebSocket clients, next to raw broadcast().

Measured: the real `python -m publish websocket` process (uvloop, auth on, no compression,
100 candles per frame) reading candles that this bench XADDs into the candle streams of a private
redis-server, and delivering them to 100 authenticated clients held by one client process.
Baseline, same run, same client process, same frames: a websockets server in this process doing
`broadcast()` of the frames (paced so that no connection buffers more than 256 KiB).
A delivery = one candle received by one client; rate = deliveries / (first frame → last candle).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from bench.report import Row
from common.keys import Keys
from common.sharding import shard_of
from common.wire import Candle, candle_encoder, raw_number
from tests.support.redisproc import RedisProcess, free_port

if TYPE_CHECKING:
    from websockets.asyncio.client import ClientConnection
    from websockets.asyncio.server import ServerConnection

ROOT = Path(__file__).resolve().parents[1]
SHARDS = 2
USER, KEY = "bench", "bench-key"
PER_FRAME = 100
PREFIX = "bench"
LIMIT = 256 * 1024


def make_candles(count: int, start_ms: int) -> list[bytes]:
    out = []
    for i in range(count):
        price = f"{65000 + (i * 7919) % 10_000 / 10:.1f}"
        out.append(
            candle_encoder.encode(
                Candle(
                    symbol=f"S{i % 200:03d}USDT",
                    interval=60_000,
                    interval_label="1m",
                    timestamp=start_ms + (i // 200) * 60_000,
                    open=raw_number(price),
                    high=raw_number(price),
                    low=raw_number(price),
                    close=raw_number(price),
                    volume=raw_number("7.035"),
                    turnover=raw_number("458078.3588"),
                    trade_count=55,
                    buy_volume=raw_number("3.1"),
                    sell_volume=raw_number("3.935"),
                )
            )
        )
    return out


# --- the client process ----------------------------------------------------------------------


async def _clients(url: str, clients: int, candles: int) -> None:
    from websockets.asyncio.client import connect

    token = base64.b64encode(f"{USER}:{KEY}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    conns = [
        await connect(url, additional_headers=headers, compression=None, max_size=None)
        for _ in range(clients)
    ]
    first: list[float] = []

    async def receive(conn: ClientConnection) -> None:
        got = 0
        while got < candles:
            frame = await conn.recv(decode=False)
            if not first:
                first.append(time.perf_counter())
            got += frame.count(b'"symbol"')

    print("ready", flush=True)
    await asyncio.gather(*(receive(c) for c in conns))
    elapsed = time.perf_counter() - first[0]
    print(json.dumps({"elapsed_s": elapsed, "deliveries": candles * clients}), flush=True)
    for conn in conns:
        await conn.close()


async def _run_clients(
    url: str, clients: int, candles: int, trigger: Callable[[], Awaitable[None]]
) -> float:
    """Start the client process, call `trigger()` once all are connected, return deliveries/s."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.publish", "clients", url, str(clients), str(candles),
        cwd=ROOT, stdout=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60)
    assert line.strip() == b"ready", line
    await trigger()
    result = json.loads(await asyncio.wait_for(proc.stdout.readline(), 300))
    await proc.wait()
    return float(result["deliveries"] / result["elapsed_s"])


# --- the two servers -------------------------------------------------------------------------


async def _hold(conn: ServerConnection) -> None:
    await conn.wait_closed()


def _frames(raws: list[bytes]) -> list[bytes]:
    return [
        b"[" + b",".join(raws[i : i + PER_FRAME]) + b"]" for i in range(0, len(raws), PER_FRAME)
    ]


async def _broadcast_trial(raws: list[bytes], clients: int) -> float:
    from websockets.asyncio.server import broadcast, serve

    frames = _frames(raws)
    async with serve(lambda conn: conn.wait_closed(), "127.0.0.1", 0, compression=None) as server:
        port = next(iter(server.sockets)).getsockname()[1]  # bound to port 0: no race

        async def send_all() -> None:
            while len(server.connections) < clients:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
            conns = list(server.connections)
            for frame in frames:
                broadcast(conns, frame, text=True)
                while any(c.transport.get_write_buffer_size() > LIMIT for c in conns):  # noqa: ASYNC110
                    await asyncio.sleep(0)

        async def trigger() -> None:
            sender.append(asyncio.create_task(send_all()))

        sender: list[asyncio.Task[None]] = []
        rate = await _run_clients(f"ws://127.0.0.1:{port}/", clients, len(raws), trigger)
        await sender[0]
    return rate


async def _publisher_trial(redis_port: int, ws_port: int, raws: list[bytes], clients: int) -> float:
    client = redis.Redis(port=redis_port)
    keys = Keys(PREFIX)

    async def trigger() -> None:
        pipe = client.pipeline(transaction=False)
        for raw in raws:
            symbol = raw[11 : raw.index(b'"', 11)].decode()
            pipe.xadd(keys.klines(shard_of(symbol, SHARDS)), {"data": raw})
        pipe.execute()

    rate = await _run_clients(f"ws://127.0.0.1:{ws_port}/", clients, len(raws), trigger)
    client.close()
    return rate


def _start_publisher(redis_port: int, ws_port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_ENV_FILE="/nonexistent.env",
        STREAMER_REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        STREAMER_REDIS_PREFIX=PREFIX,
        STREAMER_SHARDS=str(SHARDS),
        STREAMER_WSS_AUTH_USER=USER,
        STREAMER_WSS_AUTH_KEY=KEY,
        STREAMER_WEBSOCKET_PORT=str(ws_port),
        STREAMER_WEBSOCKET_MAX_FRAME_CANDLES=str(PER_FRAME),
        STREAMER_PUBLISH_REPLICA="bench",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "publish", "websocket"],
        env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    while "publishing" not in log.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"publisher did not start:\n{log.read_text()}")
        time.sleep(0.05)
    return proc


def run(smoke: bool) -> list[Row]:
    import uvloop

    clients = 10 if smoke else 100
    candles = 2_000 if smoke else 30_000
    trials = 1 if smoke else 3
    ours: list[float] = []
    raw: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        redis_server = RedisProcess(Path(tmp) / "redis").start()
        redis_port = redis_server.port
        ws_port = free_port()
        publisher = _start_publisher(redis_port, ws_port, Path(tmp) / "publish.log")
        try:
            for trial in range(trials):
                raws = make_candles(candles, 1_786_310_820_000 + trial * 10**9)
                ours.append(uvloop.run(_publisher_trial(redis_port, ws_port, raws, clients)))
                raw.append(uvloop.run(_broadcast_trial(raws, clients)))
                print(
                    f"  trial {trial}: publisher {ours[-1]:,.0f}/s, broadcast {raw[-1]:,.0f}/s",
                    file=sys.stderr,
                )
        finally:
            publisher.terminate()
            publisher.wait(30)
            redis_server.stop()
    ours.sort()
    raw.sort()
    return [
        Row(
            "publish",
            f"candle deliveries/s, `python -m publish websocket` → {clients} clients "
            f"({PER_FRAME} candles/frame)",
            ours[len(ours) // 2],
            "candles/s",
            "websockets broadcast() of the same frames",
            raw[len(raw) // 2],
            "≥ 150 k/s and ≥ 0.7× broadcast",
        )
    ]


def _main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("role", choices=["clients"])
    parser.add_argument("url")
    parser.add_argument("clients", type=int)
    parser.add_argument("candles", type=int)
    args = parser.parse_args()
    import uvloop

    uvloop.run(_clients(args.url, args.clients, args.candles))


if __name__ == "__main__":
    _main()
