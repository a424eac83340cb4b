"""ingest.repair on its own: what an answer writes, when a symbol is complete, retries and the
give-up, the request budget and the rate-limit pause, abandoned shards; and, against a real
Redis, the stream reads (the ids already written, the gaps left unrepaired)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import redis.asyncio as aioredis

from common.errors import RetryableError
from common.keys import Keys
from common.metrics import Metric
from common.wire import GapEntry, RepairEntry, Side, Trade, TradesEntry, entry_encoder
from ingest import metrics, repair
from ingest.bybit.recent import Recent, RefusedError
from ingest.dedup import Deduper
from ingest.repair import Budget, Repairer, open_repairs, stream_ids
from ingest.rest import HttpStatusError
from tests.support.waiting import async_wait_until

FROM, TO = 10_000, 20_000


@pytest.fixture(autouse=True)
def quick(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The module's pacing, shortened (seconds in production, tens of ms here)."""
    monkeypatch.setattr(repair, "FIRST_DELAY_S", 0.01)
    monkeypatch.setattr(repair, "RETRY_BASE_S", 0.02)
    monkeypatch.setattr(repair, "RETRY_CAP_S", 0.05)
    monkeypatch.setattr(repair, "COOLDOWN_S", 0.3)
    monkeypatch.setattr(repair, "REPORT_EVERY_S", 3600)
    yield


def _t(ms: int, n: str) -> Trade:
    return Trade(ms, "100.5", "0.01", Side.BUY, n, ms)


@dataclass
class FakeWriter:
    trades: list[tuple[int, str, list[Trade]]] = field(default_factory=list)
    repairs: list[tuple[int, list[str], int, int, list[str]]] = field(default_factory=list)

    def put_trades(
        self, shard: int, symbol: str, trades: list[Trade], exchange_ms: int, received_ms: int
    ) -> None:
        assert exchange_ms == 77 and received_ms > 0
        self.trades.append((shard, symbol, list(trades)))

    def put_repair(
        self, shard: int, symbols: list[str], from_ms: int, to_ms: int, complete: list[str]
    ) -> None:
        self.repairs.append((shard, symbols, from_ms, to_ms, complete))

    def ended(self) -> set[str]:
        return {s for r in self.repairs for s in r[1]}


class Exchange:
    """recent-trade as a script: per symbol, the failures to raise first, then the answer."""

    def __init__(self, answers: dict[str, list[object]]) -> None:
        self.answers = answers
        self.asked: list[tuple[float, str]] = []

    async def fetch(self, symbol: str) -> Recent:
        self.asked.append((time.monotonic(), symbol))
        script = self.answers[symbol]
        step = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(step, Exception):
            raise step
        assert isinstance(step, list)
        return Recent(step, 77, 2)  # "asked for 2": `short` fills it, so it cannot reach back


def _repairer(
    exchange: Exchange, writer: FakeWriter, dedup: Deduper, *, owned: set[int] | None = None,
    in_stream: dict[str, set[str]] | None = None, rate: float = 100.0, give_up_s: float = 0.5,
    activity: dict[str, int] | None = None,
) -> Repairer:  # fmt: skip
    async def read_ids(shard: int, since_ms: int, symbols: set[str]) -> dict[str, set[str]]:
        assert since_ms == FROM - repair.SEED_MARGIN_MS
        return in_stream or {}

    return Repairer(
        exchange.fetch, writer, dedup, read_ids,  # type: ignore[arg-type]
        owns=(owned if owned is not None else {0}).__contains__,
        rank=lambda s: (activity or {}).get(s, 0),
        rate_per_s=rate, give_up_s=give_up_s,
    )  # fmt: skip


def _count(metric: Metric, *labels: str) -> float:
    return metric.get(*labels)


