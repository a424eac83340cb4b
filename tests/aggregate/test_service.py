"""`python -m aggregate` against a real redis-server: exactly once across kill -9, fencing."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis

from aggregate import checkpoint
from aggregate import shard as shard_module
from aggregate.service import core_config
from aggregate.shard import HOLD_MS, ShardAggregator
from aggregate.state import CoreCandle
from aggregate.together import DeadlineWrites
from common.errors import LeaseLostError
from common.intervals import parse_intervals
from common.keys import Keys
from common.settings import AggregateSettings
from common.wire import (
    STREAM_FIELD,
    CandleView,
    ClockEntry,
    GapEntry,
    Side,
    Trade,
    TradesEntry,
    candle_view_decoder,
    entry_encoder,
)
from tests.support import replies
from tests.support.history import latest_revisions, stored
from tests.support.procs import Proc, python_module
from tests.support.waiting import async_wait_until, wait_until

pytestmark = pytest.mark.redis

START_MS = 1_786_310_000_000


def prepared_entries(messages: int, seed: int = 7) -> list[bytes]:
    """A shard's trade stream: in-order messages, clock ticks, re-sent and late trades, a gap."""
    rng = random.Random(seed)
    symbols = [f"S{i:02d}USDT" for i in range(20)]
    prices = {s: rng.randint(1000, 100_000) for s in symbols}
    t = START_MS
    out: list[bytes] = []
    sent: list[TradesEntry] = []
    serial = 0
    for n in range(messages):
        t += rng.randint(0, 12)
        symbol = rng.choice(symbols)
        roll = rng.random()
        if roll < 0.03 and sent:
            entry = rng.choice(sent[-50:])  # re-sent after a reconnect
        else:
            trades = []
            late = roll < 0.05
            for _ in range(rng.randint(1, 5)):
                serial += 1
                prices[symbol] += rng.randint(-2, 2)
                trades.append(
                    Trade(
                        t - rng.randint(100, 3000) if late else t,
                        f"{prices[symbol] / 100:.2f}",
                        f"{rng.randint(1, 9999) / 1000:.3f}",
                        Side.BUY if rng.random() < 0.5 else Side.SELL,
                        f"t{serial}",
                    )
                )
            entry = TradesEntry(symbol, sorted(trades, key=lambda tr: tr.time_ms), t, t + 5)
            sent.append(entry)
        out.append(entry_encoder.encode(entry))
        if n % 10 == 0:
            out.append(entry_encoder.encode(ClockEntry(t + rng.randint(0, 30))))
        if n == messages // 2:
            out.append(entry_encoder.encode(GapEntry(symbols[:3], t - 2000, t - 500, "test")))
    out.append(entry_encoder.encode(ClockEntry(t + 400_000)))
    return out


def fill(client: redis.Redis, stream: str, entries: list[bytes]) -> bytes:
    last = b""
    for i in range(0, len(entries), 1000):
        pipe = client.pipeline(transaction=False)
        for data in entries[i : i + 1000]:
            pipe.xadd(stream, {STREAM_FIELD: data})
        last = pipe.execute()[-1]
    return last


def env(redis_url: str, prefix: str) -> dict[str, str]:
    return {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": prefix,
        "STREAMER_SHARDS": "1",
        "STREAMER_SHARD_IDS": "0",
        "STREAMER_KLINE_INTERVALS": "1s,1m,5m",
        "STREAMER_AGGREGATOR_BATCH": "5",
        "STREAMER_KLINE_REVISION_WINDOW_S": "5",
        "STREAMER_HISTORY_CANDLES": "100000",  # every candle of the run stays in the store
    }


def checkpoint_id(client: redis.Redis, keys: Keys, proc: Proc | None = None) -> str:
    if proc is not None and proc.popen.poll() is not None:
        raise AssertionError(f"aggregate exited {proc.popen.returncode}:\n{proc.output()}")
    raw = client.hget(keys.state(0), checkpoint.HEAD)
    return "" if raw is None else checkpoint.head_decoder.decode(raw).last_id


def _id(text: str) -> tuple[int, int]:
    ms, _, seq = text.partition("-")
    return int(ms), int(seq)


def klines(client: redis.Redis, keys: Keys) -> list[bytes]:
    return [fields[STREAM_FIELD] for _, fields in replies.entries(client.xrange(keys.klines(0)))]


@pytest.mark.e2e
def test_kill9_gives_the_same_candles_as_an_uninterrupted_run(
    redis_url: str, tmp_path: Path
) -> None:
    client = redis.Redis.from_url(redis_url)
    entries = prepared_entries(20_000)
    done: dict[str, str] = {}
    for prefix in ("calm", "killed"):
        done[prefix] = fill(client, Keys(prefix).trades(0), entries).decode()

    calm = Keys("calm")
    proc = python_module("aggregate", env=env(redis_url, "calm"), log_path=tmp_path / "calm.log")
    wait_until(
        lambda: checkpoint_id(client, calm, proc) == done["calm"], 60, "the calm run to finish"
    )
    proc.wait_output("aggregate started")
    assert proc.stop() == 0
    expected = klines(client, calm)
    assert len(expected) > 1000

    killed = Keys("killed")
    ids = [entry_id.decode() for entry_id, _ in replies.entries(client.xrange(killed.trades(0)))]
    kills = 0
    for share in (0.15, 0.4, 0.65, 0.9):
        proc = python_module(
            "aggregate", env=env(redis_url, "killed"), log_path=tmp_path / f"killed{kills}.log"
        )
        mark = _id(ids[int(share * len(ids))])
        wait_until(
            lambda mark=mark: _id(checkpoint_id(client, killed) or "0-0") >= mark,  # type: ignore[misc]  # default-bound lambda: waiting.py
            60,
            f"{share:.0%} of the stream",
        )
        if checkpoint_id(client, killed) != done["killed"]:
            proc.kill9()
            kills += 1
    proc = python_module("aggregate", env=env(redis_url, "killed"), log_path=tmp_path / "last.log")
    wait_until(lambda: checkpoint_id(client, killed, proc) == done["killed"], 60, "the resumed run")
    proc.wait_output("shard 0: resumed after")
    assert proc.stop() == 0
    assert kills >= 3
    got = klines(client, killed)
    assert got == expected
    views = [candle_view_decoder.decode(data) for data in got]
    assert any(v.revision > 0 for v in views)
    assert any(v.gap for v in views)
    keys = {(v.symbol, v.interval, v.timestamp, v.revision) for v in views}
    assert len(keys) == len(views)  # nothing emitted twice
    # The history store holds the latest revision of every candle, across the kills.
    intervals = parse_intervals(env(redis_url, "killed")["STREAMER_KLINE_INTERVALS"])
    assert stored(client, killed, intervals) == latest_revisions(got)
    assert stored(client, calm, intervals) == latest_revisions(expected)


