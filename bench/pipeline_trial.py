"""One end-to-end trial of bench.pipeline: the real processes on a private Redis, and probes.

See bench/pipeline.py for what is measured and how "keeps up" is judged.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
import redis

from common.gcpolicy import FREEZE_AFTER_S
from common.intervals import parse_intervals
from common.wire import STREAM_FIELD, TradesEntry, entry_decoder
from tests.ingest.e2e_support import Sim
from tests.support.pipeline import PASSWORD, USER, Pipeline, wait_for_ws
from tests.support.procs import python_module
from tests.support.redisproc import RedisProcess, free_port
from tests.support.sched import policies, set_fifo

INTERVALS = "1s,1m,5m,15m,1h,4h"
INTERVALS_MS = [i.ms for i in parse_intervals(INTERVALS)]
WAITER_MS = 80  # STREAMER_AGGREGATOR_WAITER_LATENCY_MS (the default, set explicitly)
CLOCK_MS = 20  # STREAMER_CLOCK_INTERVAL_MS (the default)
SHARDS = 4
CONNECTIONS = 4  # STREAMER_BYBIT_SOCKET_POOL_SIZE: ingest's WebSocket connections
RETENTION_S = 3600  # STREAMER_TRADES_RETENTION_S (the default)
BOUND_MS = 1000  # the "keeps up" bound on each lag
STAGES = ("ingest", "aggregate", "publish")
LEAN_SLOT_MS = 1
"""The lean load's `--loop-ms`: each symbol's trades of a 1 ms slot go in one message sent when
the slot ends, as Bybit sends them, 0-1 ms after their trades and spread over the second (its
recorded `ts` are uniform over the millisecond digit). With the live loop's 10 ms slots every
symbol's message came at once on a 10 ms grid the waiter deadlines fall on, and far fewer of
them: a load that cost ingest less than half of what Bybit's does (docs/benchmarks.md,
2026-12-06 18:00)."""


class _Head(msgspec.Struct):
    interval: int
    timestamp: int
    symbol: str
    closed: bool = True
    revision: int = 0


_heads = msgspec.json.Decoder(list[_Head])
_head = msgspec.json.Decoder(_Head)


@dataclass
class Result:
    symbols: int
    asked: int
    window_s: float
    delivered: float = 0.0
    trade_lag_ms: list[int] = field(default_factory=list)
    agg_lag_ms: list[float] = field(default_factory=list)
    delay_ms: list[int] = field(default_factory=list)
    written_ms: list[int] = field(default_factory=list)  # aggregator write − (end + waiter)
    hop_ms: list[int] = field(default_factory=list)  # arrival − aggregator write
    rss_mb: dict[str, float] = field(default_factory=dict)
    cpu: dict[str, float] = field(default_factory=dict)
    redis_mb: float = 0.0
    redis_hour_mb: float = 0.0
    trades_per_entry: float = 0.0
    entry_bytes: dict[str, float] = field(default_factory=dict)  # per stream entry: trades, klines
    load_1m: float = 0.0  # the machine's load average at the end (others share it)
    realtime: str = ""  # the processes under SCHED_FIFO, as the kernel said (Run.realtime)

    def failures(self) -> list[str]:
        """Why the pipeline fell behind the load it was given (empty: it kept up)."""
        out = []
        checks = (
            ("trade-stream lag p99", pct(self.trade_lag_ms, 99)),
            ("aggregator lag p99", pct(self.agg_lag_ms, 99)),
            ("candle delay p99 − waiter", pct(self.delay_ms, 99) - WAITER_MS),
        )
        for what, value_ms in checks:
            if value_ms > BOUND_MS:
                out.append(f"{what} {value_ms:,.0f} ms > {BOUND_MS:,} ms")
        return out

    def short(self) -> bool:
        """The load did not arrive: the simulator (on the same two cores) sent < 90 % of it."""
        return self.delivered < 0.9 * self.asked

    def busiest(self) -> str:
        return ", ".join(f"{n} {c:.0%}" for n, c in sorted(self.cpu.items(), key=lambda x: -x[1]))


def pct(values: list[int] | list[float], q: int) -> float:
    if not values:
        return math.inf
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, math.ceil(q / 100 * len(ordered)) - 1)])


class _Arrivals:
    """A WebSocket user (Basic auth) in its own process (bench.ws_user), which stamps each frame
    on arrival; a thread here keeps the frames with their arrival times."""

    def __init__(self, port: int) -> None:
        self.frames: list[tuple[int, bytes]] = []
        self.error = ""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.ws_user", str(port), USER, PASSWORD],
            stdout=subprocess.PIPE,
            cwd=Path(__file__).resolve().parent.parent,
        )
        self._thread = threading.Thread(target=self._run, name="arrivals", daemon=True)
        self._thread.start()

    @property
    def pid(self) -> int:
        return self._proc.pid

    def _run(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            stamp, _, data = line.rstrip(b"\n").partition(b" ")
            if stamp == b"!":
                self.error = data.decode(errors="replace")
            else:
                self.frames.append((int(stamp), data))

    def delays(self, from_ms: int, to_ms: int) -> tuple[list[int], set[str]]:
        out, symbols = [], set()
        for arrival_ms, data in list(self.frames):
            if not from_ms <= arrival_ms < to_ms:
                continue
            for head in _heads.decode(data):
                if head.closed and head.revision == 0:
                    out.append(arrival_ms - head.timestamp - head.interval)
                    symbols.add(head.symbol)
        return out, symbols

    def stop(self) -> None:
        self._proc.terminate()
        try:
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._thread.join(5)


def _metrics(port: int, tries: int = 3) -> dict[str, list[float]]:
    """The process's Prometheus counters and gauges by name (empty if it did not answer)."""
    out: dict[str, list[float]] = {}
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=3) as answer:
                text = answer.read().decode()
            break
        except OSError:
            if attempt == tries - 1:
                return out
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out.setdefault(name.split("{", 1)[0], []).append(float(value))
    return out


