"""The real capture replayed through the simulator reproduces `TABLE`: Bybit's own last 21:27
`kline.1` snapshot of each of the six series in that capture."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.simulator.conftest import Sim
from tests.support.procs import NO_TESTDATA, TESTDATA

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(not TESTDATA.is_dir(), reason=f"{NO_TESTDATA}: {TESTDATA}"),
]
CANDLE_2126 = 1_786_310_760_000
CANDLE_2127 = 1_786_310_820_000
# (category, symbol): prev close, kline timestamp, open, high, low, close, volume, turnover
TABLE = {
    ("linear", "BTCUSDT"): ("65114.2", 1_786_310_860_441, "65114.2", "65114.3", "65113.1",
                            "65114.3", "7.035", "458078.3588"),
    ("linear", "DOGEUSDT"): ("0.07053", 1_786_310_859_696, "0.07053", "0.07056", "0.07053",
                             "0.07055", "345445", "24372.57867"),
    ("linear", "ETHUSDT"): ("1922.48", 1_786_310_854_124, "1922.48", "1922.55", "1922.48",
                            "1922.54", "11.67", "22436.0625"),
    ("linear", "SOLUSDT"): ("77.31", 1_786_310_861_006, "77.31", "77.31", "77.26", "77.26",
                            "5697.4", "440331.389"),
    ("spot", "BTCUSDT"): ("65140.5", 1_786_310_858_562, "65140.5", "65140.5", "65140.4",
                          "65140.4", "0.012527", "816.0141706"),
    ("spot", "ETHUSDT"): ("1923.27", 1_786_310_860_819, "1923.27", "1923.29", "1923.27",
                          "1923.28", "1.68421", "3239.2074251"),
}  # fmt: skip
CAPTURE_IDS = {"a9188a0a-82bc-50de-be60-03eedbe3cdd7": 1_786_310_819_680}  # linear BTCUSDT


async def _replay(sim: Sim, category: str) -> list[dict[str, Any]]:
    symbols = [s for c, s in TABLE if c == category]
    frames: list[dict[str, Any]] = []
    wanted = {TABLE[(category, s)][1] % 60_000 for s in symbols}
    async with websockets.connect(sim.ws_url) as ws:
        args = [f"{k}{s}" for s in symbols for k in ("publicTrade.", "kline.1.")]
        await ws.send(json.dumps({"op": "subscribe", "args": args}))
        async with asyncio.timeout(30):
            seen: set[int] = set()
            async for message in ws:
                frame = json.loads(message)
                frames.append(frame)
                for item in frame.get("data", []) if "kline" in frame.get("topic", "") else []:
                    if item["start"] % 60_000 == 0 and item["timestamp"] % 60_000 in wanted:
                        seen.add(item["timestamp"] % 60_000)
                if seen == wanted:
                    break
    return frames


# Wall time from a simulator's start to its first replayed frame: the time to start the other
# simulator and subscribe to both, with room for a loaded 2-core machine (1.5 s missed the first
# trade at a load average of 24).
LEAD_S = "10"


async def test_capture_replay_reproduces_bybits_candles(sim_factory: Any) -> None:
    sims = {
        "linear": sim_factory("--replay", str(TESTDATA / "cryptofeed__BYBIT.jsonl.zst"),
                              "--category", "linear", "--speed", "20", "--replay-lead-s", LEAD_S,
                              name="linear"),
        "spot": sim_factory("--replay",
                            str(TESTDATA / "cryptofeed__BYBIT.publicTrade_kline_only.jsonl"),
                            "--category", "spot", "--speed", "20", "--replay-lead-s", LEAD_S,
                            name="spot"),
    }  # fmt: skip
    linear, spot = await asyncio.gather(
        _replay(sims["linear"], "linear"), _replay(sims["spot"], "spot")
    )
    for category, frames in (("linear", linear), ("spot", spot)):
        trades = [
            t for f in frames if f.get("topic", "").startswith("publicTrade.") for t in f["data"]
        ]
        klines = [f for f in frames if f.get("topic", "").startswith("kline.")]
        assert trades and klines
        if category == "linear":
            first = next(t for t in trades if t["i"] in CAPTURE_IDS)
            shift = first["T"] - CAPTURE_IDS[first["i"]]
            assert first["p"] == "65114.20" and first["v"] == "0.004" and first["L"] == "MinusTick"
        else:
            shift = next(i["start"] for f in klines for i in f["data"]) - CANDLE_2126
        assert shift % 60_000 == 0 and shift > 0
        for (cat, symbol), row in TABLE.items():
            if cat != category:
                continue
            prev_close, ts, *values = row
            items = [i for f in klines if f["topic"] == f"kline.1.{symbol}" for i in f["data"]]
            (confirmed,) = [i for i in items if i["confirm"]]
            assert (confirmed["start"], confirmed["close"]) == (CANDLE_2126 + shift, prev_close)
            snapshot = next(i for i in items if i["timestamp"] == ts + shift and not i["confirm"])
            assert snapshot["start"] == CANDLE_2127 + shift
            got = [snapshot[k] for k in ("open", "high", "low", "close", "volume", "turnover")]
            assert got == values, (category, symbol)
            confirm_frame = next(f for f in klines if f["data"][0] is confirmed)
            # linear sends the confirm and the next candle in one message; spot sends them apart
            assert len(confirm_frame["data"]) == (2 if category == "linear" else 1)