def raw_client(redis_url: str) -> aioredis.Redis:
    """A client that takes XREAD replies raw, as the aggregator's own does."""
    client = aioredis.Redis.from_url(redis_url, socket_timeout=None)
    client.response_callbacks.pop("XREAD", None)
    return client


async def owned_worker(
    client: aioredis.Redis,
    keys: Keys,
    batch: int,
    klines_maxlen: int = 10**6,
    settings: AggregateSettings | None = None,
    *,
    shard: int = 0,
    together: DeadlineWrites | None = None,
) -> ShardAggregator:
    """A shard's aggregator (shard 0, 1s,1m unless told) holding its lease as "me", loaded."""
    settings = settings or AggregateSettings(kline_intervals="1s,1m")
    worker = ShardAggregator(
        client, keys, shard, core_config(settings), "linear", "me", batch, klines_maxlen, 1000,
        together=together,
    )  # fmt: skip
    await client.set(keys.lease("aggregate", shard), "me")
    await worker.load()
    return worker


def test_stale_owner_is_refused(redis_url: str) -> None:
    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("stale")
        for data in prepared_entries(300):
            await client.xadd(keys.trades(0), {STREAM_FIELD: data})
        worker = await owned_worker(client, keys, 1000, klines_maxlen=1000)
        assert await worker.step(block_ms=None) > 0
        written = await client.xlen(keys.klines(0))
        assert written > 0
        await client.set(keys.lease("aggregate", 0), "somebody-else")
        await client.xadd(
            keys.trades(0), {STREAM_FIELD: entry_encoder.encode(ClockEntry(START_MS + 600_000))}
        )
        with pytest.raises(LeaseLostError):
            await worker.step(block_ms=None)
        assert await client.xlen(keys.klines(0)) == written
        stop = asyncio.Event()
        await asyncio.wait_for(worker.run(stop), 10)  # returns: the shard stops by itself
        assert await client.xlen(keys.klines(0)) == written
        await client.aclose()

    asyncio.run(scenario())


def test_in_progress_snapshots_go_to_the_updates_stream(redis_url: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(redis_url)
    keys = Keys("live")
    last = fill(client, keys.trades(0), prepared_entries(2000)).decode()
    proc: Proc = python_module(
        "aggregate",
        env={**env(redis_url, "live"), "STREAMER_KLINE_UPDATES_MS": "500"},
        log_path=tmp_path / "live.log",
    )
    wait_until(lambda: checkpoint_id(client, keys, proc) == last, 30, "the run to finish")
    proc.wait_output("aggregate started")
    assert proc.stop() == 0
    updates = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for _, fields in replies.entries(client.xrange(keys.updates(0)))
    ]
    assert updates
    assert all(not u.closed and u.revision == 0 for u in updates)
    assert all(v.closed for v in map(candle_view_decoder.decode, klines(client, keys)))


