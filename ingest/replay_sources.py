"""Reading history files into trade-stream entries, each source sorted by trade time.

Two formats:
- Bybit's public trading archive (`public.bybit.com/trading/<SYMBOL>/<SYMBOL><date>.csv.gz`):
  header `timestamp,symbol,side,size,price,...,trdMatchID,...`, timestamps in float seconds,
  newest first (older files) or oldest first. Seconds are converted to ms from the decimal
  text (never through float: 1585180700.0647 s is 1585180700064 ms, truncated), and the
  same-symbol trades of one ms become one entry, the way Bybit groups one match in one message.
  The file is streamed in its own order (reversed a chunk at a time when newest first): a day
  of trades never sits in memory.
- Recorded WebSocket captures (`.jsonl` / `.jsonl.zst`, the cryptofeed format of
  testdata/bybit): one entry per recorded `publicTrade` message of the wanted category, with the
  recorded receive time. A confirmed kline in the capture also gives a `seed` (common.wire
  SeedEntry) when it proves the next candle complete: the symbol's trades were subscribed before
  the kline's end and none of its trades is older than that end. Its close is then the open of
  the symbol's first candle, as live, instead of that candle being skipped as a partial one.
"""

from __future__ import annotations

import csv
import gzip
import heapq
import io
import itertools
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import IO, Any

import msgspec

from common.errors import BadMessageError, ConfigError
from common.wire import Category, Side, Trade
from ingest.bybit.messages import TRADE_TOPIC, TradeMessage, parse_frame
from ingest.klines.frames import TOPIC_PREFIX as KLINE_TOPIC
from ingest.klines.frames import decode_frame as decode_kline_frame

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


@dataclass(slots=True)
class Seed:
    """`symbol`'s last price before `time_ms`, from which the source holds all its trades."""

    time_ms: int
    symbol: str
    close: str


Item = Record | Seed


class Opened:
    """A source file open for reading, and how many of its bytes were read (progress/ETA)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = path.stat().st_size
        self._raw = path.open("rb")
        self.closed = False

    def text(self) -> IO[str]:
        name = self.path.name
        raw: Any = self._raw
        if name.endswith(".gz"):
            raw = gzip.GzipFile(fileobj=self._raw, mode="rb")
        elif name.endswith(".zst"):
            import zstandard

            raw = zstandard.ZstdDecompressor().stream_reader(self._raw)
        return io.TextIOWrapper(raw, encoding="utf-8", newline="")

    def bytes_read(self) -> int:
        return self.size if self.closed else self._raw.tell()

    def close(self) -> None:
        self.closed = True
        self._raw.close()


def seconds_text_to_ms(text: str) -> int:
    """'1585180700.0647' -> 1585180700064: exact (digits, never float), truncated to the ms."""
    whole, _, frac = text.strip().partition(".")
    if not (whole.isdigit() and (frac.isdigit() or not frac)):
        raise BadMessageError(f"timestamp {text!r} is not a number")
    return int(whole) * 1000 + int((frac + "000")[:3])


Row = tuple[int, str, Trade]
REVERSE_CHUNK_ROWS = 200_000
"""Rows of a newest-first file reversed in memory at a time (the rest waits on disk)."""


def _csv_rows(reader: Iterator[list[str]], columns: tuple[int, ...], path: Path) -> Iterator[Row]:
    t, sym, side, size, price, trade_id = columns
    for line, row in enumerate(reader, start=2):
        try:
            time_ms = seconds_text_to_ms(row[t])
            yield (
                time_ms,
                row[sym],
                Trade(time_ms, row[price], row[size], Side(row[side]), row[trade_id]),
            )
        except (BadMessageError, ValueError, TypeError, IndexError) as exc:
            raise ConfigError(f"{path}:{line}: {exc}") from None


def _oldest_first(rows: Iterator[Row]) -> Iterator[Row]:
    """The archive's older files are newest first: those are reversed a chunk at a time through
    a temporary file, so memory stays at one chunk whatever the file's size."""
    head: list[Row] = []
    for row in rows:
        head.append(row)
        if row[0] != head[0][0]:
            break
    if len(head) < 2 or head[-1][0] >= head[0][0]:
        yield from head
        yield from rows
        return
    yield from _reversed(itertools.chain(head, rows))


