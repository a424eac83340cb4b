"""Faults the pipeline must survive, injected while the simulator trades at a steady rate.

kill -9 of each stage in turn (a supervisor restarts them, as supervisord would), Redis stopped
and started (with its append-only file), the exchange dropping every connection, a stage paused
(SIGSTOP) past its lease and resumed. At the end every published candle is checked against the
simulator's ledger, and a table says what was injected and what was lost.
"""

from __future__ import annotations

import bisect
import collections
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from common.wire import GapEntry, RepairEntry, TradesEntry, entry_decoder
from tests.pipeline.test_e2e import check_against_ledger
from tests.support import replies
from tests.support.expected import LedgerTrade
from tests.support.gaps import covered
from tests.support.pipeline import (
    Pipeline,
    Supervisor,
    latest,
    pubsub_collector,
    start_pipeline,
    wait_for_ws,
    websocket_collector,
)
from tests.support.redisproc import RedisProcess
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

LEASE_MS = 1500
STAGES = ["ingest-a", "ingest-b", "aggregate-a", "aggregate-b", "publish"]


@dataclass
class StreamContent:
    trade_ids: collections.Counter[str]
    gaps: list[GapEntry]
    repairs: list[RepairEntry]
    first_ms: dict[str, int]  # symbol -> time of its first trade in stream order

    def from_series_start(self, trades: list[LedgerTrade], base_ms: int) -> list[LedgerTrade]:
        """The trades from each symbol's first candle in the aggregator's eyes: the one of its
        first trade in stream order (skipped as partial). A trade of an earlier candle written
        after it (a gap repair of a window before the symbol's first live trade) comes too late
        to start the series: no candle of it is owed."""
        return [
            t for t in trades
            if t.time_ms >= self.first_ms[t.symbol] - self.first_ms[t.symbol] % base_ms
        ]  # fmt: skip

    def unrepaired(self) -> set[tuple[str, int, int]]:
        """(symbol, from, to) of gaps no repair entry ended yet."""
        done = {(s, r.from_ms, r.to_ms) for r in self.repairs for s in r.symbols}
        gapped = {(s, g.from_ms, g.to_ms) for g in self.gaps for s in g.symbols}
        return gapped - done

    def completely_repaired(self) -> set[tuple[str, int, int]]:
        return {(s, r.from_ms, r.to_ms) for r in self.repairs for s in r.complete}


def read_trade_streams(pipe: Pipeline) -> StreamContent:
    client = pipe.client()
    ids: collections.Counter[str] = collections.Counter()
    gaps: list[GapEntry] = []
    repairs: list[RepairEntry] = []
    first_ms: dict[str, int] = {}
    for shard in range(pipe.shards):
        for _, fields in replies.entries(client.xrange(pipe.keys.trades(shard))):
            entry = entry_decoder.decode(fields[b"data"])
            if isinstance(entry, TradesEntry):
                ids.update(trade.trade_id for trade in entry.trades)
                if entry.trades:
                    first_ms.setdefault(entry.symbol, entry.trades[0].time_ms)
            elif isinstance(entry, GapEntry):
                gaps.append(entry)
            elif isinstance(entry, RepairEntry):
                repairs.append(entry)
    client.close()
    return StreamContent(ids, gaps, repairs, first_ms)


def covering_reason(trade: LedgerTrade, gaps: list[GapEntry]) -> str | None:
    for gap in gaps:
        if trade.symbol in gap.symbols and gap.from_ms <= trade.time_ms <= gap.to_ms:
            return gap.reason
    return None