def test_resume_replays_from_an_older_checkpoint(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only the first write carries a checkpoint; the resumed worker replays up to the head and
    goes on: the candle stream equals an uninterrupted run's."""

    async def run_worker(client: aioredis.Redis, keys: Keys, steps: int | None) -> None:
        worker = await owned_worker(client, keys, 40)
        done = 0
        while (steps is None or done < steps) and await worker.step(block_ms=None):
            done += 1

    async def scenario() -> None:
        client = raw_client(redis_url)
        entries = prepared_entries(1500)
        calm, resumed = Keys("calm"), Keys("resumed")
        for keys in (calm, resumed):
            for data in entries:
                await client.xadd(keys.trades(0), {STREAM_FIELD: data})
        await run_worker(client, calm, None)
        monkeypatch.setattr(checkpoint, "CHECKPOINT_EVERY_S", 3600.0)
        monkeypatch.setattr(checkpoint, "CHECKPOINT_MAX_S", 3600.0)
        await run_worker(client, resumed, 20)  # a checkpoint at the first write only
        head, saved = await client.hmget(resumed.state(0), [checkpoint.HEAD, checkpoint.CHECKPOINT])
        head_id = checkpoint.head_decoder.decode(replies.value(head)).last_id
        assert _id(checkpoint.decoder.decode(replies.value(saved)).last_id) < _id(head_id)
        assert await client.xlen(resumed.klines(0)) > 0
        await run_worker(client, resumed, None)
        got = [f[STREAM_FIELD] for _, f in replies.entries(await client.xrange(resumed.klines(0)))]
        want = [f[STREAM_FIELD] for _, f in replies.entries(await client.xrange(calm.klines(0)))]
        assert got == want
        await client.aclose()

    asyncio.run(scenario())


def test_a_version_1_checkpoint_gives_a_cold_start_after_its_id(redis_url: str) -> None:
    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("old")
        ids = [
            replies.value(await client.xadd(keys.trades(0), {STREAM_FIELD: d}))
            for d in prepared_entries(300)
        ]
        middle = ids[len(ids) // 2].decode()
        old = b'{"version":1,"config":"x","last_id":"%s","ids_from":"0-0","steps":[],"core":[]}'
        await client.set(keys.state(0), old % middle.encode())
        worker = await owned_worker(client, keys, 1000)
        assert worker.last_id == middle
        while await worker.step(block_ms=None):
            pass
        assert await client.type(keys.state(0)) == b"hash"
        head = checkpoint.head_decoder.decode(
            replies.value(await client.hget(keys.state(0), checkpoint.HEAD))
        )
        assert head.last_id == ids[-1].decode()
        assert await client.xlen(keys.klines(0)) > 0
        await client.aclose()

    asyncio.run(scenario())


def test_a_checkpoint_of_the_version_before_gives_a_cold_start_after_its_head(
    redis_url: str,
) -> None:
    """Version 5 added the open gap repairs to the state: a version 4 checkpoint is not
    resumed but gives a cold start after its head, as every other version does."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("v4")
        for data in prepared_entries(300):
            await client.xadd(keys.trades(0), {STREAM_FIELD: data})
        worker = await owned_worker(client, keys, 100)
        await worker.step(block_ms=None)
        await worker.write(full=True)
        saved = replies.value(await client.hget(keys.state(0), checkpoint.CHECKPOINT))
        assert saved.startswith(b'{"version":5,')
        await client.hset(keys.state(0), checkpoint.CHECKPOINT, b'{"version":4,' + saved[13:])
        head = checkpoint.head_decoder.decode(
            replies.value(await client.hget(keys.state(0), checkpoint.HEAD))
        )
        resumed = await owned_worker(client, keys, 100)
        assert resumed.last_id == head.last_id and resumed.core.state.symbols == {}
        assert worker.core.state.symbols  # what a resume would have had
        await client.aclose()

    asyncio.run(scenario())


def test_overlapped_steps_write_what_plain_steps_write(redis_url: str) -> None:
    """`step(overlap=True)`, as the service runs it (the next batch asked for before this one is
    aggregated, the write left in flight): the same candle stream and head as plain steps."""

    async def run_worker(client: aioredis.Redis, keys: Keys, overlap: bool) -> int:
        worker = await owned_worker(client, keys, 25)
        steps = 0
        while await worker.step(block_ms=None, overlap=overlap):
            steps += 1
        await worker.step(block_ms=None, overlap=overlap)
        await worker.drain()
        return steps

    async def scenario() -> None:
        client = raw_client(redis_url)
        plain, overlapped = Keys("plain"), Keys("overlapped")
        for keys in (plain, overlapped):
            for data in prepared_entries(1200):
                await client.xadd(keys.trades(0), {STREAM_FIELD: data})
        steps = await run_worker(client, plain, overlap=False)
        assert steps > 40  # many full batches: the prefetch path ran
        assert await run_worker(client, overlapped, overlap=True) == steps
        got = [
            f[STREAM_FIELD] for _, f in replies.entries(await client.xrange(overlapped.klines(0)))
        ]
        want = [f[STREAM_FIELD] for _, f in replies.entries(await client.xrange(plain.klines(0)))]
        assert len(want) > 100
        assert got == want
        stream_times = set()
        for keys in (plain, overlapped):
            head = checkpoint.head_decoder.decode(
                replies.value(await client.hget(keys.state(0), checkpoint.HEAD))
            )
            last = replies.entries(await client.xrevrange(keys.trades(0), count=1))[0][0].decode()
            assert head.last_id == last  # every entry's candles written
            stream_times.add(head.now_ms)
        assert len(stream_times) == 1
        await client.aclose()

    asyncio.run(scenario())


def test_a_step_with_no_backlog_returns_with_its_candles_written(redis_url: str) -> None:
    """As the service runs it (`overlap=True`), a step that read less than a full batch sends
    its write at once and returns when it is done: a boundary's shards do not leave their
    writes for after the other shards' work (they did: each went out on a later turn of the
    event loop). The candles are the ones the trades make, rendered ahead or not."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("nobacklog")
        worker = await owned_worker(client, keys, 1000)
        written: list[tuple[str, int, int]] = []
        worker._on_written = lambda candles, _wall, _stream: written.extend(
            (c.symbol, c.interval, c.open_ms) for c in candles
        )
        second = START_MS - START_MS % 1000
        entries = [
            TradesEntry("AAA", [Trade(second - 1500, "10.5", "1", Side.BUY, "a1")]),
            TradesEntry("AAA", [Trade(second - 400, "10.7", "2", Side.SELL, "a2")]),
            ClockEntry(second + 40),  # past the boundary: rendered ahead here
            ClockEntry(second + 80),  # the waiter deadline: the 1s candle [-1 s, 0) closes
        ]
        for entry in entries:
            await client.xadd(keys.trades(0), {STREAM_FIELD: entry_encoder.encode(entry)})
            assert await worker.step(block_ms=None, overlap=True) == 1
        assert written == [("AAA", 0, second - 1000)]  # reported by the write, done already
        [(_, fields)] = replies.entries(await client.xrange(keys.klines(0)))
        candle = candle_view_decoder.decode(fields[STREAM_FIELD])
        assert (candle.timestamp, candle.trade_count, str(candle.close)) == (
            second - 1000,
            1,
            "10.7",
        )
        await client.aclose()

    asyncio.run(scenario())


async def _step_through(
    worker: ShardAggregator, client: aioredis.Redis, entries: list[Any]
) -> None:
    """Each entry written to the worker's trade stream, then one step that reads it."""
    for entry in entries:
        stream = worker.keys.trades(worker.shard)
        await client.xadd(stream, {STREAM_FIELD: entry_encoder.encode(entry)})
        assert await worker.step(block_ms=None, overlap=True) == 1


def _klines_at_close(worker: ShardAggregator, probe: redis.Redis) -> list[int]:
    """Makes the core's clock note how many entries the candle stream holds when it runs."""
    seen: list[int] = []
    clock = worker.core.clock

    def probed_clock(time_ms: int) -> None:
        seen.append(probe.xlen(worker.keys.klines(0)))
        clock(time_ms)

    worker.core.clock = probed_clock  # type: ignore[method-assign]
    return seen


def test_a_deadline_write_goes_out_before_the_core_closes_its_candles(redis_url: str) -> None:
    """At a waiter deadline whose candles the core knows ahead (CandleCore.closes_at), the
    step writes them first and the core closes them after: when the close runs, the candles
    are in the candle stream already, and it writes nothing more. Two symbols past their
    first (partial) candles; their 1s candles [-1 s, 0) close at the deadline (the 1m
    candles are partial), with the trades' values."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        probe = redis.Redis.from_url(redis_url)
        keys = Keys("ahead")
        worker = await owned_worker(client, keys, 1000)
        second = START_MS - START_MS % 1000
        entries = [
            TradesEntry("AAA", [Trade(second - 2500, "10.5", "1", Side.BUY, "a1")]),
            TradesEntry("BBB", [Trade(second - 2400, "20", "1", Side.BUY, "b1")]),
            TradesEntry("AAA", [Trade(second - 700, "10.9", "2", Side.SELL, "a2")]),
            TradesEntry("AAA", [Trade(second - 400, "10.7", "3", Side.BUY, "a3")]),
            ClockEntry(second + 40),  # past the boundary: previewed here
        ]
        await _step_through(worker, client, entries)
        before = probe.xlen(keys.klines(0))
        in_stream_at_close = _klines_at_close(worker, probe)
        deadline = ClockEntry(second + 80)
        await client.xadd(keys.trades(0), {STREAM_FIELD: entry_encoder.encode(deadline)})
        assert await worker.step(block_ms=None, overlap=True) == 1
        assert in_stream_at_close == [before + 2]  # both candles written before the close
        assert worker._pending == []
        closed = [
            candle_view_decoder.decode(fields[STREAM_FIELD])
            for _, fields in replies.entries(await client.xrange(keys.klines(0)))
        ][before:]
        # AAA: Bybit's open is the previous close (10.5); trades 10.9 and 10.7, 5 in all.
        # BBB: no trade, flat at 20.
        assert [
            (c.symbol, c.timestamp, str(c.open), str(c.high), str(c.low), str(c.close),
             str(c.volume), c.trade_count)
            for c in closed
        ] == [
            ("AAA", second - 1000, "10.5", "10.9", "10.5", "10.7", "5", 2),
            ("BBB", second - 1000, "20", "20", "20", "20", "0", 0),
        ]  # fmt: skip
        raw_head = await client.hget(keys.state(0), checkpoint.HEAD)
        assert isinstance(raw_head, bytes)
        head = checkpoint.head_decoder.decode(raw_head)
        assert head.last_id == worker.last_id  # the deadline's entry: covered by the write
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


async def _past_a_boundary(
    worker: ShardAggregator, client: aioredis.Redis, others: tuple[str, ...] = ("BBB",)
) -> int:
    """AAA and `others` (BBB at 20, CCC at 30) past their first (partial) candles, each step
    read, up to 40 ms past the boundary `second` (returned): their 1s candles [-1 s, 0) are
    previewed, their waiter deadline is `second` + 80."""
    second = START_MS - START_MS % 1000
    entries: list[Any] = [TradesEntry("AAA", [Trade(second - 2500, "10.5", "1", Side.BUY, "a1")])]
    for k, symbol in enumerate(others):
        trade = Trade(second - 2400 + 100 * k, str(20 + 10 * k), "1", Side.BUY, f"{symbol[0]}1")
        entries.append(TradesEntry(symbol, [trade]))
    entries += [
        TradesEntry("AAA", [Trade(second - 400, "10.7", "3", Side.BUY, "a3")]),
        ClockEntry(second + 40),
    ]
    await _step_through(worker, client, entries)
    return second


async def _at_a_deadline(worker: ShardAggregator, client: aioredis.Redis) -> int:
    """As `_past_a_boundary`, and the deadline's clock entry written (not read yet)."""
    second = await _past_a_boundary(worker, client)
    deadline = ClockEntry(second + 80)
    await client.xadd(worker.keys.trades(0), {STREAM_FIELD: entry_encoder.encode(deadline)})
    return second


async def _a_deadline_to_read(
    redis_url: str, keys: Keys
) -> tuple[aioredis.Redis, redis.Redis, ShardAggregator, int]:
    """A raw client, a probe, shard 0's aggregator (1s,1m) `_at_a_deadline`, and its second."""
    client = raw_client(redis_url)
    worker = await owned_worker(client, keys, 1000)
    return client, redis.Redis.from_url(redis_url), worker, await _at_a_deadline(worker, client)


def _deadline_candles(store: dict[Any, bytes], second: int) -> list[bytes]:
    return [
        raw for (_, label, ts), raw in sorted(store.items()) if (label, ts) == ("1s", second - 1000)
    ]


def test_a_deadline_stores_its_candles_after_writing_them(redis_url: str) -> None:
    """A waiter deadline's candles go to the candle stream alone (Redis serves them to their
    readers without the store's work), with the state's `unstored` mark naming the first; the
    store gets them after the close, and the mark goes."""

    async def scenario() -> None:
        client, probe, worker, second = await _a_deadline_to_read(redis_url, Keys("later"))
        keys, intervals = worker.keys, parse_intervals("1s,1m")
        before = probe.xlen(keys.klines(0))
        at_close: list[tuple[int, int, bytes | None]] = []
        clock = worker.core.clock

        def probed_clock(time_ms: int) -> None:
            deadline = _deadline_candles(stored(probe, keys, intervals), second)
            mark: Any = probe.hget(keys.state(0), "unstored")
            at_close.append((probe.xlen(keys.klines(0)) - before, len(deadline), mark))
            clock(time_ms)

        worker.core.clock = probed_clock  # type: ignore[method-assign]
        assert await worker.step(block_ms=None, overlap=True) == 1
        first = replies.entries(probe.xrange(keys.klines(0)))[before][0]
        assert at_close == [(2, 0, first)]  # in the stream, not stored, marked
        written = [f[STREAM_FIELD] for _, f in replies.entries(probe.xrange(keys.klines(0)))]
        assert len(_deadline_candles(stored(probe, keys, intervals), second)) == 2
        assert stored(probe, keys, intervals) == latest_revisions(written)
        assert probe.hget(keys.state(0), "unstored") is None
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_resume_stores_the_candles_a_deadline_left_unstored(redis_url: str) -> None:
    """A process that stops between a deadline's write and its store (kill -9 there) leaves the
    mark; the next one to load the shard stores those candles first, once."""

    async def scenario() -> None:
        client, probe, worker, second = await _a_deadline_to_read(redis_url, Keys("stopped"))
        keys, intervals = worker.keys, parse_intervals("1s,1m")

        async def killed_first(_write: Any) -> None:
            return None

        worker._store = killed_first  # type: ignore[method-assign,assignment]
        assert await worker.step(block_ms=None, overlap=True) == 1
        assert probe.hget(keys.state(0), "unstored") is not None
        assert _deadline_candles(stored(probe, keys, intervals), second) == []
        written = [f[STREAM_FIELD] for _, f in replies.entries(probe.xrange(keys.klines(0)))]
        await owned_worker(client, keys, 1000)  # the next process
        assert stored(probe, keys, intervals) == latest_revisions(written)
        assert len(_deadline_candles(stored(probe, keys, intervals), second)) == 2
        assert probe.hget(keys.state(0), "unstored") is None
        assert probe.xlen(keys.klines(0)) == len(written)  # nothing written twice
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


async def _read_with_the_deadline(
    worker: ShardAggregator, probe: redis.Redis, entries: list[Any]
) -> tuple[list[int], list[CandleView]]:
    """`entries` written to the trade stream and taken in by one step: how many candles the
    candle stream held when the core closed the deadline, beyond those before, and the
    candles written by the step."""
    client, stream = worker.redis, worker.keys.trades(worker.shard)
    before = probe.xlen(worker.keys.klines(0))
    in_stream_at_close = _klines_at_close(worker, probe)
    for entry in entries:
        await client.xadd(stream, {STREAM_FIELD: entry_encoder.encode(entry)})
    assert await worker.step(block_ms=None, overlap=True) == len(entries)
    closed = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for _, fields in replies.entries(await client.xrange(worker.keys.klines(0)))
    ][before:]
    return [n - before for n in in_stream_at_close], closed


