"""The real Bybit capture of ../shared/testdata/bybit: its publicTrade messages, per category."""

from __future__ import annotations

import json
import operator
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path

from common.wire import Side, Trade, TradesEntry
from tests.support.procs import TESTDATA, need_testdata

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
    need_testdata(CAPTURE.name, KLINES.name)


@cache
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
    """One `kline.1` item Bybit pushed (derived_kline1.csv): a snapshot, or the confirm."""

    category: str
    symbol: str
    start_ms: int
    open: str
    high: str
    low: str
    close: str
    volume: str
    turnover: str
    confirm: bool
    timestamp_ms: int


def all_klines() -> list[Kline]:
    """Every kline item of the capture, in the order Bybit sent them."""
    rows = KLINES.read_text().splitlines()
    header = rows[0].split(",")
    out = []
    for line in rows[1:]:
        row = dict(zip(header, line.split(","), strict=True))
        out.append(
            Kline(row["category"], row["symbol"], int(row["start_ms"]), row["open"], row["high"],
                  row["low"], row["close"], row["volume"], row["turnover"],
                  row["confirm"] == "True", int(row["timestamp_ms"]))
        )  # fmt: skip
    return out


def klines(category: str, symbol: str, start_ms: int) -> list[Kline]:
    return [
        k
        for k in all_klines()
        if (k.category, k.symbol, k.start_ms) == (category, symbol, start_ms)
    ]


@dataclass(frozen=True)
class Candle:
    """A 1m candle by Bybit's rule, computed with Decimal straight from captured trades."""

    open: Decimal
    high: Decimal
    low: Decimal
    close: Decimal
    volume: Decimal
    turnover: Decimal
    trade_count: int
    buy_volume: Decimal


def reference(open_: Decimal, trades: list[Trade]) -> Candle:
    """The candle opening at `open_` (the previous close) holding `trades` (in Bybit's order).
    Buy volume from each trade's side `S`, not from anything the writer derives."""
    prices = [Decimal(t.price) for t in trades]
    sizes = [Decimal(t.size) for t in trades]
    return Candle(
        open_, max([open_, *prices]), min([open_, *prices]), prices[-1] if prices else open_,
        sum(sizes, Decimal(0)), sum(map(operator.mul, sizes, prices), Decimal(0)), len(trades),
        sum((s for s, t in zip(sizes, trades, strict=True) if t.side is Side.BUY), Decimal(0)),
    )  # fmt: skip


def trades_of(category: str, symbol: str, from_ms: int, to_ms: int) -> list[Trade]:
    """The captured trades of one series with from_ms <= T <= to_ms, in the order sent."""
    return [
        t
        for entry in messages()[category]
        if entry.symbol == symbol
        for t in entry.trades
        if from_ms <= t.time_ms <= to_ms
    ]
