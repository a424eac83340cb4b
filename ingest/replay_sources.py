"""Reading history files into trade-stream entries, each source sorted by trade time.

Two formats:
- Bybit's public trading archive (`public.bybit.com/trading/<SYMBOL>/<SYMBOL><date>.csv.gz`):
  header `timestamp,symbol,side,size,price,...,trdMatchID,...`, timestamps in float seconds,
  newest first (older files) or oldest first. Seconds are converted to ms from the decimal
  text (never through float: 1585180700.0647 s is 1585180700064 ms, truncated), and the
  same-symbol trades of one ms become one entry, the way Bybit groups one match in one message.
- Recorded WebSocket captures (`.jsonl` / `.jsonl.zst`, the cryptofeed format of
  testdata/bybit): one entry per recorded `publicTrade` message of the wanted category, with the
  recorded receive time.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import IO

import msgspec

from common.errors import BadMessageError, ConfigError
from common.wire import Category, Side, Trade
from ingest.bybit.messages import TradeMessage, parse_frame

_CSV_COLUMNS = ("timestamp", "symbol", "side", "size", "price")
_ID_COLUMNS = ("trdMatchID", "id", "tradeId", "execId")


@dataclass(slots=True)
class Record:
    """One stream entry to write: the trades of one message (or one ms of the archive)."""

    time_ms: int
    symbol: str
    trades: list[Trade]
    exchange_ms: int
    received_ms: int


def _open_text(path: Path) -> IO[str]:
    name = path.name
    if name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    if name.endswith(".zst"):
        import zstandard

        raw = zstandard.ZstdDecompressor().stream_reader(path.open("rb"))
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")
    return path.open("r", encoding="utf-8", newline="")


def seconds_text_to_ms(text: str) -> int:
    """'1585180700.0647' -> 1585180700064: exact decimal arithmetic, truncated to the ms."""
    try:
        value = Decimal(text.strip()) * 1000
    except InvalidOperation:
        raise BadMessageError(f"timestamp {text!r} is not a number") from None
    return int(value)


def _csv_trades(path: Path) -> list[tuple[int, str, Trade]]:
    with _open_text(path) as handle:
        reader = csv.DictReader(handle)
        fields = reader.fieldnames or []
        missing = [c for c in _CSV_COLUMNS if c not in fields]
        id_column = next((c for c in _ID_COLUMNS if c in fields), None)
        if missing or id_column is None:
            need = ", ".join([*missing, *([] if id_column else ["trdMatchID"])])
            raise ConfigError(f"{path}: not a Bybit trading-archive CSV (missing {need})")
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                time_ms = seconds_text_to_ms(row["timestamp"])
                trade = Trade(time_ms, row["price"], row["size"], Side(row["side"]), row[id_column])
            except (BadMessageError, ValueError, TypeError) as exc:
                raise ConfigError(f"{path}:{line}: {exc}") from None
            rows.append((time_ms, row["symbol"], trade))
    if len(rows) > 1 and rows[0][0] > rows[-1][0]:
        rows.reverse()  # newest first: the archive's older files
    rows.sort(key=lambda r: r[0])  # stable: keeps the file's order within one ms
    return rows


def read_csv(path: Path) -> list[Record]:
    records: list[Record] = []
    for time_ms, symbol, trade in _csv_trades(path):
        last = records[-1] if records else None
        if last is not None and last.time_ms == time_ms and last.symbol == symbol:
            last.trades.append(trade)
        else:
            records.append(Record(time_ms, symbol, [trade], time_ms, time_ms))
    return records


class _CaptureLine(msgspec.Struct):
    t: str
    conn: str = ""
    ts: Decimal = Decimal(0)
    data: str = ""
    addr: str = ""


_capture_decoder = msgspec.json.Decoder(_CaptureLine)


def read_capture(path: Path, category: Category) -> list[Record]:
    """The `publicTrade` messages received on `category`'s connections, in trade-time order."""
    addr_of: dict[str, str] = {}
    records: list[Record] = []
    suffix = f"/v5/public/{category.value}"
    with _open_text(path) as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                item = _capture_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a capture line: {exc}") from None
            if item.t == "connect":
                addr_of[item.conn] = item.addr
            if item.t != "recv" or not addr_of.get(item.conn, suffix).endswith(suffix):
                continue
            try:
                message = parse_frame(item.data)
            except BadMessageError:
                continue  # not a frame of ours (orderbook, tickers): same as live
            if isinstance(message, TradeMessage) and message.trades:
                records.append(_record(message, int(item.ts * 1000)))
    records.sort(key=lambda r: r.time_ms)
    return records


def _record(message: TradeMessage, received_ms: int) -> Record:
    first = message.trades[0].time_ms
    return Record(first, message.symbol, message.trades, message.exchange_ms, received_ms)


def read_any(path: Path, category: Category) -> list[Record]:
    name = path.name.lower()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if name.endswith((".csv", ".csv.gz")):
        return read_csv(path)
    if name.endswith((".jsonl", ".jsonl.zst")):
        return read_capture(path, category)
    raise ConfigError(f"{path}: unknown format; allowed: .csv, .csv.gz, .jsonl, .jsonl.zst")


def merged(sources: list[list[Record]]) -> Iterator[Record]:
    import heapq

    return heapq.merge(*sources, key=lambda r: r.time_ms)
