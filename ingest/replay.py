"""`python -m ingest replay FILE...`: history into the trade streams, through the live format.

Entries are written in trade-time order across all files, sharded like live (crc32), as fast as
Redis takes them (one Lua call per shard batch). Clock entries come from trade time, not the wall
clock: before an entry whose first trade is at least `--clock-ms` past the last clock entry, every
shard touched so far gets a clock entry at that trade's time ("everything before it is written"),
so the aggregator closes candles as it would live. The last candle stays open: nothing in a file
says no later trade exists (append more files, or let a live ingest continue the stream).

Replay does not take leases: it refuses to start while a live ingest holds a lease of the shards
it would write (two writers would interleave times), and otherwise writes without fencing.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO

import redis

from common.errors import ConfigError
from common.keys import Keys
from common.logs import setup_logging
from common.settings import CommonSettings, load_settings
from common.sharding import shard_of
from common.wire import ClockEntry, entry_encoder
from ingest.replay_sources import Record, merged, read_any
from ingest.writer import encode_trades

REPLAY_LUA = """
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
end
return #ARGV
"""


class Progress:
    """A one-line progress bar on stderr, redrawn at most every 0.2 s."""

    def __init__(self, total: int, out: TextIO = sys.stderr, width: int = 30) -> None:
        self._total = max(1, total)
        self._out = out
        self._width = width
        self._start = time.monotonic()
        self._last = 0.0

    def update(self, done: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now - self._last < 0.2:
            return
        self._last = now
        share = min(1.0, done / self._total)
        filled = int(share * self._width)
        rate = done / max(now - self._start, 1e-9)
        bar = "#" * filled + "." * (self._width - filled)
        end = "\n" if final else ""
        self._out.write(
            f"\rreplay [{bar}] {share:6.1%} {done:,}/{self._total:,} trades {rate:,.0f}/s{end}"
        )
        self._out.flush()


class ReplayWriter:
    def __init__(
        self, client: redis.Redis, keys: Keys, shards: int, batch: int, clock_ms: int
    ) -> None:
        self._client = client
        self._keys = keys
        self._shards = shards
        self._batch = batch
        self._clock_ms = clock_ms
        self._script = client.register_script(REPLAY_LUA)
        self._pending: dict[int, list[bytes]] = {}
        self._count = 0
        self._touched: set[int] = set()
        self._last_clock_ms: int | None = None
        self.entries = 0

    def add(self, record: Record) -> None:
        if self._last_clock_ms is None:
            self._last_clock_ms = record.time_ms
        elif record.time_ms - self._last_clock_ms >= self._clock_ms:
            self.clock(record.time_ms)
        shard = shard_of(record.symbol, self._shards)
        self._touched.add(shard)
        payload = encode_trades(
            record.symbol, record.trades, record.exchange_ms, record.received_ms
        )
        self._put(shard, payload)

    def clock(self, time_ms: int) -> None:
        self._last_clock_ms = time_ms
        payload = entry_encoder.encode(ClockEntry(time_ms))
        for shard in sorted(self._touched):
            self._put(shard, payload)

    def _put(self, shard: int, payload: bytes) -> None:
        self._pending.setdefault(shard, []).append(payload)
        self._count += 1
        if self._count >= self._batch:
            self.flush()

    def flush(self) -> None:
        for shard, payloads in self._pending.items():
            self._script(keys=[self._keys.trades(shard)], args=payloads)
            self.entries += len(payloads)
        self._pending.clear()
        self._count = 0


def _parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m ingest replay", description=__doc__.split("\n")[0]
    )
    parser.add_argument("files", nargs="+", type=Path, help=".csv, .csv.gz, .jsonl, .jsonl.zst")
    parser.add_argument(
        "--clock-ms", type=int, default=100, help="trade time between clock entries"
    )
    parser.add_argument("--batch", type=int, default=1000, help="entries per Redis call")
    return parser.parse_args(argv)


def _refuse_if_live(client: redis.Redis, keys: Keys, shards: set[int]) -> None:
    held = [k for k in sorted(shards) if client.exists(keys.lease("ingest", k))]
    if held:
        raise ConfigError(
            f"a live ingest holds shard(s) {', '.join(map(str, held))}: stop it before replaying "
            "into the same streams, or use another STREAMER_REDIS_PREFIX"
        )


def replay(settings: CommonSettings, files: list[Path], clock_ms: int, batch: int) -> int:
    sources = [read_any(path, settings.bybit_category) for path in files]
    total = sum(len(r.trades) for source in sources for r in source)
    keys = Keys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    try:
        symbols = {r.symbol for source in sources for r in source}
        _refuse_if_live(client, keys, {shard_of(s, settings.shards) for s in symbols})
        client.hset(
            keys.meta(),
            mapping={
                "shards": settings.shards,
                "intervals": ",".join(i.label for i in settings.kline_intervals),
                "mode": "trades",
                "category": settings.bybit_category.value,
            },
        )
        writer = ReplayWriter(client, keys, settings.shards, batch, clock_ms)
        progress = Progress(total)
        done = 0
        for record in merged(sources):
            writer.add(record)
            done += len(record.trades)
            progress.update(done)
        writer.flush()
        progress.update(done, final=True)
    finally:
        client.close()
    return total


def main(argv: list[str]) -> int:
    args = _parse_args(argv)
    try:
        settings = load_settings(CommonSettings)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return 2
    setup_logging(settings.log_level, settings.log_format, "ingest-replay")
    try:
        total = replay(settings, args.files, args.clock_ms, args.batch)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except redis.RedisError as exc:
        print(f"error: redis at {settings.redis_url}: {exc}", file=sys.stderr)
        return 1
    print(f"replayed {total} trades from {len(args.files)} file(s)", file=sys.stderr)
    return 0
