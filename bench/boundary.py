"""Where a candle's time goes between its end and a WebSocket client, boundary by boundary.

The pipeline of bench.pipeline_trial (simulator → ingest → aggregate → publish → a WebSocket
user; 500 symbols, 6 intervals, waiter 80 ms, 4 shards, one process per stage) at 5,000 and
20,000 trades/s, three trials each in three layouts (one aggregate process; two, the shards dealt
out; one, with aggregate, publish and Redis under SCHED_FIFO, STREAMER_REALTIME_PRIORITY 20, where
this user may), on the simulator's lean load (`--pregenerate-s`: the trades
drawn and encoded before the run, so the load generator takes little of the CPU the pipeline
shares; the rows of bench.pipeline run on its live loop). After the window, every revision-0
candle that closed at its waiter deadline (`due` = end + waiter: its symbol did not trade again
before) is followed through what Redis and
the client recorded, all on this machine's one wall clock:

- ingest's clock entry: the first clock entry of the candle's shard stamped at or after `due`
  (ingest's "everything received before this is written"), and the time its XADD ran (its id);
- the aggregator's write: the candle's entry id in the candle stream (its XADD, inside the
  write script), and how far apart a boundary's four shard writes are;
- the client: when the frame with the candle arrived.

Besides, for the trades of the window: received by ingest − trade time (the exchange's side and
the socket), and XADD − received (ingest's queue and write); and, from 2 ms before each deadline
to 14 ms after, each process's CPU time and its time waiting for a core (bench.schedstat).

A p99 over a trial is decided by its slowest boundary or two, so each trial's note names its
three slowest, hop by hop (the latest shard's clock entry, the last shard write, the last
arrival) with what every process did around them; and the notes say how late the deadlines'
clock entries were written, per boundary and shard.

`python -m bench.boundary --fanout` (only when asked, ~5 min) runs the fan-out control instead
(`fanout`, bench.aggregate_fanout): the aggregator also hands each write's candles to a WebSocket
user of its own, followed beside publish's user in the same trials.
"""

from __future__ import annotations

import bisect
import sys
import tempfile
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from bench.pipeline_trial import SHARDS, WAITER_MS, Result, Run, _Arrivals, _head, _heads, pct
from bench.report import Row, table
from bench.schedstat import Sampler, Window, medians
from common.wire import STREAM_FIELD, ClockEntry, TradesEntry, entry_decoder
from tests.support.redisproc import free_port
from tests.support.sched import may_take_realtime

NOTES: list[str] = []
TRIALS = 3
REPLICAS = 2  # aggregate processes of the second layout (STREAMER_SHARD_IDS 0,2 and 1,3)
REALTIME_PRIORITY = 20  # the third layout's (docs/deploy.md, "Real-time priority")
LEAN_HEADROOM_S = 45.0  # the lean load's seconds beyond the window: start-up and warm-up


def _id_ms(entry_id: bytes) -> int:
    return int(entry_id.split(b"-", 1)[0])


class Trace:
    """What one trial recorded, hop by hop (lists of ms)."""

    def __init__(self) -> None:
        self.clock: list[int] = []  # clock entry XADD − due
        self.written: list[int] = []  # candle XADD − due
        self.arrived: list[int] = []  # arrival − candle XADD
        self.total: list[int] = []  # arrival − due
        self.spread: list[int] = []  # a boundary's last shard write − its first
        self.last: list[int] = []  # per boundary: its last candle's arrival − due
        self.received: list[int] = []  # ingest receive − trade time
        self.queued: list[int] = []  # trade entry XADD − ingest receive
        self.windows: list[Window] = []  # CPU and run-queue wait around each deadline
        self.late_clocks: list[int] = []  # per boundary and shard: its clock entry's XADD − due
        self.boundaries: list[Boundary] = []