def test_a_deadline_read_with_trades_before_it_writes_both_before_the_close(
    redis_url: str,
) -> None:
    """The deadline's clock entry read together with a trade entry before it (ingest queues
    the clock entry behind what it received): the trade goes into the core first (here it
    closes BBB's candle early: a trade past its end), then one write holds BBB's candle and
    the deadline's, in that order, before the core closes the deadline's."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        probe = redis.Redis.from_url(redis_url)
        keys = Keys("ahead2")
        worker = await owned_worker(client, keys, 1000)
        second = await _past_a_boundary(worker, client)
        in_stream_at_close, closed = await _read_with_the_deadline(
            worker,
            probe,
            [
                TradesEntry("BBB", [Trade(second + 50, "21", "2", Side.SELL, "b2")]),
                ClockEntry(second + 80),
            ],
        )
        assert in_stream_at_close == [2]
        assert [(c.symbol, c.timestamp, str(c.close), c.trade_count) for c in closed] == [
            ("BBB", second - 1000, "20", 0),
            ("AAA", second - 1000, "10.7", 1),
        ]
        [(newest, _)] = replies.entries(await client.xrevrange(keys.trades(0), count=1))
        assert worker.last_id == newest.decode()
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_deadline_read_with_trades_after_it_still_writes_before_the_close(
    redis_url: str,
) -> None:
    """The deadline's clock entry read together with a trade received after it (at 5,000
    trades/s a deadline's read often brings one): the deadline's candles still go out ahead of
    the close (they were closed first and written after), and the trade after it is taken in
    after them: it opens AAA's next candle and closes nothing."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        probe = redis.Redis.from_url(redis_url)
        keys = Keys("ahead3")
        worker = await owned_worker(client, keys, 1000)
        second = await _past_a_boundary(worker, client)
        in_stream_at_close, closed = await _read_with_the_deadline(
            worker,
            probe,
            [
                ClockEntry(second + 80),
                TradesEntry("AAA", [Trade(second + 85, "10.8", "4", Side.BUY, "a4")]),
            ],
        )
        assert in_stream_at_close == [2]  # the deadline's two, before its close
        assert [(c.symbol, c.timestamp, str(c.close), c.trade_count) for c in closed] == [
            ("AAA", second - 1000, "10.7", 1),
            ("BBB", second - 1000, "20", 0),
        ]
        [(newest, _), (deadline, _)] = replies.entries(
            await client.xrevrange(keys.trades(0), count=2)
        )
        assert worker.last_id == newest.decode()  # the trade after the deadline: read
        assert worker._pending == []
        raw_head = await client.hget(keys.state(0), checkpoint.HEAD)
        assert isinstance(raw_head, bytes)  # the write covered the deadline's entry
        assert checkpoint.head_decoder.decode(raw_head).last_id == deadline.decode()
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_candle_closed_early_just_before_its_deadline_is_written_with_it(
    redis_url: str,
) -> None:
    """A candle closed early within the last HOLD_MS of stream time before the waiter deadline
    (AAA trades again 65 ms past the boundary, the deadline at 80) waits for the deadline's
    write and goes out in it, with CCC's, which the deadline closes; one closed earlier (BBB,
    30 ms past: stream time is 40 there) is written at once."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        probe = redis.Redis.from_url(redis_url)
        keys = Keys("held")
        worker = await owned_worker(client, keys, 1000)
        second = await _past_a_boundary(worker, client, ("BBB", "CCC"))
        assert HOLD_MS == 20
        before = probe.xlen(keys.klines(0))
        await _step_through(
            worker, client, [TradesEntry("BBB", [Trade(second + 30, "21", "2", Side.SELL, "b2")])]
        )
        assert probe.xlen(keys.klines(0)) == before + 1  # BBB's candle: at once
        await _step_through(
            worker, client, [TradesEntry("AAA", [Trade(second + 65, "10.8", "4", Side.BUY, "a4")])]
        )
        assert probe.xlen(keys.klines(0)) == before + 1  # AAA's: held
        held = [(c.symbol, c.open_ms) for c in worker._pending]
        assert held == [("AAA", second - 1000)]
        in_stream_at_close = _klines_at_close(worker, probe)
        await _step_through(worker, client, [ClockEntry(second + 80)])
        # Written ahead of the close, in one write with CCC's, which the deadline closes.
        assert in_stream_at_close == [before + 3]
        closed = [
            candle_view_decoder.decode(fields[STREAM_FIELD])
            for _, fields in replies.entries(await client.xrange(keys.klines(0)))
        ][before:]
        assert [(c.symbol, c.timestamp, str(c.close), c.trade_count) for c in closed] == [
            ("BBB", second - 1000, "20", 0),
            ("AAA", second - 1000, "10.7", 1),
            ("CCC", second - 1000, "30", 0),
        ]
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_held_candle_is_written_when_the_stream_goes_quiet(redis_url: str) -> None:
    """Held for its deadline, and then the stream has nothing more (ingest stopped): the next
    read that comes back empty writes it."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        probe = redis.Redis.from_url(redis_url)
        keys = Keys("quiet")
        worker = await owned_worker(client, keys, 1000)
        second = await _past_a_boundary(worker, client)
        before = probe.xlen(keys.klines(0))
        await _step_through(
            worker, client, [TradesEntry("AAA", [Trade(second + 70, "10.8", "4", Side.BUY, "a4")])]
        )
        assert probe.xlen(keys.klines(0)) == before  # held
        assert await worker.step(block_ms=1, overlap=True) == 0
        [(_, fields)] = replies.entries(await client.xrange(keys.klines(0)))[before:]
        candle = candle_view_decoder.decode(fields[STREAM_FIELD])
        assert (candle.symbol, candle.timestamp, str(candle.close)) == (
            "AAA",
            second - 1000,
            "10.7",
        )
        assert worker._pending == []
        probe.close()
        await client.aclose()

    asyncio.run(scenario())