_rows_encoder = msgspec.msgpack.Encoder()
_rows_decoder = msgspec.msgpack.Decoder(list[tuple[int, str, Trade]])


def _reversed(rows: Iterator[Row]) -> Iterator[Row]:
    with tempfile.TemporaryFile() as spill:
        spans: list[tuple[int, int]] = []
        while chunk := list(itertools.islice(rows, REVERSE_CHUNK_ROWS)):
            chunk.reverse()
            data = _rows_encoder.encode(chunk)
            spans.append((spill.tell(), len(data)))
            spill.write(data)
        for offset, length in reversed(spans):
            spill.seek(offset)
            yield from _rows_decoder.decode(spill.read(length))


def read_csv(path: Path, opened: Opened | None = None) -> Iterator[Record]:
    """The archive's trades as records, streamed (oldest first); the header is checked now."""
    opened = opened or Opened(path)
    handle = opened.text()
    reader = csv.reader(handle)
    fields = next(reader, [])
    missing = [c for c in _CSV_COLUMNS if c not in fields]
    id_column = next((c for c in _ID_COLUMNS if c in fields), None)
    if missing or id_column is None:
        opened.close()
        need = ", ".join([*missing, *([] if id_column else ["trdMatchID"])])
        raise ConfigError(f"{path}: not a Bybit trading-archive CSV (missing {need})")
    columns = tuple(fields.index(c) for c in (*_CSV_COLUMNS, id_column))
    return _csv_records(_oldest_first(_csv_rows(reader, columns, path)), opened)


def _csv_records(rows: Iterator[Row], opened: Opened) -> Iterator[Record]:
    """Same-symbol trades of one ms become one entry, as Bybit sends one match in one message."""
    last: Record | None = None
    try:
        for time_ms, symbol, trade in rows:
            if last is not None and last.time_ms == time_ms and last.symbol == symbol:
                last.trades.append(trade)
                continue
            if last is not None:
                yield last
            last = Record(time_ms, symbol, [trade], time_ms, time_ms)
        if last is not None:
            yield last
    finally:
        opened.close()


class _CaptureLine(msgspec.Struct):
    t: str
    conn: str = ""
    ts: Decimal = Decimal(0)
    data: str = ""
    addr: str = ""


_capture_decoder = msgspec.json.Decoder(_CaptureLine)


CAPTURE_REORDER_MS = 10_000
"""A capture is in receive order; trade times across connections may be this much out of order."""


def read_capture(path: Path, category: Category, opened: Opened | None = None) -> Iterator[Item]:
    """The `publicTrade` messages received on `category`'s connections, in trade-time order,
    with the seeds their confirmed klines give: streamed through a heap that holds
    CAPTURE_REORDER_MS of messages."""
    return _capture_records(path, category, opened or Opened(path))