@dataclass(frozen=True)
class Boundary:
    """One waiter deadline's hops, each the latest of its candles (ms after due)."""

    due_ms: int
    clock_ms: int  # the latest shard's clock entry (its XADD), -1 if none was found
    written_ms: int  # the last shard write
    last_ms: int  # the last candle's arrival


def _follow(run: Run, from_ms: int, to_ms: int, user: _Arrivals | None = None) -> Trace:
    """What `run` recorded between from_ms and to_ms, followed to `user` (publish's by default)."""
    trace = Trace()
    client: Any = run.client
    clocks: dict[int, list[tuple[int, int]]] = {}
    for shard in range(SHARDS):
        stamps = clocks[shard] = []
        for entry_id, fields in client.xrange(run.pipe.keys.trades(shard), min=str(from_ms)):
            entry = entry_decoder.decode(fields[STREAM_FIELD])
            if isinstance(entry, ClockEntry):
                stamps.append((entry.time_ms, _id_ms(entry_id)))
            elif isinstance(entry, TradesEntry) and entry.trades:
                trace.received.append(entry.received_ms - entry.trades[-1].time_ms)
                trace.queued.append(_id_ms(entry_id) - entry.received_ms)
    written: dict[tuple[str, int, int], tuple[int, int]] = {}
    for shard in range(SHARDS):
        for entry_id, fields in client.xrange(run.pipe.keys.klines(shard), min=str(from_ms)):
            head = _head.decode(fields[b"data"])
            if head.closed and head.revision == 0:
                written[head.symbol, head.interval, head.timestamp] = (shard, _id_ms(entry_id))
    user = user or run.arrivals
    assert user is not None
    arrived: dict[tuple[str, int, int], int] = {}
    for arrival_ms, data in list(user.frames):
        for head in _heads.decode(data):
            if head.closed and head.revision == 0:
                arrived.setdefault((head.symbol, head.interval, head.timestamp), arrival_ms)
    by_boundary: dict[int, list[int]] = defaultdict(list)
    last: dict[int, int] = {}
    for key, (shard, at) in written.items():
        due = key[2] + key[1] + WAITER_MS
        if not from_ms <= due <= to_ms or at < due or key not in arrived:
            continue  # closed early (its symbol traded again), or outside the window
        stamps = clocks[shard]
        i = bisect.bisect_left(stamps, (due, 0))
        if i < len(stamps):
            trace.clock.append(stamps[i][1] - due)
        trace.written.append(at - due)
        trace.arrived.append(arrived[key] - at)
        trace.total.append(arrived[key] - due)
        by_boundary[due].append(at)
        last[due] = max(last.get(due, 0), arrived[key] - due)
    trace.spread = [max(ats) - min(ats) for ats in by_boundary.values()]
    trace.last = [last[due] for due in sorted(last)]
    for due in sorted(last):
        late = []
        for stamps in clocks.values():
            i = bisect.bisect_left(stamps, (due, 0))
            if i < len(stamps):
                late.append(stamps[i][1] - due)
        trace.late_clocks += late
        written_ms = max(by_boundary[due]) - due
        trace.boundaries.append(Boundary(due, max(late, default=-1), written_ms, last[due]))
    return trace


def trial(
    rate: int,
    window_s: float,
    symbols: int = 500,
    lean: bool = True,
    aggregate_replicas: int = 1,
    realtime_priority: int = 0,
) -> tuple[Trace, Result]:
    """One pipeline run, followed; `lean`: the simulator plays pre-built frames (its load costs
    little CPU), else its live market loop draws and encodes every trade during the run;
    `realtime_priority`: Run's (aggregate, publish and Redis under SCHED_FIFO)."""
    with tempfile.TemporaryDirectory(prefix="bench-boundary-") as tmp:
        pregenerate_s = window_s + LEAN_HEADROOM_S if lean else 0.0
        run = Run(
            Path(tmp), symbols, rate, None, pregenerate_s=pregenerate_s,
            aggregate_replicas=aggregate_replicas, realtime_priority=realtime_priority,
        )  # fmt: skip
        try:
            run.warm_up()
            result = Result(symbols, rate, window_s, realtime=run.realtime())
            from_ms = int(run.client.time()[0]) * 1000
            assert run.arrivals is not None
            with Sampler(run.pids() | {"user": run.arrivals.pid}, WAITER_MS) as sampler:
                run.measure(result)
            to_ms = int(run.client.time()[0]) * 1000
            trace = _follow(run, from_ms, to_ms)
            trace.windows = sampler.windows
        finally:
            run.close()
    return trace, result


