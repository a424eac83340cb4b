"""The simulator's kline snapshots, rebuilt independently from its own trade ledger.

The simulator's clock is shifted (`--clock-offset-ms`) so that a minute boundary comes a few
seconds after start: the test sees the previous candle confirmed and the next one built.
"""

from __future__ import annotations

import json
import time
from decimal import Decimal
from typing import Any

import pytest
import websockets

from tests.simulator.conftest import Sim
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e
LEAD_MS = 6_000  # start-up and subscription must fit before the boundary, even on a busy box


def _expected(prev_close: Decimal, trades: list[dict[str, Any]]) -> dict[str, Decimal]:
    prices = [Decimal(t["p"]) for t in trades]
    return {
        "open": prev_close,
        "high": max([prev_close, *prices]),
        "low": min([prev_close, *prices]),
        "close": prices[-1] if prices else prev_close,
        "volume": sum((Decimal(t["v"]) for t in trades), Decimal(0)),
        "turnover": sum((Decimal(t["v"]) * Decimal(t["p"]) for t in trades), Decimal(0)),
    }


async def test_snapshots_follow_bybits_rules(sim_factory: Any, tmp_path: Any) -> None:
    wall_ms = int(time.time() * 1000)
    boundary = (wall_ms // 60_000 + 1) * 60_000
    offset = boundary - LEAD_MS - wall_ms
    kline_ledger = tmp_path / "klines.jsonl"
    sim: Sim = sim_factory(
        "--symbols", "5", "--rate", "300", "--quiet-fraction", "0.2", "--seed", "11",
        "--clock-offset-ms", str(offset), "--kline-ledger", str(kline_ledger),
    )  # fmt: skip
    symbols = ["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT", "XRPUSDT"]
    frames: list[dict[str, Any]] = []
    async with websockets.connect(sim.ws_url) as ws:
        args = [f"{kind}{s}" for s in symbols for kind in ("publicTrade.", "kline.1.")]
        await ws.send(json.dumps({"op": "subscribe", "args": args}))
        market_end = boundary + 3_500
        async for message in ws:
            frame = json.loads(message)
            frames.append(frame)
            if frame.get("ts", 0) > market_end:
                break
    kline_frames = [f for f in frames if f.get("topic", "").startswith("kline.")]
    ledger = sim.ledger_lines()
    quiet = 0
    for symbol in symbols:
        mine = [f for f in kline_frames if f["topic"] == f"kline.1.{symbol}"]
        confirm_frames = [f for f in mine if any(i["confirm"] for i in f["data"])]
        assert len(confirm_frames) == 1, symbol
        confirm, first_next = confirm_frames[0]["data"]  # linear: confirm + next candle together
        assert (confirm["start"], confirm["end"], confirm["confirm"]) == (
            boundary - 60_000, boundary - 1, True,
        )  # fmt: skip
        assert (first_next["start"], first_next["confirm"]) == (boundary, False)
        prev_close = Decimal(confirm["close"])
        snapshots = [i for f in mine for i in f["data"] if i["start"] == boundary]
        assert len(snapshots) >= 3  # about one a second, from the boundary on
        for snap in snapshots:
            assert isinstance(snap["timestamp"], int) and isinstance(snap["end"], int)
            assert all(isinstance(snap[k], str) for k in ("open", "close", "volume", "turnover"))
            trades = [
                t for t in ledger
                if t.get("symbol") == symbol and boundary <= t["T"] <= snap["timestamp"]
            ]  # fmt: skip
            got = {
                k: Decimal(snap[k]) for k in ("open", "high", "low", "close", "volume", "turnover")
            }
            assert got == _expected(prev_close, trades), (symbol, snap)
        if Decimal(snapshots[-1]["volume"]) == 0 and Decimal(confirm["volume"]) == 0:
            quiet += 1
            assert confirm["open"] == confirm["high"] == confirm["low"] == confirm["close"]
    assert quiet == 1  # one of five symbols never trades: flat candles, volume "0"

    def confirms_in_ledger() -> list[dict[str, Any]]:
        lines = [json.loads(x) for x in kline_ledger.read_text().splitlines()]
        return [x for x in lines if x["start"] == boundary - 60_000]

    lines = wait_until(lambda: len(confirms_in_ledger()) == 5 and confirms_in_ledger(), 5)
    by_symbol = {x["symbol"]: x for x in lines}
    btc = next(
        i
        for f in kline_frames
        if f["topic"] == "kline.1.BTCUSDT"
        for i in f["data"]
        if i["confirm"]
    )
    assert by_symbol["BTCUSDT"]["close"] == btc["close"]
    assert by_symbol["BTCUSDT"]["turnover"] == btc["turnover"]
