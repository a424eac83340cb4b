"""The real Bybit capture of ../shared/testdata/bybit: its publicTrade messages, per category."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.wire import Side, Trade, TradesEntry
from tests.support.procs import TESTDATA

CAPTURE = TESTDATA / "cryptofeed__BYBIT.publicTrade_kline_only.jsonl"
KLINES = TESTDATA / "cryptofeed__BYBIT.derived_kline1.csv"
MINUTE_2126 = 1_786_310_760_000
MINUTE_2127 = 1_786_310_820_000


@dataclass(frozen=True)
class Expected:
    category: str
    symbol: str
    prev_close: str
    cutoff_ms: int
    n: int
    ohlc: tuple[str, str, str, str]
    volume: str
    turnover: str


# The README table: the 21:27 candle at the last snapshot (Bybit rule, prev close from 21:26).
TABLE = [
    Expected("linear", "BTCUSDT", "65114.2", MINUTE_2127 + 40_441, 55,
             ("65114.2", "65114.3", "65113.1", "65114.3"), "7.035", "458078.3588"),
    Expected("linear", "DOGEUSDT", "0.07053", MINUTE_2127 + 39_696, 62,
             ("0.07053", "0.07056", "0.07053", "0.07055"), "345445", "24372.57867"),
    Expected("linear", "ETHUSDT", "1922.48", MINUTE_2127 + 34_124, 23,
             ("1922.48", "1922.55", "1922.48", "1922.54"), "11.67", "22436.0625"),
    Expected("linear", "SOLUSDT", "77.31", MINUTE_2127 + 41_006, 165,
             ("77.31", "77.31", "77.26", "77.26"), "5697.4", "440331.389"),
    Expected("spot", "BTCUSDT", "65140.5", MINUTE_2127 + 38_562, 10,
             ("65140.5", "65140.5", "65140.4", "65140.4"), "0.012527", "816.0141706"),
    Expected("spot", "ETHUSDT", "1923.27", MINUTE_2127 + 40_819, 9,
             ("1923.27", "1923.29", "1923.27", "1923.28"), "1.68421", "3239.2074251"),
]  # fmt: skip


def require_capture() -> None:
    if not CAPTURE.is_file():
        pytest.skip(f"real Bybit capture not found at {CAPTURE} (../shared/testdata is absent)")


def messages(path: Path = CAPTURE) -> dict[str, list[TradesEntry]]:
    """category -> the capture's publicTrade messages as trade stream entries, in order."""
    addresses: dict[str, str] = {}
    out: dict[str, list[TradesEntry]] = {"linear": [], "spot": []}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        if row.get("t") == "connect":
            addresses[row["conn"]] = row["addr"]
        if row.get("t") != "recv":
            continue
        frame = json.loads(row["data"])
        if not str(frame.get("topic", "")).startswith("publicTrade."):
            continue
        category = addresses[row["conn"]].rsplit("/", 1)[-1]
        trades = [
            Trade(t["T"], t["p"], t["v"], Side(t["S"]), t["i"], t.get("seq", 0))
            for t in frame["data"]
        ]
        symbol = frame["topic"].split(".", 1)[1]
        received_ms = int(row["ts"] * 1000)
        out[category].append(TradesEntry(symbol, trades, frame["ts"], received_ms))
    return out


@dataclass(frozen=True)
class Kline:
    close: str
    open: str
    high: str
    low: str
    volume: str
    turnover: str
    confirm: bool
    timestamp_ms: int


def klines(category: str, symbol: str, start_ms: int) -> list[Kline]:
    rows = KLINES.read_text().splitlines()
    header = rows[0].split(",")
    out = []
    for line in rows[1:]:
        row = dict(zip(header, line.split(","), strict=True))
        if (row["category"], row["symbol"], int(row["start_ms"])) == (category, symbol, start_ms):
            out.append(
                Kline(row["close"], row["open"], row["high"], row["low"], row["volume"],
                      row["turnover"], row["confirm"] == "True", int(row["timestamp_ms"]))
            )  # fmt: skip
    return out
