"""A WebSocket client that never misses a candle: it subscribes with `since`, and after a drop
(network, a publish restart) it reconnects and subscribes again from the last open time it holds
(docs/protocol.md, "Resume"). Candles come once each; a revision replaces the candle it revises.

    python -m examples.ws_resume ws://127.0.0.1:9500/ USER KEY 1s.BTCUSDT '1m.*'

Prices and sizes are read as `Decimal`, so the exchange's digits stay exact.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

Candle = dict[str, Any]


async def follow(
    url: str,
    user: str,
    key: str,
    topics: list[str],
    since_ms: int,
    on_candle: Callable[[Candle, bool], None],
    stop: asyncio.Event,
) -> None:
    """Calls `on_candle(candle, replaces)` for every closed candle of `topics` from `since_ms`
    on, until `stop` is set; `replaces` is True for a revision of a candle given before."""
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    revisions: dict[tuple[str, int, int], int] = {}  # (symbol, interval, open time) -> revision
    newest: dict[tuple[str, int], int] = {}  # series -> the newest open time held
    since = since_ms
    async for ws in connect(url, additional_headers={"Authorization": f"Basic {token}"}):
        try:
            await ws.send(json.dumps({"op": "subscribe", "args": topics, "since": since}))
            subscribed = False
            history = 0  # candles of the history still to come (the reply says how many)
            while not stop.is_set():
                try:
                    message = await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
                frame = json.loads(message, parse_float=Decimal)
                if isinstance(frame, dict):  # an op's reply
                    if not frame["success"]:
                        raise RuntimeError(f"subscribe refused: {frame['ret_msg']}")
                    subscribed = True
                    history = int(frame["ret_msg"].split()[1])  # "subscribed; N candles of ..."
                    continue
                if not subscribed:
                    continue  # before the subscribe: the whole feed, not ours
                for candle in frame:
                    series = (candle["symbol"], candle["interval"])
                    at = (*series, candle["timestamp"])
                    held = revisions.get(at)
                    if held is not None and held >= candle["revision"]:
                        continue
                    revisions[at] = candle["revision"]
                    newest[series] = max(candle["timestamp"], newest.get(series, 0))
                    on_candle(candle, held is not None)
                history -= len(frame)
                if history <= 0:
                    # Every series has its history: the next connection starts at the least
                    # newest open time of all series, so none misses anything (the candles held
                    # already come again and are skipped above). Cut before that, the series
                    # the history had not come to yet got nothing: start from `since` again.
                    since = min(newest.values(), default=since)
        except ConnectionClosed:
            continue  # connect() waits a little, then reconnects
        if stop.is_set():
            await ws.close()
            return


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    url, user, key, *topics = argv

    def show(candle: Candle, replaces: bool) -> None:
        label = candle.get("interval_label", candle["interval"])
        note = f" (revision {candle['revision']})" if replaces else ""
        print(
            f"{candle['symbol']} {label} {candle['timestamp']} close={candle['close']}{note}",
            flush=True,
        )

    since = int(time.time() * 1000) - 3_600_000  # the last hour first

    async def until_signalled() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)  # ends the loop in `follow` within 0.5 s
        await follow(url, user, key, topics, since, show, stop)

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C before the loop has started
        asyncio.run(until_signalled())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