class _Capture:
    """What a capture has shown so far of each symbol: when its trades were subscribed, its
    oldest trade, whether it is seeded; and the items waiting in the reorder heap."""

    def __init__(self) -> None:
        self.subscribed_ms: dict[str, int] = {}
        self.oldest_trade_ms: dict[str, int] = {}
        self.seeded: set[str] = set()
        self.pending: list[tuple[int, int, Item]] = []
        self.released_ms = -1  # the newest time already handed out

    def subscribe(self, data: str, time_ms: int) -> None:
        try:
            request = msgspec.json.decode(data)
        except msgspec.DecodeError:
            return
        if not isinstance(request, dict) or request.get("op") != "subscribe":
            return
        for topic in request.get("args") or []:
            if isinstance(topic, str) and topic.startswith(TRADE_TOPIC):
                self.subscribed_ms.setdefault(topic[len(TRADE_TOPIC) :], time_ms)

    def trades(self, record: Record, number: int) -> Iterator[Item]:
        oldest = self.oldest_trade_ms.get(record.symbol)
        if oldest is None or record.time_ms < oldest:
            self.oldest_trade_ms[record.symbol] = record.time_ms
        heapq.heappush(self.pending, (record.time_ms, number, record))
        while self.pending[0][0] < record.time_ms - CAPTURE_REORDER_MS:
            yield self._release()

    def kline(self, data: str, number: int) -> None:
        """A confirmed kline seeds its symbol when the candle after it is complete here."""
        try:
            frame = decode_kline_frame(data)
        except BadMessageError:
            return
        if not frame.topic.startswith(KLINE_TOPIC):
            return
        symbol = frame.topic.rsplit(".", 1)[-1]
        for item in frame.data:
            end_ms = item.end + 1  # Bybit's `end` is the candle's last ms
            subscribed = self.subscribed_ms.get(symbol)
            oldest = self.oldest_trade_ms.get(symbol)
            if (
                item.confirm
                and symbol not in self.seeded
                and subscribed is not None
                and subscribed < end_ms
                and (oldest is None or oldest >= end_ms)
                and end_ms > self.released_ms
            ):
                self.seeded.add(symbol)
                # before any trade of the same ms: the seed must precede the candle's trades
                seed = Seed(end_ms, symbol, item.close)
                heapq.heappush(self.pending, (end_ms, number - 2**62, seed))

    def _release(self) -> Item:
        time_ms, _, item = heapq.heappop(self.pending)
        self.released_ms = max(self.released_ms, time_ms)
        return item

    def rest(self) -> Iterator[Item]:
        while self.pending:
            yield self._release()


def _capture_records(path: Path, category: Category, opened: Opened) -> Iterator[Item]:
    addr_of: dict[str, str] = {}
    capture = _Capture()
    suffix = f"/v5/public/{category.value}"
    try:
        for number, line in enumerate(opened.text(), start=1):
            if not line.strip():
                continue
            try:
                item = _capture_decoder.decode(line)
            except msgspec.DecodeError as exc:
                raise ConfigError(f"{path}:{number}: not a capture line: {exc}") from None
            if item.t == "connect":
                addr_of[item.conn] = item.addr
            if not addr_of.get(item.conn, suffix).endswith(suffix):
                continue
            if item.t == "send":
                capture.subscribe(item.data, int(item.ts * 1000))
            if item.t != "recv":
                continue
            try:
                message = parse_frame(item.data)
            except BadMessageError:
                continue  # not a frame of ours (orderbook, tickers): same as live
            if isinstance(message, TradeMessage) and message.trades:
                yield from capture.trades(_record(message, int(item.ts * 1000)), number)
            elif message is None and f'"{KLINE_TOPIC}' in item.data[:80]:  # cheap first look
                capture.kline(item.data, number)
        yield from capture.rest()
    finally:
        opened.close()


def _record(message: TradeMessage, received_ms: int) -> Record:
    first = message.trades[0].time_ms
    return Record(first, message.symbol, message.trades, message.exchange_ms, received_ms)


def open_any(path: Path, category: Category) -> tuple[Opened, Iterator[Item]]:
    """The file opened (for its progress) and its records, streamed; bad input is refused now
    (missing file, unknown format, wrong CSV header)."""
    name = path.name.lower()
    if not path.is_file():
        raise ConfigError(f"{path}: no such file")
    if name.endswith((".csv", ".csv.gz")):
        opened = Opened(path)
        return opened, read_csv(path, opened)
    if name.endswith((".jsonl", ".jsonl.zst")):
        opened = Opened(path)
        return opened, read_capture(path, category, opened)
    raise ConfigError(f"{path}: unknown format; allowed: .csv, .csv.gz, .jsonl, .jsonl.zst")


def read_any(path: Path, category: Category) -> Iterator[Item]:
    return open_any(path, category)[1]


def merged(sources: list[Iterator[Item]]) -> Iterator[Item]:
    return heapq.merge(*sources, key=lambda r: r.time_ms)