def run_faults(tmp_path: Path, duration_s: float) -> None:
    redis_server = RedisProcess(tmp_path / "redis", extra=("--appendonly", "yes")).start()
    pipe = start_pipeline(
        tmp_path, redis_server.url,
        ("--symbols", "20", "--rate", "300", "--drop-every-s", "4"),
        shards=3, intervals="1s,5s", STREAMER_LEASE_TTL_MS=str(LEASE_MS),
        STREAMER_INGEST_STANDBY_S="10",
        STREAMER_CLOCK_INTERVAL_MS="20",
    )  # fmt: skip
    injected: list[tuple[str, str]] = []
    supervisor: Supervisor | None = None
    try:
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        ws = websocket_collector(pipe.ws_port)
        pubsub = pubsub_collector(redis_server.url, "pipeline-klines")
        for name in ("aggregate-a", "aggregate-b"):
            pipe.start("aggregate", name)
        for name in ("ingest-a", "ingest-b"):
            pipe.start("ingest", name)
        supervisor = Supervisor(pipe, STAGES)
        wait_until(lambda: len(pipe.sim.trades()) > 1000, 30, "trades flowing")

        def kill9(name: str) -> Callable[[], None]:
            def act() -> None:
                pipe.procs[name].kill9()

            return act

        def pause(name: str) -> Callable[[], None]:
            def act() -> None:
                supervisor.paused.add(name)
                os.kill(pipe.procs[name].pid, signal.SIGSTOP)
                time.sleep(LEASE_MS / 1000 + 1.5)  # the fault itself: stopped past the lease
                os.kill(pipe.procs[name].pid, signal.SIGCONT)
                supervisor.paused.discard(name)

            return act

        def bounce_redis() -> None:
            redis_server.stop()
            time.sleep(2.0)  # the fault itself: Redis away for two seconds
            redis_server.start()

        faults: list[tuple[str, Callable[[], None]]] = [
            ("kill -9 ingest-a", kill9("ingest-a")),
            ("kill -9 aggregate-a", kill9("aggregate-a")),
            ("kill -9 publish", kill9("publish")),
            ("Redis stopped 2 s and started", bounce_redis),
            ("SIGSTOP aggregate-b past its lease", pause("aggregate-b")),
            ("SIGSTOP ingest-b past its lease", pause("ingest-b")),
            ("kill -9 ingest-b", kill9("ingest-b")),
            ("kill -9 aggregate-b", kill9("aggregate-b")),
        ]
        end = time.monotonic() + duration_s
        step_s = duration_s / (len(faults) + 1)
        index = 0
        while time.monotonic() < end:
            name, act = faults[index % len(faults)]
            deadline = time.monotonic() + step_s
            act()
            injected.append((name, time.strftime("%H:%M:%S")))
            index += 1
            while time.monotonic() < deadline:
                time.sleep(0.1)  # the steady-rate period between faults
        # Quiet end: the repairs of the gaps so far end (recent-trade answers while the exchange
        # runs), then the exchange stops; everything it sent and was received gets through.
        wait_until(lambda: not read_trade_streams(pipe).unrepaired(), 60, "the repairs to end")
        settled_ms = time.time_ns() // 1_000_000  # every gap written by now is repaired
        assert pipe.sim.proc.stop() == 0
        ledger = pipe.ledger_trades()
        missed = pipe.missed_trades()  # made while a drop had every connection cut off
        ledger_ids = {t.trade_id for t in ledger + missed}

        def settled() -> bool:
            content = read_trade_streams(pipe)
            missing = [t for t in ledger if t.trade_id not in content.trade_ids]
            return all(covering_reason(t, content.gaps) for t in missing)

        wait_until(settled, 60, "every ledger trade written or covered by a gap")
        last_t = max(t.time_ms for t in ledger)
        boundary = last_t - last_t % 5000 + 5000
        wait_until(
            lambda: any(c.interval == 5000 and c.timestamp >= boundary
                        for c in pipe.stream_candles()),
            60, "the last candles to close",
        )  # fmt: skip
        supervisor.stop()
        stream = pipe.stream_candles()
        entries = _entries(pipe)
        wait_until(lambda: entries[-1][1] in set(ws.raws), 30, "the WebSocket client's last candle")

        content = read_trade_streams(pipe)
        assert [i for i, n in content.trade_ids.items() if n > 1] == [], "a trade written twice"
        assert set(content.trade_ids) <= ledger_ids
        lost = [t for t in ledger if t.trade_id not in content.trade_ids]
        lost_by: collections.Counter[str] = collections.Counter()
        for trade in lost:
            reason = covering_reason(trade, content.gaps)
            assert reason is not None, f"trade lost without a gap entry: {trade}"
            lost_by[reason] += 1
        drops = pipe.sim.drops()
        assert len(drops) >= 2
        # Every deliberate exchange-side drop is reported: for each symbol, a gap entry covers
        # the window in which the exchange sent it nothing.
        symbols = {t.symbol for t in ledger}
        for from_ms, to_ms in drops:
            for symbol in symbols:
                windows = [(g.from_ms, g.to_ms, g.reason) for g in content.gaps
                           if symbol in g.symbols]  # fmt: skip
                assert covered(from_ms, to_ms, windows), (
                    f"drop {from_ms}..{to_ms} of {symbol} not reported as a gap; its gaps: "
                    f"{[w for w in windows if w[1] >= from_ms - 5000 and w[0] <= to_ms + 5000]}"
                )
        # The trades the drops kept from ingest came back from recent-trade, every one whose
        # symbol made fewer than its 1000 trades from it to 10 s after it (the most the repair
        # takes here, a failover in between included): the drop was within the REST window.
        repaired = [t for t in missed if t.trade_id in content.trade_ids]
        unrepaired = [t for t in missed if t.trade_id not in content.trade_ids]
        times: dict[str, list[int]] = collections.defaultdict(list)
        for t in ledger + missed:
            times[t.symbol].append(t.time_ms)
        for series in times.values():
            series.sort()

        def within_rest_window(t: LedgerTrade) -> bool:
            series = times[t.symbol]
            return (
                bisect.bisect(series, t.time_ms + 10_000) - bisect.bisect_left(series, t.time_ms)
                < 1000
            )

        # A trade of a drop still going on (or just over, its gap not written yet) when the
        # repairs were seen to end is left out: the exchange stopped before a repair could ask
        # for it. 2 s: far more than a reconnect takes to write its gap here.
        owed = [t for t in unrepaired if within_rest_window(t) and t.time_ms < settled_ms - 2000]
        if owed:
            near = [(a, b) for a, b in drops if a - 5000 <= owed[0].time_ms <= b + 5000]
            gaps = [g for g in content.gaps if owed[0].symbol in g.symbols]
            raise AssertionError(
                f"{len(owed)} trades within the REST window not repaired: {owed[:3]}; repairs "
                f"seen to end at {settled_ms}; drops near the first: {near}; its symbol's gaps: "
                f"{gaps[-6:]}"
            )
        assert len(repaired) > 0
        # Candles: exactly once in the streams, every value equal to the ledger's trades that
        # reached the pipeline (sent, or repaired: the rest are reported in gaps, and the
        # candles say so).
        kept = content.from_series_start(
            [t for t in ledger + missed if t.trade_id in content.trade_ids], 1000
        )
        pipe.sim.trades = lambda: [  # type: ignore[method-assign]  # the ledger's kept trades
            {"symbol": t.symbol, "T": t.time_ms, "p": str(t.price), "v": str(t.size),
             "S": "Buy" if t.buy else "Sell", "i": t.trade_id}
            for t in kept
        ]  # fmt: skip
        # 18 trading symbols (a tenth are quiet) over the whole run (>= duration_s of trades)
        seconds = int(duration_s * 2 / 3)
        floors = {1000: 18 * seconds, 5000: 18 * seconds // 5}
        compared = check_against_ledger(pipe, stream, floors)
        lost_keys = {(t.symbol, t.time_ms - t.time_ms % 1000) for t in lost + unrepaired}
        final = latest(stream)
        flagged = {(k[0], k[2]) for k, c in final.items() if c.interval == 1000 and c.gap}
        assert lost_keys - flagged == set() or not lost_keys, "a candle missing trades not flagged"
        # And no candle keeps the mark over a window repaired completely: each one flagged
        # overlaps a gap of its symbol whose repair was not complete.
        whole = content.completely_repaired()
        still_open = [
            (g.from_ms, g.to_ms, s) for g in content.gaps for s in g.symbols
            if (s, g.from_ms, g.to_ms) not in whole
        ]  # fmt: skip
        wrongly = [
            k for k, c in final.items()
            if c.gap and not any(s == k[0] and f < k[2] + k[1] and k[2] <= to
                                 for f, to, s in still_open)
        ]  # fmt: skip
        assert wrongly == [], f"{len(wrongly)} candles flagged over repaired windows: {wrongly[:5]}"
        still_flagged = sum(1 for c in final.values() if c.gap)
        # Users: a WebSocket client gets every candle published while it is connected (what
        # the publisher sent while the client was away, it does not replay); pub/sub carries
        # each candle at most once (a subscriber misses what is published while Redis is down).
        ws_seen, pub_seen = list(ws.raws), list(pubsub.raws)
        # read after the clients' copies: the aggregators go on closing (empty) candles
        stream_raws = {raw for _, raw in _entries(pipe)}
        assert set(ws_seen) <= stream_raws
        unseen = [(ms, raw) for ms, raw in entries if raw not in set(ws.raws)]
        # What this protects: a connected client misses nothing; a candle it did not get was
        # written around one of its disconnections. Before one: the killed publisher may have
        # been seconds behind the stream on a loaded 2-core machine (10 s of room); after one
        # (3 s): the new publisher sends its backlog from its stored position before the client
        # is back.
        for written_ms, raw in unseen:
            assert any(a - 10_000 <= written_ms <= b + 3000 for a, b in ws.down), raw
        pub_counts = collections.Counter(pub_seen)
        assert [raw for raw, n in pub_counts.items() if n > 1] == []
        assert set(pub_counts) <= stream_raws
        ws.stop()
        pubsub.stop()
        repeats = len(ws.raws) - len(set(ws.raws))
        missed_pub = len({raw for _, raw in entries} - set(pub_counts))
        print_table(injected, supervisor, lost_by, len(ledger), drops, compared, len(unseen),
                    repeats, missed_pub, (len(repaired), len(unrepaired)),
                    still_flagged)  # fmt: skip
    finally:
        if supervisor is not None:
            supervisor.stop()
        pipe.stop_all()
        redis_server.stop()


def _entries(pipe: Pipeline) -> list[tuple[int, bytes]]:
    """(written ms, candle JSON) of every candle stream entry."""
    client = pipe.client()
    out = [
        (int(entry_id.split(b"-")[0]), fields[b"data"])
        for shard in range(pipe.shards)
        for entry_id, fields in replies.entries(client.xrange(pipe.keys.klines(shard)))
    ]
    client.close()
    return sorted(out)


def print_table(
    injected: list[tuple[str, str]],
    supervisor: Supervisor,
    lost_by: collections.Counter[str],
    sent: int,
    drops: list[tuple[int, int]],
    compared: dict[int, int],
    ws_unseen: int,
    ws_repeats: int,
    pubsub_missed: int,
    drop_repairs: tuple[int, int],
    still_flagged: int,
) -> None:
    lines = ["", "| fault injected | at (UTC) |", "|---|---|"]
    lines += [f"| {name} | {at} |" for name, at in injected]
    lines += [
        f"| exchange dropped every connection | {len(drops)} times |",
        "",
        "| outcome | count |",
        "|---|---|",
        f"| trades the exchange sent | {sent} |",
        "| trades lost to exchange-side drops (never sent), repaired / not repaired | "
        f"{drop_repairs[0]} / {drop_repairs[1]} |",
        f"| trades lost, each inside a gap entry: reconnect (exchange drop) | "
        f"{lost_by['reconnect']} |",
        "| trades lost, each inside a gap entry: unowned (ingest failover) | "
        f"{lost_by['unowned']} |",
        f"| trades lost, each inside a gap entry: other | "
        f"{sum(n for r, n in lost_by.items() if r not in ('reconnect', 'unowned'))} |",
        "| trades lost without a gap entry | 0 |",
        f"| candles checked against the ledger (1s / 5s) | {compared[1000]} / {compared[5000]} |",
        "| candles missing or written twice in the candle streams | 0 |",
        f"| candles still flagged gap (a gap not completely repaired) | {still_flagged} |",
        f"| candles sent while a WebSocket client reconnected (not replayed) | {ws_unseen} |",
        f"| candles a WebSocket client saw twice (publisher kill -9) | {ws_repeats} |",
        f"| candles a pub/sub subscriber missed (Redis down) | {pubsub_missed} |",
        f"| process restarts by the supervisor | {sum(supervisor.restarts.values())} |",
    ]
    print("\n".join(lines))


def test_faults_short(tmp_path: Path) -> None:
    run_faults(tmp_path, duration_s=45)


@pytest.mark.slow
def test_faults_soak(tmp_path: Path) -> None:
    run_faults(tmp_path, duration_s=float(os.environ.get("SOAK_SECONDS", "600")))