async def test_answers_write_what_the_stream_lacks_and_say_what_is_complete() -> None:
    reaching = [_t(9_000, "a0"), _t(12_000, "a1"), _t(13_000, "a2"), _t(15_000, "a3"),
                _t(21_000, "a4")]  # fmt: skip
    short = [_t(11_000, "b1"), _t(19_000, "b2")]  # oldest after FROM: cannot be complete
    exchange = Exchange({
        "AAA": [reaching],
        "BBB": [short],
        "CCC": [HttpStatusError("503", 503), RetryableError("reset"), [_t(5_000, "c0")]],
        "DDD": [HttpStatusError("503", 503)],  # never answers
        "EEE": [RefusedError(10001, "params error: symbol invalid")],
        "FFF": [[]],  # no trade at all: nothing can be missing
    })  # fmt: skip
    writer = FakeWriter()
    dedup = Deduper()
    dedup.seed("AAA", ["a2"])  # received live meanwhile
    repairer = _repairer(exchange, writer, dedup, in_stream={"AAA": {"a3"}})
    before = {o: _count(metrics.REPAIR_SYMBOLS, o) for o in ("complete", "partial", "unrepaired")}
    gaps_before = _count(metrics.REPAIRS, "partial")
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    repairer.request(0, ["AAA", "BBB", "CCC", "DDD", "EEE", "FFF"], FROM, TO)

    async def ended() -> bool:
        return writer.ended() == {"AAA", "BBB", "CCC", "DDD", "EEE", "FFF"}

    await async_wait_until(ended, 5, "every symbol to end")
    stop.set()
    await task
    # inside the window, not in the stream, not seen live; in time order; one entry a symbol
    assert writer.trades == [(0, "AAA", [_t(12_000, "a1")]), (0, "BBB", short)]
    assert {s for r in writer.repairs for s in r[4]} == {"AAA", "CCC", "FFF"}
    assert all(r[0] == 0 and (r[2], r[3]) == (FROM, TO) for r in writer.repairs)
    assert len(writer.repairs) == 1  # reported at the end (REPORT_EVERY_S is long here)
    after = {o: _count(metrics.REPAIR_SYMBOLS, o) for o in before}
    assert {o: after[o] - before[o] for o in after} == {
        "complete": 3, "partial": 1, "unrepaired": 2,
    }  # fmt: skip
    assert _count(metrics.REPAIRS, "partial") == gaps_before + 1
    assert [s for _, s in exchange.asked].count("CCC") == 3
    assert [s for _, s in exchange.asked].count("DDD") >= 3  # retried until the give-up
    assert repairer.jobs == set()


async def test_the_budget_spreads_requests_and_a_rate_limit_holds_them_all() -> None:
    symbols = [f"S{i:02}" for i in range(70)]
    exchange = Exchange({s: [[_t(1_000, s)]] for s in symbols})
    exchange.answers["S00"] = [RefusedError(10006, "Too many visits!"), [_t(1_000, "S00")]]
    writer = FakeWriter()
    repairer = _repairer(exchange, writer, Deduper(), rate=20.0)
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    limited_before = _count(metrics.REPAIR_ERRORS, "rate-limit")
    repairer.request(0, symbols, FROM, TO)

    async def ended() -> bool:
        return writer.ended() == set(symbols)

    await async_wait_until(ended, 10, "every symbol to end")
    stop.set()
    await task
    times = [at for at, _ in exchange.asked]
    assert len(times) == 71 and _count(metrics.REPAIR_ERRORS, "rate-limit") == limited_before + 1
    # The first request is refused: nothing is asked for the cooldown (0.3 s) after it.
    first = times[0]
    assert not [t for t in times[1:] if first < t < first + 0.29]
    # 20/s in bursts of at most 20: the 70 requests after the cooldown take 2.5 s more, and
    # no second holds more than 20 + 20 of them (and the refused one)
    assert times[-1] - first >= 0.3 + 2.4
    assert max(sum(1 for t in times if s <= t < s + 1) for s in times) <= 41