def _boundaries(trace: Trace) -> str:
    """Each boundary's last candle (arrival − due), in order: a boundary's candles arrive
    within a few ms of each other, so the p99 over all of them is the worst boundary or two."""
    if not trace.last:
        return "no boundary followed"
    return (
        f"per boundary, its last candle's arrival − due: median {pct(trace.last, 50):.0f} ms,"
        f" worst {max(trace.last)} ms; all {len(trace.last)}: {' '.join(map(str, trace.last))}"
    )


def _worst(trace: Trace, count: int = 3) -> str:
    """The trial's slowest boundaries, hop by hop, with what each process did around them: a
    boundary's last candle is late either because its clock entry was (ingest did not get a
    core at the grid point), or in the aggregator's write, or on the way from it."""
    windows = {w.due_ms: w for w in trace.windows}
    parts = []
    for b in sorted(trace.boundaries, key=lambda b: -b.last_ms)[:count]:
        window = windows.get(b.due_ms)
        spent = ""
        if window is not None:
            spent = " (" + ", ".join(
                f"{name} {cpu:.1f}/{wait:.1f}" for name, (cpu, wait) in sorted(window.spent.items())
            ) + ")"  # fmt: skip
        parts.append(
            f":{b.due_ms % 60_000 / 1000:06.3f} {b.clock_ms}/{b.written_ms}/{b.last_ms}{spent}"
        )
    return (
        "slowest boundaries (second of the minute due; clock entry / last write / last arrival,"
        " ms after due; CPU/wait ms around it): " + "; ".join(parts)
    )


def _clocks(trace: Trace) -> str:
    """How late the deadlines' clock entries were written (per boundary and shard)."""
    late = trace.late_clocks
    if not late:
        return "no clock entry followed"
    share = {ms: sum(1 for v in late if v == ms) / len(late) for ms in (0, 1)}
    later = sum(1 for v in late if v >= 2) / len(late)
    return (
        f"clock entries at the deadlines (boundary × shard, {len(late)}): written in the due"
        f" millisecond {share[0]:.0%}, 1 ms later {share[1]:.0%}, 2 ms or more {later:.0%}"
        f" (worst {max(late)} ms)"
    )


def _pooled(traces: list[Trace]) -> Trace:
    pooled = Trace()
    for trace in traces:
        for name, values in vars(trace).items():
            getattr(pooled, name).extend(values)
    return pooled


def run(smoke: bool) -> list[Row]:
    """Per rate and layout (one aggregate process for the four shards, or REPLICAS of them with
    the shards dealt out, or one with aggregate, publish and Redis at REALTIME_PRIORITY), TRIALS
    runs on the lean load: each one's candle delay p99 − waiter (the target rows), then the hops
    over all of them pooled."""
    NOTES.clear()
    layouts: list[tuple[int, int]]  # aggregate processes, real-time priority
    if smoke:
        rates, window_s, trials, layouts = [2_000], 3.0, 1, [(REPLICAS, 0), (1, REALTIME_PRIORITY)]
    else:
        rates, window_s, trials = [5_000, 20_000], 25.0, TRIALS
        layouts = [(1, 0), (REPLICAS, 0), (1, REALTIME_PRIORITY)]
    if not may_take_realtime(REALTIME_PRIORITY):
        layouts = [(replicas, 0) for replicas, priority in layouts if not priority]
        NOTES.append("boundary: the real-time layout left out (needs root or `ulimit -r 20`)")
    rows = []
    for rate in rates:
        for replicas, priority in layouts:
            rows += _layout(rate, replicas, window_s, trials, priority)
    return rows