def test_a_close_that_contradicts_its_write_ahead_writes_only_what_it_emitted(
    redis_url: str,
) -> None:
    """If the close ever emitted other candles than those written ahead (a bug: here
    CandleCore.closes_at is made to leave BBB out), it is counted and the close's candles are
    written next; CCC's candle, closed by the trade read with the deadline and written ahead
    with AAA's, is not written a second time."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("mismatch")
        worker = await owned_worker(client, keys, 1000)
        second = START_MS - START_MS % 1000
        entries = [
            TradesEntry("AAA", [Trade(second - 2500, "10.5", "1", Side.BUY, "a1")]),
            TradesEntry("BBB", [Trade(second - 2400, "20", "1", Side.BUY, "b1")]),
            TradesEntry("CCC", [Trade(second - 2300, "30", "1", Side.BUY, "c1")]),
            TradesEntry("AAA", [Trade(second - 400, "10.7", "3", Side.BUY, "a3")]),
            ClockEntry(second + 40),
        ]
        await _step_through(worker, client, entries)
        before = len(replies.entries(await client.xrange(keys.klines(0))))
        closes_at = worker.core.closes_at

        def leaves_bbb_out(time_ms: int) -> list[CoreCandle] | None:
            candles = closes_at(time_ms)
            return None if candles is None else [c for c in candles if c.symbol != "BBB"]

        worker.core.closes_at = leaves_bbb_out  # type: ignore[method-assign]
        mismatches = shard_module.AHEAD_MISMATCH.get("0")
        together = [
            TradesEntry("CCC", [Trade(second + 50, "31", "2", Side.SELL, "c2")]),
            ClockEntry(second + 80),
        ]
        for entry in together:
            await client.xadd(keys.trades(0), {STREAM_FIELD: entry_encoder.encode(entry)})
        assert await worker.step(block_ms=None, overlap=True) == 2
        assert shard_module.AHEAD_MISMATCH.get("0") == mismatches + 1
        assert await worker.step(block_ms=None, overlap=True) == 0  # writes what is pending
        written = [
            candle_view_decoder.decode(fields[STREAM_FIELD])
            for _, fields in replies.entries(await client.xrange(keys.klines(0)))
        ][before:]
        assert [(c.symbol, c.timestamp, str(c.close)) for c in written] == [
            ("CCC", second - 1000, "30"),  # closed early by c2, written ahead with AAA's
            ("AAA", second - 1000, "10.7"),  # written ahead
            ("AAA", second - 1000, "10.7"),  # the close's output, written next
            ("BBB", second - 1000, "20"),
        ]
        assert worker._pending == []
        await client.aclose()

    asyncio.run(scenario())


def test_the_close_of_an_old_deadline_does_not_wait(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deadline written ahead closes CLOSE_AFTER_S after its write only when it is live: one
    of a replayed or caught-up stream (its clock entry older than LIVE_MS) closes at once, or a
    day of 1s candles would wait 86,400 times. Here the wait is made an hour long: a step of an
    old deadline must still end at once."""
    monkeypatch.setattr(shard_module, "CLOSE_AFTER_S", 3600.0)

    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("oldahead")
        worker = await owned_worker(client, keys, 1000)
        second = START_MS - START_MS % 1000  # months before now
        entries = [
            TradesEntry("AAA", [Trade(second - 2500, "10.5", "1", Side.BUY, "a1")]),
            TradesEntry("AAA", [Trade(second - 400, "10.7", "3", Side.BUY, "a3")]),
            ClockEntry(second + 40),
            ClockEntry(second + 80),
        ]
        for entry in entries:
            await client.xadd(keys.trades(0), {STREAM_FIELD: entry_encoder.encode(entry)})
            assert await asyncio.wait_for(worker.step(block_ms=None, overlap=True), 10) == 1
        *_, (_, fields) = replies.entries(await client.xrange(keys.klines(0)))
        candle = candle_view_decoder.decode(fields[STREAM_FIELD])  # the deadline's, written
        assert (candle.timestamp, str(candle.close)) == (second - 1000, "10.7")
        assert worker._pending == [] and second + 80 not in worker.core.state.due  # and closed
        await client.aclose()

    asyncio.run(scenario())


