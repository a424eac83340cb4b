"""Peer trade→bar engines on our core's own workload (issue 9), in the same run as our core.

`make bench-peers` installs the peers under var/peers/ (never into the project's .venv, never a
dependency) and runs `python -m bench.peers [--trades N] [--repeats R]`.

Workload: `bench.core.workload(1_000_000)`: 1,000,000 trades, 500 symbols, two hours of trade
time, six intervals at once (1s,1m,5m,15m,1h,4h), in memory, no I/O in any timed part. It is built
once; the trades are written once to a temporary binary file (below) that each peer subprocess
loads into its own memory before its timer starts. Each repeat runs, interleaved: our core
(`bench.core.run_core`), the plain loop (`bench.core.run_plain`), tardis-dev, nautilus_trader
(two ways); the table gives the median of the repeats (3 by default) for each engine.

Engines:
- core: `aggregate.candles.CandleCore`, exact scaled-int decimals, empty candles off.
- plain loop: the obvious float loop of bench/core.py (the baseline, same counting rule).
- tardis-dev 13.35.3 (Node), `computeTradeBars`: tardis_bars.mjs builds the normalized trade
  messages `{type: 'trade', symbol, exchange, id, price, amount, side, timestamp: Date,
  localTimestamp: Date}` before its timer, then times `compute(source, ...computables)` with one
  `computeTradeBars({kind: 'time', interval: ms})` per interval (six, in one compute() call),
  drained by a single `for await` counting `trade_bar` messages per interval. The source is a
  hand-written async iterator over the array whose next() returns an already-resolved promise (no
  async generator of ours); compute() itself is an async generator, which is tardis's own design.
  No network: compute() only needs an async iterable of messages.
- nautilus_trader 1.221.0, `TimeBarAggregator` driven directly (nautilus_bars.py, run by the
  python of var/peers/venv): one aggregator per symbol×interval (3,000), fed TradeTick objects
  built before the timer (price precision 2, size precision 3), `build_with_no_updates=False`,
  a handler per interval counting bars. Two ways, two rows:
  - timers: bars close on nautilus's own timers, as in a live node or a backtest. One TestClock
    per symbol (six timers each) is advanced to each trade's time and the timer events it returns
    are handled (each aggregator's `_build_bar`) before the trade goes to the symbol's six
    aggregators; `skip_first_non_full_bar=True`. After the last trade each aggregator gets the
    single timer event of its next close, rather than the clocks being advanced through hours of
    empty seconds. One clock per symbol rather than one for all 3,000 timers (the BacktestEngine
    way) spares nautilus a scan of 3,000 timers per trade; the 1s timers still fire once a second
    per symbol (3.6 M timer events over two hours): that is how its time bars close.
  - batch: `start_batch_update(handler, start)` then `handle_trade_tick` for every trade, then
    `stop_batch_update()`: the path nautilus's DataEngine uses to aggregate requested historical
    ticks. No timer fires; a bar is built when a later trade passes its close, and (as in the
    DataEngine) the last, open bar of each series is never emitted, the first one is.

Semantics (why the bar counts agree or not):
- Buckets: core, plain loop, tardis and nautilus timers put a trade at time t into
  [t - t % len, t - t % len + len): tardis buckets by floor(t / len); nautilus's timer for a
  boundary fires before a trade at exactly that time is handled ('left-open' then only labels the
  bar by its close).
- Empty intervals: none emits a bar for an interval without trades (core: empty candles off;
  tardis: a bar is emitted only when a later trade arrives; nautilus: build_with_no_updates=False),
  but for nautilus batch's case below.
- The first bar of each series: core and plain loop leave out the first, partial candle of each
  symbol×interval. tardis and nautilus batch emit it but never emit the last, still open bar (they
  close a bar only on a later trade and have no flush): one bar fewer than the intervals with
  trades, as the core counts. nautilus timers skip the first bar (`skip_first_non_full_bar`) and
  get the last one at the end: the same count again. (nautilus counts a first bar starting within
  1 ms, or interval/1000, of a boundary as full and would emit it.)
- nautilus batch differs in two ways, both printed under the table: a trade exactly on a boundary
  closes the earlier bar ((open, close], its 'left-open' default) instead of opening the next;
  and after such a trade, if the next one comes after the following close, it builds a volume-0
  bar for the interval in between.
- Numbers: core exact decimals (scaled ints); plain loop, tardis floats; nautilus fixed-point
  Price/Quantity at precision 2/3. Only counts are compared, not OHLCV values.

Trades file (little-endian): b"TRADES01", u32 header length, a JSON header {"n", "symbols"}
padded with spaces so the columns start 8-byte aligned, then columns in message order: time ms
f64[n], price f64[n], size f64[n], symbol index u16[n], buy u8[n], id ascii[32 × n].
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bench.core import INTERVALS, Message, run_core, run_plain, workload

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
PEERS = ROOT / "var" / "peers"
NODE_PREFIX = PEERS / "node"
NODE_PACKAGE = NODE_PREFIX / "node_modules" / "tardis-dev" / "package.json"
PEERS_PYTHON = PEERS / "venv" / "bin" / "python"
LABELS = [interval.label for interval in INTERVALS]
TIMEOUT_S = 1800


@dataclass
class Engine:
    name: str
    rates: list[float] = field(default_factory=list)
    bars: Counter[str] = field(default_factory=Counter)
    empty: Counter[str] = field(default_factory=Counter)
    error: str = ""
    why: str = ""  # printed when its bar counts differ from the core's

    @property
    def rate(self) -> float | None:
        return statistics.median(self.rates) if self.rates else None


def write_trades(messages: list[Message], path: Path) -> int:
    """The trades, in message order, as the binary file the peer scripts read."""
    names = sorted({msg.symbol for msg in messages})
    index = {name: k for k, name in enumerate(names)}
    times, prices, sizes = array("d"), array("d"), array("d")
    symbols = array("H")
    buys = bytearray()
    ids = bytearray()
    for msg in messages:
        times.extend(float(t) for t in msg.times)
        prices.extend(msg.float_prices)
        sizes.extend(msg.float_sizes)
        symbols.extend([index[msg.symbol]] * len(msg.times))
        buys.extend(1 if buy else 0 for buy in msg.buys)
        for trade_id in msg.ids:
            raw = trade_id.encode("ascii")
            if len(raw) != 32:
                raise ValueError(f"trade id {trade_id!r} is not 32 characters")
            ids.extend(raw)
    n = len(times)
    header = json.dumps({"n": n, "symbols": names}).encode()
    header += b" " * (-(12 + len(header)) % 8)
    if sys.byteorder != "little":
        for column in (times, prices, sizes, symbols):
            column.byteswap()
    with path.open("wb") as f:
        f.write(b"TRADES01" + struct.pack("<I", len(header)) + header)
        for column in (times, prices, sizes, symbols):
            f.write(column.tobytes())
        f.write(buys)
        f.write(ids)
    return n


def tardis_command(path: Path) -> list[str] | str:
    """The command that runs the tardis-dev script, or why it cannot run."""
    node = shutil.which("node")
    if node is None:
        return "node is not on PATH"
    if not NODE_PACKAGE.exists():
        return f"tardis-dev is not installed in {NODE_PREFIX} (make bench-peers installs it)"
    return [node, str(HERE / "tardis_bars.mjs"), str(NODE_PREFIX), str(path)]


def nautilus_command(path: Path, mode: str) -> list[str] | str:
    """The command that runs the nautilus_trader script, or why it cannot run."""
    if not PEERS_PYTHON.exists():
        return f"no peers venv at {PEERS_PYTHON.parents[1]} (make bench-peers creates it)"
    return [str(PEERS_PYTHON), str(HERE / "nautilus_bars.py"), str(path), mode]


def run_peer(engine: Engine, command: list[str] | str, trades: int) -> None:
    """One run of a peer subprocess; a failure is kept as the engine's reason, not raised."""
    if isinstance(command, str):
        engine.error = command
        return
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=TIMEOUT_S, env=env, cwd=PEERS
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        engine.error = f"{type(exc).__name__}: {exc}"
        return
    if done.returncode != 0:
        tail = " | ".join(done.stderr.strip().splitlines()[-3:])
        engine.error = f"exit {done.returncode}: {tail}"
        return
    try:
        result = json.loads(done.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        engine.error = f"no JSON result on stdout: {done.stdout[-200:]!r}"
        return
    if result["trades"] != trades:
        engine.error = f"read {result['trades']} trades, expected {trades}"
        return
    engine.rates.append(float(result["trades_per_s"]))
    engine.bars = Counter({label: int(count) for label, count in result["bars"].items()})
    engine.empty = Counter(
        {label: int(count) for label, count in result.get("empty_bars", {}).items()}
    )


def run_ours(engine: Engine, plain: bool, messages: list[Message], trades: int) -> None:
    elapsed, counts = (run_plain if plain else run_core)(messages)
    engine.rates.append(trades / elapsed)
    engine.bars = counts


def table(engines: list[Engine], plain: Engine, tardis: Engine) -> list[str]:
    head = ["engine", "trades/s", "× plain loop", "× tardis-dev", *LABELS]
    rows = [head, ["---"] * len(head)]
    for engine in engines:
        rate = engine.rate
        if rate is None:
            rows.append([engine.name, "not measured", "", "", *[""] * len(LABELS)])
            continue
        rows.append(
            [
                engine.name,
                f"{rate:,.0f}",
                f"{rate / plain.rate:.2f}" if plain.rate else "",
                f"{rate / tardis.rate:.2f}" if tardis.rate else "",
                *[f"{engine.bars[label]:,}" for label in LABELS],
            ]
        )
    return ["| " + " | ".join(row) + " |" for row in rows]


def cross_check(engines: list[Engine], core: Engine) -> list[str]:
    lines = []
    for engine in engines:
        if engine is core or engine.rate is None:
            continue
        diffs = [
            f"{label} {engine.bars[label] - core.bars[label]:+,}"
            for label in LABELS
            if engine.bars[label] != core.bars[label]
        ]
        empty = [f"{label} {engine.empty[label]:,}" for label in LABELS if engine.empty[label]]
        if not diffs:
            lines.append(f"- {engine.name}: same bar count as the core in every interval")
            continue
        line = f"- {engine.name}: bar counts differ from the core's: {', '.join(diffs)}"
        if empty:
            line += f"; volume-0 bars among its own: {', '.join(empty)}"
        if engine.why:
            line += f". Why: {engine.why}"
        lines.append(line)
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.peers")
    parser.add_argument("--trades", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    trades: int = args.trades
    print(f"building the workload: {trades:,} trades ...", file=sys.stderr, flush=True)
    messages = workload(trades)
    core = Engine("core (CandleCore)")
    plain = Engine("plain loop")
    tardis = Engine("tardis-dev 13.35.3 computeTradeBars (Node)")
    timers = Engine("nautilus_trader 1.221.0 TimeBarAggregator, timers")
    batch = Engine(
        "nautilus_trader 1.221.0 TimeBarAggregator, batch",
        why=(
            "in batch mode a trade exactly on a boundary closes the earlier bar (left-open "
            "(open, close]) instead of opening the next, and when the next trade comes after the "
            "following close it builds a volume-0 bar for the interval in between"
        ),
    )
    engines = [core, plain, tardis, timers, batch]
    with tempfile.TemporaryDirectory(prefix="bench-peers-") as tmp:
        path = Path(tmp) / "trades.bin"
        write_trades(messages, path)
        peers = [
            (tardis, tardis_command(path)),
            (timers, nautilus_command(path, "timers")),
            (batch, nautilus_command(path, "batch")),
        ]
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1}/{args.repeats} ...", file=sys.stderr, flush=True)
            run_ours(core, False, messages, trades)
            run_ours(plain, True, messages, trades)
            for engine, command in peers:
                if not engine.error:
                    run_peer(engine, command, trades)
    print(
        f"\n{trades:,} trades, {len({m.symbol for m in messages})} symbols, "
        f"intervals {','.join(LABELS)}; trades/s: median of {args.repeats} interleaved repeats\n",
        flush=True,
    )
    for line in table(engines, plain, tardis):
        print(line)
    print()
    for line in cross_check(engines, core):
        print(line)
    for engine in engines:
        if engine.error:
            print(f"- {engine.name}: not measured: {engine.error}")
    return 0