def _layout(rate: int, replicas: int, window_s: float, trials: int, priority: int = 0) -> list[Row]:
    layout = "1 aggregate process" if replicas == 1 else f"{replicas} aggregate processes"
    if priority:
        layout += f", real-time priority {priority}"
    stage = f"boundary, 500 symbols @ {rate:,}/s, lean load, {layout}"
    rows, traces = [], []
    for k in range(1, trials + 1):
        trace, result = trial(
            rate, window_s, aggregate_replicas=replicas, realtime_priority=priority
        )
        traces.append(trace)
        target = "≤ 10 ms" if rate <= 5_000 else "≤ 25 ms"
        rows.append(Row(stage, f"candle delay p99 − waiter latency, trial {k}",
                        pct(result.delay_ms, 99) - WAITER_MS, "ms", target=target))  # fmt: skip
        NOTES.append(
            f"boundary @ {rate:,}/s, {layout}, trial {k}: {len(trace.total):,} candles closed by"
            f" the waiter followed; delay p50/p99 of all candles {pct(result.delay_ms, 50):.0f}/"
            f"{pct(result.delay_ms, 99):.0f} ms; delivered {result.delivered:,.0f}/s;"
            f" CPU {result.busiest()}; load average {result.load_1m:.1f}; under SCHED_FIFO"
            f" (read back): {result.realtime}; {_boundaries(trace)};"
            f" {_worst(trace)}"
        )
    trace = _pooled(traces)
    if trace.windows:
        spent = "; ".join(
            f"{name} {cpu:.1f} / {wait:.1f}" for name, (cpu, wait) in medians(trace.windows).items()
        )
        NOTES.append(
            f"boundary @ {rate:,}/s, {layout}: from 2 ms before a deadline to 14 ms after, median"
            f" of {len(trace.windows)}, CPU / waiting for a core (ms): {spent}"
        )
    NOTES.append(f"boundary @ {rate:,}/s, {layout}: {_clocks(trace)}")
    hops = (
        ("trade received by ingest − trade time", trace.received),
        ("trade entry written − received (ingest's queue)", trace.queued),
        ("clock entry written − due (end + waiter)", trace.clock),
        ("candle written − due (aggregate: read, close, write)", trace.written),
        ("a boundary's last shard write − its first", trace.spread),
        ("arrival − candle written (publish, WebSocket)", trace.arrived),
        ("arrival − due (candles closed by the waiter)", trace.total),
    )
    for what, values in hops:
        rows.append(Row(stage, f"{what}, p50", pct(values, 50), "ms"))
        rows.append(Row(stage, f"{what}, p99", pct(values, 99), "ms"))
    return rows


FANOUT_MODULE = "bench.aggregate_fanout"
_raws = msgspec.json.Decoder(list[msgspec.Raw])


@dataclass(frozen=True)
class Paired:
    """One run followed to two WebSocket users: publish's, and the aggregator's own (the
    control of bench.aggregate_fanout); and whether they got the same candles."""

    publish: Trace
    fanout: Trace
    delays: tuple[list[int], list[int]]  # every closed candle's arrival − end, each way
    same: int  # candles both users got, with the same JSON
    differ: int  # candles both users got, with different JSON (0 unless the control is broken)


def _received(frames: list[tuple[int, bytes]]) -> dict[tuple[str, int, int, int], bytes]:
    """Each closed candle a user got: its JSON by (symbol, interval, start, revision)."""
    out: dict[tuple[str, int, int, int], bytes] = {}
    for _, data in list(frames):
        for raw in _raws.decode(data):
            head = _head.decode(raw)
            if head.closed:
                out[(head.symbol, head.interval, head.timestamp, head.revision)] = bytes(raw)
    return out