def test_a_live_shard_reads_lazily_only_while_no_candle_of_it_can_close(redis_url: str) -> None:
    """Between a waiter deadline and the next boundary nothing a shard reads closes a candle:
    a live shard that has caught up waits up to LAZY_MS before its next read there, and not at
    all from the boundary until its deadline, in a backlog, behind the wall clock (a catch-up)
    or with in-progress updates. AAA's candle [M - 1 min, M) closes at M + 80 ms (1m only)."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        minute = START_MS - START_MS % 60_000
        entries = [
            TradesEntry("AAA", [Trade(minute - 90_000, "10", "1", Side.BUY, "a1")]),
            TradesEntry("AAA", [Trade(minute - 30_000, "11", "1", Side.BUY, "a2")]),
            ClockEntry(minute - 20_000),
        ]
        lazy = shard_module.LAZY_MS / 1000
        workers = {}
        for updates_ms in (0, 1000):
            settings = AggregateSettings(kline_intervals="1m", kline_updates_ms=updates_ms)
            worker = await owned_worker(client, Keys(f"lazy{updates_ms}"), 1000, settings=settings)
            await _step_through(worker, client, entries)
            assert worker.core.state.deadlines[0] == minute + 80
            workers[updates_ms] = worker
        worker = workers[0]
        assert worker._lazy_s(1, minute - 20_000) == lazy  # live, caught up, far from M
        assert workers[1000]._lazy_s(1, minute - 20_000) == 0.0  # in-progress updates
        assert worker._lazy_s(1000, minute - 20_000) == 0.0  # a full read: a backlog
        behind = minute - 20_000 + shard_module.LIVE_MS + 1
        assert worker._lazy_s(1, behind) == 0.0  # the stream is behind the wall clock
        await _step_through(worker, client, [ClockEntry(minute - 40)])
        assert worker._lazy_s(1, minute - 30) == pytest.approx(0.030)  # until the boundary
        assert worker._lazy_s(1, minute + 10) == 0.0  # between the boundary and the deadline
        await client.aclose()

    asyncio.run(scenario())


def test_a_caught_up_live_shard_reads_once_per_lazy_wait(redis_url: str) -> None:
    """A clock entry every 2 ms, stamped with the wall clock, far from a boundary (1d candles):
    the running shard reads them a lazy wait's worth at a time, not one read each, and still
    reads every one. Without the wait: about one XREAD per entry."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        keys = Keys("lazyrun")
        settings = AggregateSettings(kline_intervals="1d")
        worker = await owned_worker(client, keys, 1000, settings=settings)
        now = int(time.time() * 1000)
        first = await client.xadd(
            keys.trades(0),
            {STREAM_FIELD: entry_encoder.encode(
                TradesEntry("AAA", [Trade(now, "10", "1", Side.BUY, "a1")]))},
        )  # fmt: skip
        stop = asyncio.Event()
        task = asyncio.create_task(worker.run(stop))

        async def read(entry_id: str) -> bool:
            return worker.last_id == entry_id

        await async_wait_until(lambda: read(replies.value(first).decode()), 10)
        reads_before = (await client.info("commandstats"))["cmdstat_xread"]["calls"]
        last = first
        for _ in range(150):
            clock = ClockEntry(int(time.time() * 1000))
            last = await client.xadd(keys.trades(0), {STREAM_FIELD: entry_encoder.encode(clock)})
            await asyncio.sleep(0.002)  # the producer's pace, not a wait for the worker
        await async_wait_until(lambda: read(replies.value(last).decode()), 10)
        reads = (await client.info("commandstats"))["cmdstat_xread"]["calls"] - reads_before
        stop.set()
        await asyncio.wait_for(task, 10)
        elapsed_waits = 150 * 0.002 / (shard_module.LAZY_MS / 1000)
        assert reads <= 4 * elapsed_waits + 10, reads  # not ~150
        await client.aclose()

    asyncio.run(scenario())


