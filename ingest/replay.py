"""`python -m ingest replay FILE...`: history into the trade streams, through the live format.

Entries are written in trade-time order across all files, sharded like live (crc32), as fast as
Redis takes them (one Lua call per shard batch). Clock entries come from trade time, not the wall
clock: before an entry whose first trade is at least `--clock-ms` past the last clock entry, every
shard touched so far gets a clock entry at that trade's time ("everything before it is written"),
so the aggregator closes candles as it would live. The last candle stays open: nothing in a file
says no later trade exists (append more files, or let a live ingest continue the stream).

Replay does not take leases: it refuses to start while a live ingest holds a lease of the prefix
(two writers would interleave times), and otherwise writes without fencing.

The files are streamed (a day of trades is millions), merged by trade time, with a progress bar
(trades, trades/s, ETA) on a terminal, or a log line every 10 s otherwise.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import redis

from common.errors import ConfigError
from common.keys import Keys
from common.logs import setup_logging
from common.settings import CommonSettings, load_settings
from common.sharding import shard_of
from common.wire import ClockEntry, SeedEntry, entry_encoder
from ingest.replay_sources import Item, Seed, merged, open_any
from ingest.writer import encode_trades

DESCRIPTION = __doc__
log = logging.getLogger(__name__)

REPLAY_LUA = """
for i = 1, #ARGV do
  redis.call('XADD', KEYS[1], '*', 'data', ARGV[i])
end
return #ARGV
"""


class Progress:
    """Trades, trades/s and ETA (from the bytes of input read): a tqdm bar when stderr is a
    terminal, otherwise (supervisord, CI, a pipe) a log line every LOG_EVERY_S."""

    LOG_EVERY_S = 10.0

    def __init__(self, total_bytes: int, out: TextIO = sys.stderr) -> None:
        self._total = max(1, total_bytes)
        self._start = self._last = time.monotonic()
        self._bar: Any = None
        if out.isatty():
            from tqdm import tqdm

            self._bar = tqdm(
                total=self._total, unit="B", unit_scale=True, desc="replay", file=out,
                dynamic_ncols=True, mininterval=0.2,
            )  # fmt: skip

    def update(self, trades: int, bytes_read: int, *, final: bool = False) -> None:
        now = time.monotonic()
        every = 0.2 if self._bar is not None else self.LOG_EVERY_S
        if not final and now - self._last < every:
            return
        self._last = now
        rate = trades / max(now - self._start, 1e-9)
        if self._bar is not None:
            self._bar.n = bytes_read
            self._bar.set_postfix_str(f"{trades:,} trades, {rate:,.0f} trades/s", refresh=True)
            if final:
                self._bar.close()
            return
        share = min(1.0, bytes_read / self._total)
        left_s = (now - self._start) * (1 - share) / share if share > 0 else float("inf")
        eta = "-" if left_s == float("inf") else time.strftime("%H:%M:%S", time.gmtime(left_s))
        log.info(
            "replay: %s trades, %s trades/s, %.1f%% of the input read, ETA %s",
            f"{trades:,}", f"{rate:,.0f}", share * 100, eta,
        )  # fmt: skip


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
        self.seeds = 0

    def add(self, item: Item) -> None:
        if self._last_clock_ms is None:
            self._last_clock_ms = item.time_ms
        elif item.time_ms - self._last_clock_ms >= self._clock_ms:
            self.clock(item.time_ms)
        shard = shard_of(item.symbol, self._shards)
        self._touched.add(shard)
        if isinstance(item, Seed):
            self.seeds += 1
            self._put(shard, entry_encoder.encode(SeedEntry(item.symbol, item.time_ms, item.close)))
            return
        payload = encode_trades(item.symbol, item.trades, item.exchange_ms, item.received_ms)
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("files", nargs="+", type=Path, help=".csv, .csv.gz, .jsonl, .jsonl.zst")
    parser.add_argument(
        "--clock-ms", type=int, default=100, help="trade time between clock entries"
    )
    parser.add_argument("--batch", type=int, default=1000, help="entries per Redis call")


def _refuse_if_live(client: redis.Redis, keys: Keys, shards: int) -> None:
    """Any shard, not only the files' own: the files are streamed, so their symbols are known
    only as they come, and a live ingest of this prefix usually holds every shard anyway."""
    held = [k for k in range(shards) if client.exists(keys.lease("ingest", k))]
    if held:
        raise ConfigError(
            f"a live ingest holds shard(s) {', '.join(map(str, held))}: stop it before "
            "replaying into the same streams, or use another STREAMER_REDIS_PREFIX"
        )


def replay(settings: CommonSettings, files: list[Path], clock_ms: int, batch: int) -> int:
    opened = [open_any(path, settings.bybit_category) for path in files]
    keys = Keys(settings.redis_prefix)
    client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=5)
    done = 0
    try:
        _refuse_if_live(client, keys, settings.shards)
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
        progress = Progress(sum(source.size for source, _ in opened))
        for item in merged([items for _, items in opened]):
            writer.add(item)
            if isinstance(item, Seed):
                continue
            done += len(item.trades)
            if not done & 0x3FF:  # the clock is read once per ~1000 trades
                progress.update(done, sum(source.bytes_read() for source, _ in opened))
        writer.flush()
        if writer.seeds:
            log.info("replay: %d symbol(s) open at a confirmed kline's close (seed)", writer.seeds)
        progress.update(done, sum(source.size for source, _ in opened), final=True)
    finally:
        for source, _ in opened:
            source.close()
        client.close()
    return done


def main(args: argparse.Namespace) -> int:
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
