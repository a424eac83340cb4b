"""Bybit's own SDK (pybit) reading our candles, with only the URLs changed: the history over
`GET /v5/market/kline`, then the live `kline.<interval>.<symbol>` topics of `/v5/public/linear`,
by default for Bybit's 1-minute (`1`) and our 1-second (`1s`) interval.

    python -m examples.pybit_klines 127.0.0.1:9500 USER KEY BTCUSDT [INTERVAL...]

pybit cannot set a header on its WebSocket, so the credentials go in `auth=` (URL-encoded); its
HTTP client (requests) sends the URL's user:key as Basic auth. pybit does not check intervals,
so `kline_stream(interval="1s", ...)` subscribes to `kline.1s.<symbol>`.
"""

from __future__ import annotations

import signal
import sys
import threading
import time
from typing import Any
from urllib.parse import quote

import pybit.unified_trading as ut


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.strip().splitlines()[4], file=sys.stderr)
        return 2
    host, user, key, symbol, *intervals = argv
    intervals = intervals or ["1", "1s"]
    http = ut.HTTP(testnet=False)
    http.endpoint = f"http://{quote(user, safe='')}:{quote(key, safe='')}@{host}"
    for interval in intervals:
        answer = http.get_kline(category="linear", symbol=symbol, interval=interval, limit=5)
        for start, open_, high, low, close, volume, turnover in reversed(answer["result"]["list"]):
            print(f"history {interval} {start} o={open_} h={high} l={low} c={close} v={volume} "
                  f"t={turnover}", flush=True)  # fmt: skip

    ut.PUBLIC_WSS = f"ws://{host}/v5/public/{{CHANNEL_TYPE}}?auth={quote(f'{user}:{key}', safe='')}"
    ws = ut.WebSocket(testnet=False, channel_type="linear")

    def show(message: dict[str, Any]) -> None:
        for k in message["data"]:
            state = "closed" if k["confirm"] else "open"
            print(f"{message['topic']} {k['start']} c={k['close']} v={k['volume']} {state}",
                  flush=True)  # fmt: skip

    for interval in intervals:
        ws.kline_stream(interval=interval, symbol=symbol, callback=show)
    # Ctrl-C or SIGTERM ends it. A timed sleep, not an untimed wait: a signal the kernel hands to
    # one of pybit's threads interrupts nothing, and the main thread runs Python's handler only
    # when it next wakes (an untimed wait could sleep through it forever).
    stopped: list[int] = []
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda number, _frame: stopped.append(number))
    while not stopped:
        time.sleep(0.2)
    # pybit reconnects when its closing socket reports an error (a race with exit()), and exit()
    # then waits for the new socket without a limit: no reconnect from here on, and at most 5 s
    # for its threads (daemons) to let go.
    ws.handle_error = False
    closing = threading.Thread(target=ws.exit, daemon=True)
    closing.start()
    closing.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