def _proc_status(pid: int, field_name: str) -> float:
    with open(f"/proc/{pid}/status") as handle:
        for line in handle:
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) / 1024  # kB → MB
    return 0.0


def _cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as handle:
        fields = handle.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # utime + stime, clock ticks (USER_HZ)


SAMPLE_AT_MS = (300, 800)
"""Where in each wall-clock second the probes sample (lags, /metrics): away from the candle
closings at whole seconds + the waiter latency, so that the bench's own requests (a /metrics
scrape runs on the aggregator's event loop) never land on a boundary it measures."""


def _to_sample_s(now_s: float) -> float:
    """Seconds from `now_s` to the next moment of SAMPLE_AT_MS."""
    into_ms = now_s * 1000 % 1000
    waits = [(at - into_ms) % 1000 for at in SAMPLE_AT_MS]
    return max(0.001, min(waits)) / 1000


def _trade_lags(client: redis.Redis, pipe: Pipeline) -> list[int]:
    lags = []
    for shard in range(SHARDS):
        tail: Any = client.xrevrange(pipe.keys.trades(shard), count=20)
        for entry_id, fields in tail:
            entry = entry_decoder.decode(fields[STREAM_FIELD])
            if isinstance(entry, TradesEntry) and entry.trades:
                id_ms = int(entry_id.split(b"-", 1)[0])
                lags.append(id_ms - max(t.time_ms for t in entry.trades))
    return lags


class StageDown(Exception):
    """A stage of the trial did not come up."""