@contextlib.contextmanager
def _monitored(redis_url: str) -> Iterator[list[tuple[str, str]]]:
    """Every command Redis runs meanwhile, as (client address, command), from MONITOR."""
    seen: list[tuple[str, str]] = []
    marker = f"monitored-until-{random.getrandbits(64)}"
    listening = threading.Event()

    def listen() -> None:
        with redis.Redis.from_url(redis_url).monitor() as monitor:  # type: ignore[no-untyped-call]
            listening.set()
            while marker not in (command := monitor.next_command())["command"]:
                seen.append((f"{command['client_address']}:{command['client_port']}",
                             command["command"]))  # fmt: skip

    thread = threading.Thread(target=listen, daemon=True)
    thread.start()
    assert listening.wait(10)
    yield seen
    with redis.Redis.from_url(redis_url) as client:
        client.echo(marker)
    thread.join(10)
    assert not thread.is_alive()


async def _two_shards_at_a_deadline(
    redis_url: str, keys: Keys, before_it: Callable[[aioredis.Redis], Awaitable[Any]]
) -> tuple[list[int | BaseException], list[str], int]:
    """Shards 0 and 1 of one process (one `DeadlineWrites`) past a boundary and blocked in
    their reads, `before_it` done, then the deadline's clock entry written to both at once, as
    ingest does: what their steps gave, the connection each write script came from, in the
    order Redis ran them, and the second. The event loop is held (synchronous calls) until
    Redis has answered both reads, so that it finds both replies together, as the process
    does when Redis sends them microseconds apart."""
    client = raw_client(redis_url)
    probe = redis.Redis.from_url(redis_url)
    together = DeadlineWrites(client, client.register_script(checkpoint.WRITE_LUA))
    workers = [await owned_worker(client, keys, 1000, shard=k, together=together) for k in (0, 1)]
    seconds = [await _past_a_boundary(worker, client) for worker in workers]
    await before_it(client)
    sha = client.register_script(checkpoint.WRITE_LUA).sha

    def blocked() -> int:
        clients: dict[str, int] = probe.info("clients")
        return clients["blocked_clients"]

    with _monitored(redis_url) as seen:
        steps = [asyncio.ensure_future(w.step(block_ms=10_000, overlap=True)) for w in workers]

        async def both_blocked() -> bool:
            return blocked() == 2

        await async_wait_until(both_blocked, what="both shards blocked in their reads")
        deadline = entry_encoder.encode(ClockEntry(seconds[0] + 80))
        with probe.pipeline(transaction=True) as pipe:
            for worker in workers:
                pipe.xadd(keys.trades(worker.shard), {STREAM_FIELD: deadline})
            pipe.execute()
        wait_until(lambda: blocked() == 0, what="both reads answered")
        outcomes = await asyncio.gather(*steps, return_exceptions=True)
    probe.close()
    await client.aclose()
    return outcomes, [who for who, command in seen if sha in command], seconds[0]


