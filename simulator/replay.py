"""Replay of a recorded capture (cryptofeed's format, as the real captures: JSON lines, optionally
zstd-compressed; `connect` lines name the socket's URL, `recv` lines hold the raw frames).

Only the capture's sockets of the simulator's category are read. Each recorded `publicTrade`
message is sent again as one message (same trades, ids, seq, tick directions), its times shifted
by a whole number of minutes so that candle boundaries fall where they fell in the capture.

Klines of a replay: each symbol's history starts with the capture's first `kline.1` snapshot
(its open is the previous close; trades with T up to that snapshot's `timestamp` are already in
it and are not counted again); from there the replayed trades build the candles by Bybit's
rules. Candles of longer intervals start from that same first minute.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from common.errors import ConfigError
from common.wire import Category
from simulator.generator import SimTrade
from simulator.instruments import Instrument, known
from simulator.klines import Candle


@dataclass
class RecordedMessage:
    ts_ms: int
    symbol: str
    trades: list[dict[str, Any]]


@dataclass
class Capture:
    """What a capture holds for one category, in recorded (receive) order."""

    messages: list[RecordedMessage] = field(default_factory=list)
    first_klines: dict[str, dict[str, Any]] = field(default_factory=dict)
    kline_times: dict[str, list[int]] = field(default_factory=dict)

    @property
    def first_ms(self) -> int:
        times = [m.ts_ms for m in self.messages]
        times += [int(k["timestamp"]) for k in self.first_klines.values()]
        return min(times)

    def symbols(self) -> list[str]:
        seen = dict.fromkeys(m.symbol for m in self.messages)
        seen.update(dict.fromkeys(self.first_klines))
        return list(seen)


def _lines(path: Path) -> list[str]:
    raw = path.read_bytes()
    if path.suffix == ".zst":
        import zstandard

        with zstandard.ZstdDecompressor().stream_reader(io.BytesIO(raw)) as reader:
            raw = reader.read()
    return raw.decode().splitlines()


def load_capture(path: Path, category: Category) -> Capture:
    try:
        lines = _lines(path)
    except OSError as exc:
        raise ConfigError(f"--replay {path}: {exc.strerror}") from None
    suffix = f"/v5/public/{category.value}"
    conns: set[str] = set()
    capture = Capture()
    for line in lines:
        if not line.strip():
            continue
        record = msgspec.json.decode(line)
        kind = record.get("t")
        if kind == "connect" and str(record.get("addr", "")).endswith(suffix):
            conns.add(record["conn"])
        elif kind == "recv" and record.get("conn") in conns:
            _take(capture, msgspec.json.decode(record["data"]))
    if not capture.messages:
        raise ConfigError(f"--replay {path}: no publicTrade messages for {category.value}")
    return capture


def _take(capture: Capture, frame: Any) -> None:
    topic = frame.get("topic", "") if isinstance(frame, dict) else ""
    if topic.startswith("publicTrade."):
        capture.messages.append(RecordedMessage(int(frame["ts"]), topic[12:], frame["data"]))
    elif topic.startswith("kline.1."):
        symbol = topic[8:]
        capture.first_klines.setdefault(symbol, frame["data"][0])
        capture.kline_times.setdefault(symbol, []).append(int(frame["ts"]))


def _digits(text: str) -> int:
    return len(text.partition(".")[2])


def _units(text: str, digits: int) -> int:
    whole, _, frac = text.partition(".")
    return int(whole + frac.ljust(digits, "0"))


def instruments_of(capture: Capture, category: Category) -> list[Instrument]:
    out = []
    for symbol_id, symbol in enumerate(capture.symbols(), start=1):
        inst = known(category, symbol, symbol_id)
        if inst is None:
            trades = [t for m in capture.messages if m.symbol == symbol for t in m.trades]
            pd = max((_digits(t["p"]) for t in trades), default=2)
            sd = max((_digits(t["v"]) for t in trades), default=3)
            first = trades[0]["p"] if trades else "1"
            tick = f"0.{'0' * (pd - 1)}1" if pd else "1"
            lot = f"0.{'0' * (sd - 1)}1" if sd else "1"
            quote = "USD" if category is Category.INVERSE else "USDT"
            inst = Instrument(
                symbol, symbol_id, symbol.removesuffix(quote), quote, "Trading",
                pd, 1, tick, sd, 1, lot, _units(first, pd),
            )  # fmt: skip
        out.append(inst)
    return out


def to_sim_trades(inst: Instrument, trades: list[dict[str, Any]], shift_ms: int) -> list[SimTrade]:
    return [
        SimTrade(
            int(t["T"]) + shift_ms,
            _units(t["p"], inst.price_digits),
            _units(t["v"], inst.size_digits),
            t["S"] == "Buy",
            int(t.get("seq", 0)),
            str(t["i"]),
            str(t.get("L", "")),
            bool(t.get("RPI", False)),
        )
        for t in trades
    ]


def seed_candle(inst: Instrument, kline: dict[str, Any], shift_ms: int) -> tuple[Candle, int]:
    """The capture's first kline snapshot as a candle in progress, and its (shifted) timestamp."""
    pd, sd = inst.price_digits, inst.size_digits
    volume = _units(kline["volume"], sd)
    turnover_digits = pd + sd
    candle = Candle(
        int(kline["start"]) + shift_ms,
        int(kline["end"]) + 1 + shift_ms,
        _units(kline["open"], pd),
        _units(kline["high"], pd),
        _units(kline["low"], pd),
        _units(kline["close"], pd),
        volume,
        _units(kline["turnover"], turnover_digits),
        1 if volume else 0,
    )
    return candle, int(kline["timestamp"]) + shift_ms
