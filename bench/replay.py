"""`python -m ingest replay` on a generated archive day, then `python -m aggregate` over it.

A Bybit trading-archive file (`.csv.gz`, oldest first, the archive's columns) of one symbol over
one day is generated once into var/bench/ (2,000,000 trades; 200,000 for the size comparison).
Each is replayed by the real command into a private redis-server, then aggregated by the real
aggregate process (1m, 5m, 1h) until its checkpoint reaches the stream's last entry. Figures:
trades/s of each step and of the two together, and the peak RSS of each process, which must not
grow with the file (the replay streams it).
"""

from __future__ import annotations

import gzip
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import redis

from bench.report import Row
from common.keys import Keys
from tests.support import replies
from tests.support.redisproc import RedisProcess

ROOT = Path(__file__).resolve().parents[1]
DAY_START_S = 1_786_233_600  # a UTC midnight
PREFIX = "bench"
NOTES: list[str] = []


def archive(trades: int, seed: int = 1) -> Path:
    """`trades` trades of BTCUSDT spread over one day, generated once (cached in var/bench)."""
    path = ROOT / "var" / "bench" / f"BTCUSDT-{trades}.csv.gz"
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    step_us = 86_400_000_000 // trades
    price = 6_500_000  # in 0.01
    tmp = path.with_suffix(".tmp")
    with gzip.open(tmp, "wt", compresslevel=3) as out:
        out.write("timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue,"
                  "homeNotional,foreignNotional\n")  # fmt: skip
        for i in range(trades):
            price += rng.choice((-1, 0, 0, 1))
            us = DAY_START_S * 1_000_000 + i * step_us + rng.randrange(step_us)
            size = rng.randint(1, 5000)
            out.write(
                f"{us // 1_000_000}.{us % 1_000_000:06d},BTCUSDT,{rng.choice(('Buy', 'Sell'))},"
                f"{size / 1000},{price // 100}.{price % 100:02d},PlusTick,{i:032x},0,0,0\n"
            )
    tmp.rename(path)
    return path


def _env(url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env.update(
        STREAMER_ENV_FILE="/dev/null", STREAMER_REDIS_URL=url, STREAMER_REDIS_PREFIX=PREFIX,
        STREAMER_SHARDS="1", STREAMER_SHARD_IDS="0", STREAMER_KLINE_INTERVALS="1m,5m,1h",
        STREAMER_LOG_LEVEL="WARNING",
    )  # fmt: skip
    return env


def _replay(path: Path, url: str) -> tuple[float, float]:
    """Seconds and peak RSS (MB) of `python -m ingest replay`."""
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ingest", "replay", str(path)],
        cwd=ROOT, env=_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"replay exited {proc.returncode}")
    return time.monotonic() - start, usage.ru_maxrss / 1024


def _aggregate(url: str, client: redis.Redis) -> tuple[float, float]:
    """Seconds until the aggregator's checkpoint head reaches the last entry; its peak RSS."""
    keys = Keys(PREFIX)
    last = replies.entries(client.xrevrange(keys.trades(0), count=1))[0][0].decode()
    start = time.monotonic()
    proc = subprocess.Popen(
        [sys.executable, "-m", "aggregate"], cwd=ROOT, env=_env(url),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        while True:
            head = client.hget(keys.state(0), "head")
            if head and msgspec.json.decode(head).get("last_id") == last:
                break
            if proc.poll() is not None:
                raise RuntimeError(f"aggregate exited {proc.returncode}")
            time.sleep(0.05)
        elapsed = time.monotonic() - start
        status = Path(f"/proc/{proc.pid}/status").read_text()
        hwm_kb = int(next(ln for ln in status.splitlines() if ln.startswith("VmHWM")).split()[1])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    return elapsed, hwm_kb / 1024


def _one(trades: int) -> list[Row]:
    path = archive(trades)
    with tempfile.TemporaryDirectory(prefix="bench-replay-") as tmp:
        server = RedisProcess(Path(tmp)).start()
        try:
            client = server.client()
            replay_s, replay_mb = _replay(path, server.url)
            aggregate_s, aggregate_mb = _aggregate(server.url, client)
            client.close()
        finally:
            server.stop()
    size = f"{trades:,} trades ({path.stat().st_size / 1e6:.0f} MB .csv.gz)"
    NOTES.append(
        f"replay of {size}: {replay_s:.1f} s, peak RSS {replay_mb:.0f} MB; aggregate: "
        f"{aggregate_s:.1f} s, peak RSS {aggregate_mb:.0f} MB"
    )
    return [
        Row("replay", f"ingest replay, {size}", trades / replay_s, "trades/s"),
        Row("replay", f"ingest replay, peak RSS, {size}", replay_mb, "MB"),
        Row("replay", f"aggregate after it, {size}", trades / aggregate_s, "trades/s"),
        Row("replay", f"aggregate, peak RSS, {size}", aggregate_mb, "MB"),
        Row(
            "replay",
            f"replay + aggregate, {size}",
            trades / (replay_s + aggregate_s),
            "trades/s",
        ),
    ]


def run(smoke: bool) -> list[Row]:
    sizes = (20_000, 100_000) if smoke else (200_000, 2_000_000)
    return [row for trades in sizes for row in _one(trades)]
