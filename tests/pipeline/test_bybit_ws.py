"""pybit 5.17 (Bybit's official SDK), unchanged but for the URL, reads our candles at
`/v5/public/linear`: simulator → ingest → aggregate → publish as real processes.

pybit's `PUBLIC_WSS` is pointed at the publish server, with the credentials as `?auth=` (pybit
cannot set a header). `kline_stream(interval=1, ...)` is Bybit's 1-minute topic; pybit does not
check intervals, so `kline_stream(interval="1s", ...)` subscribes to `kline.1s.<symbol>`. The
simulator's market clock runs 20x faster than the wall (`--speed`), so 1-minute candles close
every 3 s; the pipeline runs on trade time, so nothing else changes. pybit subscribes before the
aggregator starts. What is asserted: every closed candle of the candle streams (of the series
subscribed) arrives once, in stream order, with `confirm: true`, the right `end` and the stream's
exact digits, and nothing else does; with updates on, in-progress candles arrive with
`confirm: false` and never after their candle closed. The credentials never reach the log.
"""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from common.wire import STREAM_FIELD
from tests.support import replies
from tests.support.pipeline import PASSWORD, USER, Pipeline, start_pipeline, wait_for_ws
from tests.support.waiting import wait_until

pybit_ut = pytest.importorskip("pybit.unified_trading")

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SYMBOLS = ("BTCUSDT", "ETHUSDT")
CODES = {"1": 60_000, "1s": 1000}
Series = tuple[str, str]  # (code, symbol)
Row = tuple[int, int, str, str, str, str, str, str]  # start, end, open, high, low, close, vol, turn


def stream_rows(pipe: Pipeline) -> dict[Series, list[Row]]:
    """Every candle of the candle streams, per series, in stream order, digits as written."""
    codes = {ms: code for code, ms in CODES.items()}
    out: dict[Series, list[Row]] = defaultdict(list)
    client = pipe.client()
    for shard in range(pipe.shards):
        for _, fields in replies.entries(client.xrange(pipe.keys.klines(shard))):
            c = json.loads(fields[STREAM_FIELD], parse_float=str, parse_int=str)
            code = codes.get(int(c["interval"]))
            if code is not None and c["symbol"] in SYMBOLS and c["closed"]:
                start = int(c["timestamp"])
                out[(code, c["symbol"])].append(
                    (start, start + CODES[code] - 1, c["open"], c["high"], c["low"], c["close"],
                     c["volume"], c["turnover"])
                )  # fmt: skip
    client.close()
    return out


class Received:
    """What pybit's callbacks got, per series."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.closed: dict[Series, list[Row]] = defaultdict(list)
        self.open: dict[Series, list[int]] = defaultdict(list)
        self.late_updates: list[tuple[Series, int]] = []

    def __call__(self, message: dict[str, Any]) -> None:
        _, code, symbol = message["topic"].split(".")
        assert message["type"] == "snapshot" and message["ts"] > 0
        with self.lock:
            for item in message["data"]:
                assert item["interval"] == code
                start = item["start"]
                row = (start, item["end"], item["open"], item["high"], item["low"], item["close"],
                       item["volume"], item["turnover"])  # fmt: skip
                confirmed = self.closed[(code, symbol)]
                if item["confirm"] is True:
                    confirmed.append(row)
                else:
                    assert item["confirm"] is False
                    self.open[(code, symbol)].append(start)
                    if confirmed and start <= confirmed[-1][0]:
                        self.late_updates.append(((code, symbol), start))

    def count(self, series: Series) -> int:
        with self.lock:
            return len(self.closed[series])


@pytest.mark.parametrize("updates", [False, True], ids=["closed", "updates"])
def test_pybit_kline_streams_get_every_closed_candle(
    tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch, updates: bool
) -> None:
    extra = {"STREAMER_KLINE_UPDATES_MS": "100", "STREAMER_WEBSOCKET_UPDATES": "true"}
    pipe = start_pipeline(
        tmp_path, redis_url,
        ("--symbol-list", ",".join(SYMBOLS), "--rate", "100", "--quiet-fraction", "0",
         "--speed", "20"),
        shards=2, intervals="1s,1m", **(extra if updates else {}),
    )  # fmt: skip
    auth = quote(f"{USER}:{PASSWORD}", safe="")
    base = f"ws://127.0.0.1:{pipe.ws_port}/v5/public/{{CHANNEL_TYPE}}?auth={auth}"
    monkeypatch.setattr(pybit_ut, "PUBLIC_WSS", base)
    received = Received()
    ws = None
    try:
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        ws = pybit_ut.WebSocket(testnet=False, channel_type="linear", retries=3)
        ws.kline_stream(interval=1, symbol=list(SYMBOLS), callback=received)
        ws.kline_stream(interval="1s", symbol="BTCUSDT", callback=received)
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        wanted = [("1", s) for s in SYMBOLS] + [("1s", "BTCUSDT")]
        wait_until(
            lambda: all(received.count(s) >= 4 for s in wanted), 90, "four closed candles each"
        )
        assert pipe.sim.proc.stop() == 0  # the streams stop growing: compare all of them

        def all_arrived() -> bool:
            stream = stream_rows(pipe)
            with received.lock:
                return all(received.closed[s] == stream[s] for s in wanted)

        try:
            wait_until(all_arrived, 30, "every candle of the streams")
        finally:
            stream = stream_rows(pipe)
            for series in wanted:  # on failure, the first difference
                with received.lock:
                    assert received.closed[series] == stream[series], series
                assert len(stream[series]) >= 4
        assert ("1s", "ETHUSDT") not in received.closed  # not subscribed
        if updates:
            assert all(received.open[s] for s in wanted), dict(received.open)
            assert received.late_updates == []
        else:
            assert not received.open
        assert ws.is_connected()
    finally:
        if ws is not None:
            ws.exit()
        pipe.stop_all()
    publish_log = (tmp_path / "publish.log").read_text()
    assert PASSWORD not in publish_log and auth not in publish_log