def fanout_trial(rate: int, window_s: float, symbols: int = 500) -> Paired:
    """One pipeline run on the lean load whose aggregator also hands each write's candles to a
    WebSocket user of its own (bench.aggregate_fanout), followed to both users: what one
    process for the aggregator and publish would save at most, beside what the two processes
    do, in the same run (the control's user waits for publish's CPU all the same)."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="bench-fanout-") as tmp:
        run = Run(
            Path(tmp), symbols, rate, None, pregenerate_s=window_s + LEAN_HEADROOM_S,
            modules={"aggregate": FANOUT_MODULE},
            stage_env={"aggregate": {"BENCH_FANOUT_PORT": str(port)}},
        )  # fmt: skip
        fan = _Arrivals(port)
        try:
            run.warm_up()
            deadline = time.monotonic() + 30
            while not fan.frames:  # the aggregator's server starts with its first write
                if time.monotonic() > deadline:
                    raise AssertionError(f"the aggregator's fan-out sent nothing: {fan.error}")
                time.sleep(0.05)
            result = Result(symbols, rate, window_s)
            from_ms = int(run.client.time()[0]) * 1000
            run.measure(result)
            to_ms = int(run.client.time()[0]) * 1000
            published, fanned = _follow(run, from_ms, to_ms), _follow(run, from_ms, to_ms, fan)
            users = run.arrivals
            assert users is not None
            got, sent = _received(users.frames), _received(fan.frames)
            delays = users.delays(from_ms, to_ms)[0], fan.delays(from_ms, to_ms)[0]
        finally:
            fan.stop()
            run.close()
    both = got.keys() & sent.keys()
    differ = sum(1 for key in both if got[key] != sent[key])
    return Paired(published, fanned, delays, len(both) - differ, differ)


def fanout(smoke: bool) -> list[Row]:
    """TRIALS runs per rate with the aggregator's own fan-out beside publish (`fanout_trial`),
    both ways: the target's measure (candle delay p99 − waiter latency, over every closed
    candle), arrival − due (end + waiter) p99 of the candles the waiter closed, and arrival −
    written p50."""
    NOTES.clear()
    rates, window_s, trials = ([2_000], 3.0, 1) if smoke else ([5_000, 20_000], 25.0, TRIALS)
    rows = []
    for rate in rates:
        stage = f"fan-out control, 500 symbols @ {rate:,}/s, lean load"
        for k in range(1, trials + 1):
            paired = fanout_trial(rate, window_s)
            ways = (("via publish", paired.publish, paired.delays[0]),
                    ("in the aggregator", paired.fanout, paired.delays[1]))  # fmt: skip
            for way, trace, delays in ways:
                what = f"candle delay p99 − waiter latency, {way}, trial {k}"
                target = "≤ 10 ms" if rate <= 5_000 else "≤ 25 ms"
                rows.append(Row(stage, what, pct(delays, 99) - WAITER_MS, "ms", target=target))
                what = f"arrival − due p99 (closed by the waiter), {way}, trial {k}"
                rows.append(Row(stage, what, pct(trace.total, 99), "ms"))
                rows.append(Row(stage, f"arrival − candle written p50, {way}, trial {k}",
                                pct(trace.arrived, 50), "ms"))  # fmt: skip
                NOTES.append(f"fan-out @ {rate:,}/s, trial {k}, {way}: {_boundaries(trace)}")
            NOTES.append(
                f"fan-out @ {rate:,}/s, trial {k}: candles both users got {paired.same:,} the"
                f" same, {paired.differ} different"
            )
    return rows


if __name__ == "__main__":
    if "--fanout" in sys.argv:  # only when asked (~5 min): not a part of `make bench`
        print(table(fanout(smoke="--smoke" in sys.argv)))
        print("\n".join(NOTES))
        sys.exit(0)
    for row in run(smoke="--smoke" in sys.argv):
        print(row)
    print("\n".join(NOTES))