async def test_the_busiest_symbols_are_asked_first_whichever_gap() -> None:
    """Two gaps queued together: of the symbols ready, the one with the most trades received
    goes first (its 1000 trades reach back the least far)."""
    exchange = Exchange({s: [[]] for s in ("AAA", "BBB", "CCC", "DDD")})
    writer = FakeWriter()
    activity = {"AAA": 1, "BBB": 50, "CCC": 10, "DDD": 30}
    repairer = _repairer(exchange, writer, Deduper(), activity=activity)
    repairer.request(0, ["AAA", "BBB"], FROM, TO)
    repairer.request(0, ["CCC", "DDD"], FROM + 1, TO)
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    await async_wait_until(lambda: _async(len(writer.ended()) == 4), 5, "every symbol to end")
    stop.set()
    await task
    assert [s for _, s in exchange.asked] == ["BBB", "DDD", "CCC", "AAA"]


async def test_an_earlier_batch_of_gaps_goes_first() -> None:
    """Gaps queued GAP_BATCH_S apart: the earlier one's quiet symbol before the later one's
    busy one, so that every gap's repair ends while gaps keep coming."""
    now = [100.0]
    exchange = Exchange({s: [[]] for s in ("QUIET", "BUSY")})
    writer = FakeWriter()

    async def read_ids(shard: int, since_ms: int, symbols: set[str]) -> dict[str, set[str]]:
        return {}

    repairer = Repairer(
        exchange.fetch, writer, Deduper(), read_ids,  # type: ignore[arg-type]
        owns={0}.__contains__, rank={"QUIET": 1, "BUSY": 1000}.__getitem__,
        rate_per_s=100, give_up_s=1, clock=lambda: now[0],
    )  # fmt: skip
    repairer.request(0, ["QUIET"], FROM, TO)
    now[0] += repair.GAP_BATCH_S
    repairer.request(0, ["BUSY"], FROM + 1, TO)
    now[0] += 60
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    await async_wait_until(lambda: _async(len(writer.ended()) == 2), 5, "both to end")
    stop.set()
    await task
    assert [s for _, s in exchange.asked] == ["QUIET", "BUSY"]


async def test_the_budget_alone() -> None:
    budget = Budget(rate_per_s=10, burst=10, now=0.0)
    for _ in range(10):
        assert budget.wait_s(0.0) == 0
        budget.take(0.0)
    assert budget.wait_s(0.0) == pytest.approx(0.1)
    assert budget.wait_s(0.05) == pytest.approx(0.05)
    budget.take(0.1)
    assert budget.wait_s(0.1) == pytest.approx(0.1)
    assert budget.wait_s(100.0) == 0 and budget.wait_s(100.0) == 0  # never more than the burst


async def test_a_shard_no_longer_ours_is_abandoned() -> None:
    exchange = Exchange({"AAA": [[_t(12_000, "a1")]], "BBB": [[_t(12_000, "b1")]]})
    writer = FakeWriter()
    owned = {0}
    repairer = _repairer(exchange, writer, Deduper(), owned=owned)
    abandoned = _count(metrics.REPAIRS, "abandoned")
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    repairer.request(0, ["AAA"], FROM, TO)
    owned.clear()  # lost before the answer came
    await async_wait_until(lambda: _async(bool(exchange.asked)), 5, "a request")
    repairer.request(1, ["BBB"], FROM, TO)  # a gap written while handing the shard over
    assert repairer.jobs == set()
    owned.add(2)
    repairer.request(2, ["BBB"], FROM, TO)
    repairer.forget(2)
    await async_wait_until(lambda: _async(repairer.jobs == set()), 5, "the jobs to go")
    stop.set()
    await task
    assert writer.trades == [] and writer.repairs == []
    assert _count(metrics.REPAIRS, "abandoned") == abandoned + 2
    assert [s for _, s in exchange.asked] == ["AAA"]  # the others are never asked