def _closed_at(client: redis.Redis, keys: Keys, shard: int) -> list[tuple[str, int, str, str]]:
    """(symbol, open time, close, volume) of the closed candles in a shard's candle stream."""
    views = [
        candle_view_decoder.decode(fields[STREAM_FIELD])
        for _, fields in replies.entries(client.xrange(keys.klines(shard)))
    ]
    return [(v.symbol, v.timestamp, str(v.close), str(v.volume)) for v in views if v.closed]


def test_a_deadlines_writes_of_a_process_s_shards_go_to_redis_together(redis_url: str) -> None:
    """The shards of one process whose reads of a deadline's clock entry come back together
    send its writes in one pipeline on one connection (aggregate.together): Redis runs them
    back to back, and each shard's candles are its own. From `_past_a_boundary`'s trades: AAA
    closes at 10.7 with volume 3, BBB (no trade in the second) flat at 20."""

    async def nothing(_client: aioredis.Redis) -> None:
        return None

    keys = Keys("together")
    outcomes, writers, second = asyncio.run(_two_shards_at_a_deadline(redis_url, keys, nothing))
    assert outcomes == [1, 1]
    assert len(writers) == 2 and writers[0] == writers[1]  # one connection, one after the other
    client = redis.Redis.from_url(redis_url)
    for shard in (0, 1):
        assert _closed_at(client, keys, shard)[-2:] == [
            ("AAA", second - 1000, "10.7", "3"),
            ("BBB", second - 1000, "20", "0"),
        ]
    client.close()


def test_a_lost_lease_refuses_only_its_own_write_of_those_sent_together(redis_url: str) -> None:
    """Shard 1's lease taken over before the deadline: its write, sent with shard 0's, is
    refused and its worker learns it (LeaseLostError); shard 0's candles are written."""
    keys = Keys("together-lease")

    async def taken_over(client: aioredis.Redis) -> None:
        await client.set(keys.lease("aggregate", 1), "somebody-else")

    client = redis.Redis.from_url(redis_url)
    outcomes, writers, second = asyncio.run(_two_shards_at_a_deadline(redis_url, keys, taken_over))
    assert outcomes[0] == 1 and isinstance(outcomes[1], LeaseLostError)
    assert len(writers) == 2 and writers[0] == writers[1]
    assert _closed_at(client, keys, 0)[-2:] == [
        ("AAA", second - 1000, "10.7", "3"),
        ("BBB", second - 1000, "20", "0"),
    ]
    assert [c for c in _closed_at(client, keys, 1) if c[1] == second - 1000] == []
    client.close()


def test_writes_sent_together_to_a_redis_without_their_script_land_once(redis_url: str) -> None:
    """Redis lost its scripts (SCRIPT FLUSH, as a restart does) before the deadline: the
    writes sent together are refused before they run (NOSCRIPT), sent again with the script
    loaded, and each shard's candles are in its stream once."""
    keys = Keys("together-noscript")

    async def flushed(client: aioredis.Redis) -> None:
        await client.script_flush()

    client = redis.Redis.from_url(redis_url)
    outcomes, _, second = asyncio.run(_two_shards_at_a_deadline(redis_url, keys, flushed))
    assert outcomes == [1, 1]
    for shard in (0, 1):
        assert [c for c in _closed_at(client, keys, shard) if c[1] == second - 1000] == [
            ("AAA", second - 1000, "10.7", "3"),
            ("BBB", second - 1000, "20", "0"),
        ]
    client.close()


def test_a_write_whose_shard_was_cancelled_before_it_left_is_not_sent(redis_url: str) -> None:
    """Two calls of one turn (DeadlineWrites), the second one's task cancelled (its shard
    stopped) before they leave: only the first runs."""

    async def scenario() -> None:
        client = raw_client(redis_url)
        together = DeadlineWrites(
            client, client.register_script("return redis.call('INCR', KEYS[1])")
        )
        first = asyncio.ensure_future(together.call(["first"], []))
        second = asyncio.ensure_future(together.call(["second"], []))
        await asyncio.sleep(0)  # both asked for, neither sent (a call waits for the next turns)
        second.cancel()
        assert await first == 1
        assert second.cancelled()
        assert (await client.get("first"), await client.get("second")) == (b"1", None)
        await client.aclose()

    asyncio.run(scenario())