class Run:
    """One pipeline on its own Redis and simulator; stopped by `close`. `stage_env`: environment
    for one stage's processes only, by stage (e.g. publish's consumers, a control module's own);
    `modules`: another module to run a
    stage with (e.g. bench.aggregate_nostore for aggregate); `pregenerate_s` > 0: the simulator's
    lean load (`--pregenerate-s`: every frame built before it is ready, so the load costs little
    CPU during the run) covering that many seconds, instead of its live market loop;
    `realtime_priority` > 0: aggregate and publish with STREAMER_REALTIME_PRIORITY, Redis's
    threads under SCHED_FIFO at that priority (docs/deploy.md, "Real-time priority")."""

    def __init__(
        self,
        tmp: Path,
        symbols: int,
        rate: int,
        profile: str | None,
        modules: dict[str, str] | None = None,
        pregenerate_s: float = 0.0,
        aggregate_replicas: int = 1,
        stage_env: dict[str, dict[str, str]] | None = None,
        realtime_priority: int = 0,
    ) -> None:
        self.tmp = tmp
        self.pregenerate_s = pregenerate_s
        self.aggregate_replicas = aggregate_replicas
        self.stage_env = {stage: dict(env) for stage, env in (stage_env or {}).items()}
        self.modules = modules or {}
        self.server = RedisProcess(tmp / "redis").start()
        if realtime_priority:
            assert self.server.proc is not None
            set_fifo(self.server.proc.pid, realtime_priority)
            for stage in ("aggregate", "publish"):
                env = self.stage_env.setdefault(stage, {})
                env["STREAMER_REALTIME_PRIORITY"] = str(realtime_priority)
        self.client = self.server.client()
        self.arrivals: _Arrivals | None = None
        self.profile_path = tmp / f"{profile}.prof"
        for attempt in range(2):
            self._attempt = attempt  # a log of its own: wait_output must not see the first's
            self.ports = {stage: free_port() for stage in STAGES}
            try:
                self._start(symbols, rate, profile)
                break
            except StageDown as exc:
                # Most often a port taken between free_port() choosing it and the stage binding
                # it (another process's outgoing connection): once more on fresh ports.
                self._stop_processes()
                if attempt:
                    self.close()
                    raise
                print(f"  a stage did not come up ({exc}); starting once more", file=sys.stderr)
                self.client.flushall()
            except BaseException:
                self.close()
                raise

    def _start(self, symbols: int, rate: int, profile: str | None) -> None:
        sim_args: tuple[str, ...] = (
            "--port",
            "0",
            "--symbols",
            str(symbols),
            "--rate",
            str(rate),
            "--seed",
            "7",
        )
        if self.pregenerate_s:
            sim_args += ("--pregenerate-s", str(self.pregenerate_s), "--loop-ms", str(LEAN_SLOT_MS))
        sim_proc = python_module(
            "simulator", *sim_args, env={}, log_path=self.tmp / f"sim{self._attempt or ''}.log"
        )
        sim = Sim(sim_proc, "", "", self.tmp / "no-ledger")
        self.pipe = Pipeline(self.tmp, self.server.url, sim, SHARDS, INTERVALS, _env())
        sim_proc.wait_output("simulator ready", 30 + self.pregenerate_s)
        ws_url, rest_url = sim_proc.output().split("simulator ready ", 1)[1].split()[:2]
        self.pipe.sim.ws_url, self.pipe.sim.rest_url = ws_url, rest_url
        for stage in STAGES:
            args: tuple[str, ...] = ()
            module = self.modules.get(stage, stage)
            if stage == profile:
                module, args = "cProfile", ("-o", str(self.profile_path), "-m", module)
            extra = self.stage_env.get(stage, {})
            if stage == "aggregate" and self.aggregate_replicas > 1:
                self._start_aggregate_replicas(module, args, extra)
                continue
            self.pipe.start(
                module, stage, *args, STREAMER_METRICS_PORT=str(self.ports[stage]), **extra
            )
            if stage == "publish":
                try:
                    wait_for_ws(self.pipe.ws_port)
                except AssertionError as exc:
                    out = self.pipe.procs["publish"].output()[-800:]
                    raise StageDown(f"{exc}; publish's log ends: {out}") from None
                self.arrivals = _Arrivals(self.pipe.ws_port)
        self._started = time.monotonic()  # the last stage's start

    def _start_aggregate_replicas(
        self, module: str, args: tuple[str, ...], extra: dict[str, str]
    ) -> None:
        """Replicas with the shards dealt out among them (STREAMER_SHARD_IDS: no lease
        rebalancing to wait for); the first one's metrics port is the stage's."""
        for k in range(self.aggregate_replicas):
            name = "aggregate" if k == 0 else f"aggregate{k + 1}"
            port = self.ports["aggregate"] if k == 0 else free_port()
            ids = ",".join(str(s) for s in range(k, SHARDS, self.aggregate_replicas))
            self.pipe.start(
                module,
                name,
                *args,
                STREAMER_METRICS_PORT=str(port),
                STREAMER_SHARD_IDS=ids,
                **extra,
            )

    def realtime(self) -> str:
        """Which processes run under SCHED_FIFO, and at what priority, as the kernel says."""
        out = []
        for name, pid in sorted(self.pids().items()):
            (policy, priority), *others = policies(pid)
            if policy == os.SCHED_FIFO and not others:
                out.append(f"{name} {priority}")
        return ", ".join(out) or "none"

    def pids(self) -> dict[str, int]:
        pids = {name: proc.pid for name, proc in self.pipe.procs.items()}
        pids["simulator"] = self.pipe.sim.proc.pid
        if self.server.proc is not None:
            pids["redis"] = self.server.proc.pid
        return pids

    def warm_up(self, timeout_s: float = 60) -> None:
        assert self.arrivals is not None
        deadline = time.monotonic() + timeout_s
        while not self.arrivals.frames:  # the first closed 1s candle reached the user
            if time.monotonic() > deadline:
                logs = "\n".join(f"{n}: {p.output()[-800:]}" for n, p in self.pipe.procs.items())
                raise RuntimeError(f"no candle reached the WebSocket user ({self.arrivals.error})"
                                   f"\n{logs}")  # fmt: skip
            time.sleep(0.1)
        # Past every stage's start-up collection (common/gcpolicy.py: a full one, then freeze,
        # FREEZE_AFTER_S and up to a second after start; 75-90 ms in ingest and aggregate at
        # 20,000 trades/s), which falls inside the window otherwise: the steady state is measured.
        settled_s = self._started + FREEZE_AFTER_S + 2.0 - time.monotonic()
        time.sleep(max(1.0, settled_s))

    def measure(self, result: Result) -> None:
        pids = self.pids()
        trades_0 = _metrics(self.ports["ingest"]).get("streamer_ingest_trades_total", [0.0])[0]
        entries_0 = _metrics(self.ports["ingest"]).get(
            "streamer_ingest_entries_written_total", [0.0]
        )[0]
        cpu_0 = {name: _cpu_s(pid) for name, pid in pids.items()}
        start_ms, start = time.time_ns() // 1_000_000, time.monotonic()
        while time.monotonic() - start < result.window_s:
            time.sleep(_to_sample_s(time.time()))
            result.trade_lag_ms += _trade_lags(self.client, self.pipe)
            result.agg_lag_ms += [
                lag_s * 1000
                for lag_s in _metrics(self.ports["aggregate"]).get(
                    "streamer_aggregate_stream_lag_seconds", []
                )
            ]
        elapsed = time.monotonic() - start
        result.load_1m = os.getloadavg()[0]
        ingest = _metrics(self.ports["ingest"])
        trades = ingest.get("streamer_ingest_trades_total", [0.0])[0] - trades_0
        entries = ingest.get("streamer_ingest_entries_written_total", [0.0])[0] - entries_0
        result.delivered = trades / elapsed
        result.trades_per_entry = trades / max(entries, 1)
        result.cpu = {name: (_cpu_s(pid) - cpu_0[name]) / elapsed for name, pid in pids.items()}
        result.rss_mb = {name: _proc_status(pid, "VmHWM") for name, pid in pids.items()}
        assert self.arrivals is not None
        result.delay_ms, seen = self.arrivals.delays(start_ms, start_ms + int(elapsed * 1000))
        self._breakdown(result, start_ms, start_ms + int(elapsed * 1000))
        self._memory(result, entries / elapsed, len(seen))

    def _breakdown(self, result: Result, from_ms: int, to_ms: int) -> None:
        """Split each delay at the aggregator's write (its candle stream entry's id time)."""
        assert self.arrivals is not None
        written: dict[tuple[str, int, int], int] = {}
        for shard in range(SHARDS):
            rows: Any = self.client.xrange(self.pipe.keys.klines(shard), min=str(from_ms - 5000))
            for entry_id, fields in rows:
                head = _head.decode(fields[b"data"])
                if head.revision == 0:
                    written[head.symbol, head.interval, head.timestamp] = int(
                        entry_id.split(b"-", 1)[0]
                    )
        for arrival_ms, data in list(self.arrivals.frames):
            if not from_ms <= arrival_ms < to_ms:
                continue
            for head in _heads.decode(data):
                at = written.get((head.symbol, head.interval, head.timestamp))
                if head.closed and head.revision == 0 and at is not None:
                    result.written_ms.append(at - head.timestamp - head.interval - WAITER_MS)
                    result.hop_ms.append(arrival_ms - at)

    def _memory(self, result: Result, entries_per_s: float, symbols: int) -> None:
        """Redis now, and after an hour of retention: bytes per trade-stream entry and per
        candle entry measured here, times the entries an hour at this rate adds (extrapolated)."""
        used = int(self.client.info("memory")["used_memory"])
        sizes = {"trades": [0, 0], "klines": [0, 0]}
        for shard in range(SHARDS):
            for kind, key in (("trades", self.pipe.keys.trades(shard)),
                              ("klines", self.pipe.keys.klines(shard))):  # fmt: skip
                sizes[kind][0] += int(self.client.xlen(key))
                sizes[kind][1] += int(self.client.memory_usage(key, samples=0) or 0)
        per_entry = {kind: size / max(count, 1) for kind, (count, size) in sizes.items()}
        result.entry_bytes = per_entry
        candles_hour = symbols * sum(3_600_000 / ms for ms in INTERVALS_MS)
        hour = (per_entry["trades"] * entries_per_s * RETENTION_S
                + per_entry["klines"] * candles_hour)  # fmt: skip
        result.redis_mb = used / 2**20
        result.redis_hour_mb = (used - sizes["trades"][1] - sizes["klines"][1] + hour) / 2**20

    def close(self) -> None:
        self._stop_processes()
        self.client.close()
        self.server.stop()

    def _stop_processes(self) -> None:
        if self.arrivals is not None:
            self.arrivals.stop()
            self.arrivals = None
        if hasattr(self, "pipe"):
            procs = [*self.pipe.procs.values(), self.pipe.sim.proc]
            for proc in procs:  # all at once: the slowest drain, not the sum of them
                if proc.popen.poll() is None:
                    proc.popen.send_signal(signal.SIGTERM)
            for proc in procs:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.popen.wait(20)
                proc.stop()  # closes its log (one that ignored SIGTERM: killed, and raises)
            del self.pipe


def _env() -> dict[str, str]:
    return {
        "STREAMER_AGGREGATOR_WAITER_LATENCY_MS": str(WAITER_MS),
        "STREAMER_CLOCK_INTERVAL_MS": str(CLOCK_MS),
        "STREAMER_BYBIT_SOCKET_POOL_SIZE": str(CONNECTIONS),
        "STREAMER_TRADES_RETENTION_S": str(RETENTION_S),
        "STREAMER_LEASE_TTL_MS": "3000",
        "STREAMER_LOG_LEVEL": "WARNING",
    }