async def test_a_job_abandoned_while_its_stream_ids_are_read_leaves_the_repairs_going() -> None:
    """A shard handed back while a worker waits for the job's stream ids: the read is cancelled,
    that job ends, and the replica's repairs of other shards go on (the cancellation used to
    end the worker, and with it every repair of the replica: the fault suite saw gaps pile up
    unrepaired after a hand-back)."""
    exchange = Exchange({"AAA": [[_t(12_000, "a1")]], "BBB": [[_t(12_000, "b1")]]})
    writer = FakeWriter()
    owned = {0, 1}
    reading = asyncio.Event()
    release = asyncio.Event()

    async def read_ids(shard: int, since_ms: int, symbols: set[str]) -> dict[str, set[str]]:
        if shard == 0:
            reading.set()
            await release.wait()  # a slow read of the stream, cancelled by the hand-back
        return {}

    repairer = Repairer(
        exchange.fetch, writer, Deduper(), read_ids,  # type: ignore[arg-type]
        owns=owned.__contains__, rank=lambda s: 0, rate_per_s=100.0, give_up_s=5.0,
    )  # fmt: skip
    workers = repair.CONCURRENCY
    stop = asyncio.Event()
    task = asyncio.create_task(repairer.run(stop))
    repairer.request(0, ["AAA"], FROM, TO)
    await asyncio.wait_for(reading.wait(), 5)
    owned.discard(0)
    repairer.forget(0)  # handed back: the job is abandoned, its read cancelled
    for _ in range(workers):  # every worker gets a job after it
        repairer.request(1, ["BBB"], FROM, TO)
    await async_wait_until(
        lambda: _async(len(writer.repairs) == workers or task.done()),
        5,
        "the other shard's repairs",
    )
    assert not task.done(), task
    stop.set()
    await task
    assert [r[:2] for r in writer.repairs] == [(1, ["BBB"])] * workers
    assert writer.trades[0] == (1, "BBB", [_t(12_000, "b1")])


async def _async(value: bool) -> bool:
    return value


@pytest.mark.redis
async def test_stream_reads_ids_and_the_gaps_left_unrepaired(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    stream = Keys("t").trades(0)
    entries = [
        TradesEntry("AAA", [_t(1_000, "x1")]),
        GapEntry(["AAA", "BBB", "CCC"], 500, 900, "reconnect"),
        TradesEntry("BBB", [_t(1_100, "y1"), _t(1_200, "y2")]),
        RepairEntry(["AAA"], 500, 900, ["AAA"]),
        GapEntry(["AAA"], 950, 990, "unowned"),
        RepairEntry(["AAA", "CCC"], 950, 990, []),  # another window: closes nothing above
        GapEntry(["DDD"], 2_000, 2_100, "reconnect"),  # written after the shard was taken
    ]
    for n, entry in enumerate(entries):
        await client.xadd(stream, {"data": entry_encoder.encode(entry)}, id=f"{1000 + n}-0")
    try:
        ids = await stream_ids(client, stream, 1001, {"AAA", "BBB"})
        assert ids == {"BBB": {"y1", "y2"}}  # AAA's entry was written before
        left = await open_repairs(client, stream, 0, 1006)
        assert left == [(["BBB", "CCC"], 500, 900)]
    finally:
        await client.aclose()


async def test_a_window_written_again_after_its_repair_is_open_again(redis_url: str) -> None:
    """A replica taking a shard over writes again a window the previous owner had reported and
    repaired (its own connection missed the same trades): that second gap entry is open until
    a repair follows it (the aggregator holds it open; found in a fault-suite run)."""
    client = aioredis.Redis.from_url(redis_url)
    stream = Keys("again").trades(0)
    entries = [
        GapEntry(["AAA", "BBB"], 500, 900, "reconnect"),
        RepairEntry(["AAA", "BBB"], 500, 900, ["AAA", "BBB"]),
        GapEntry(["AAA", "BBB"], 500, 900, "reconnect"),  # the new owner's, same window
        GapEntry(["CCC"], 950, 990, "reconnect"),
        RepairEntry(["CCC"], 950, 990, ["CCC"]),
    ]
    for n, entry in enumerate(entries):
        await client.xadd(stream, {"data": entry_encoder.encode(entry)}, id=f"{1000 + n}-0")
    try:
        assert await open_repairs(client, stream, 0, 2000) == [(["AAA", "BBB"], 500, 900)]
        # once its own repair follows, nothing is left
        await client.xadd(
            stream, {"data": entry_encoder.encode(entries[1])}, id="1005-0"
        )  # fmt: skip
        assert await open_repairs(client, stream, 0, 2000) == []
    finally:
        await client.aclose()
