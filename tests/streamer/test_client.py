"""`streamer.client.CandleReader` against the real pipeline: simulator (late deliveries, so
candles get revisions) → ingest → aggregate on a real redis-server, candle streams trimmed short.

One reader name, three runs: it is closed cleanly and started again (it must go on where it
stopped: nothing missed, nothing twice), then closed while the streams are trimmed past its
position (it must fill the hole from the history store), and it reads on until the exchange
stops. What it handed out, applied as it says (`replaces` = upsert), must equal the simulator's
ledger (Decimal reference, tests/support/expected.py) and the candle streams' last revisions.
"""

from __future__ import annotations

import asyncio
import collections
import json
from decimal import Decimal
from pathlib import Path

import pytest

from common.wire import CandleView
from streamer.client import CandleReader, Read
from tests.support import replies
from tests.support.expected import Key, check_series
from tests.support.pipeline import Pipeline, latest, start_pipeline
from tests.support.waiting import async_wait_until, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

NAME = "test-reader"


def read_some(pipe: Pipeline, count: int) -> tuple[list[Read], CandleReader]:
    """Start the reader, take `count` candles, leave it as a user's loop does (break)."""

    async def go() -> tuple[list[Read], CandleReader]:
        got: list[Read] = []
        reader = CandleReader.from_url(pipe.redis_url, NAME, start="earliest", block_ms=200)
        async with reader:
            async for read in reader:
                got.append(read)
                if len(got) == count:
                    break
        return got, reader

    return asyncio.run(go())


def read_to_the_end(pipe: Pipeline) -> tuple[list[Read], CandleReader]:
    """Read until the reader's position is every stream's last entry."""
    client = pipe.client()
    heads = {}
    for shard in range(pipe.shards):
        last = replies.entries(client.xrevrange(pipe.keys.klines(shard), count=1))
        heads[shard] = last[0][0].decode()
    client.close()

    async def go() -> tuple[list[Read], CandleReader]:
        got: list[Read] = []
        reader = CandleReader.from_url(pipe.redis_url, NAME, start="earliest", block_ms=100)

        async def caught_up() -> bool:
            return {k: p for k, (p, _) in reader.positions.items()} == heads

        async def watch() -> None:
            await async_wait_until(caught_up, 60, "the reader at the streams' end")
            reader.stop()

        async with reader:
            watcher = asyncio.create_task(watch())
            async with asyncio.timeout(60):
                async for read in reader:
                    got.append(read)
            await watcher
        return got, reader

    return asyncio.run(go())


def stored_position(pipe: Pipeline, shard: int) -> bytes:
    client = pipe.client()
    try:
        return replies.value(client.hget(pipe.keys.reader_position(NAME, shard), "id"))
    finally:
        client.close()


def entry_after(pipe: Pipeline, shard: int, position: bytes) -> bytes | None:
    client = pipe.client()
    try:
        after = replies.entries(client.xrange(pipe.keys.klines(shard), b"(" + position, count=1))
        return after[0][0] if after else None
    finally:
        client.close()


def trimmed_past(pipe: Pipeline, shard: int, entry_id: bytes) -> bool:
    """The entry is gone: the first one left is after it."""
    client = pipe.client()
    try:
        first = replies.entries(client.xrange(pipe.keys.klines(shard), count=1))
        return bool(first) and _id(first[0][0]) > _id(entry_id)
    finally:
        client.close()


def _id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


def aggregated_all(pipe: Pipeline) -> bool:
    """The aggregator has written the candles of every entry of the trade streams."""
    client = pipe.client()
    try:
        for shard in range(pipe.shards):
            last = replies.entries(client.xrevrange(pipe.keys.trades(shard), count=1))
            head = replies.maybe(client.hget(pipe.keys.state(shard), "head"))
            if last and (head is None or json.loads(head)["last_id"] != last[0][0].decode()):
                return False
        return True
    finally:
        client.close()


def apply(
    reads: list[Read], held: dict[Key, CandleView], *, fill: bool = False
) -> collections.Counter[str]:
    """Apply reads as the reader says; count what kind each was. A candle not flagged
    `replaces` must be new; a flagged one is a revision of what is held, or (only where the
    store filled a hole: `fill`) a candle the reader may have handed out before."""
    kinds: collections.Counter[str] = collections.Counter()
    for candle, replaces in reads:
        key = (candle.symbol, candle.interval, candle.timestamp)
        before = held.get(key)
        if not replaces:
            assert before is None, f"handed out twice, not flagged: {candle}"
            kinds["new"] += 1
        elif before is None:
            assert candle.revision > 0 or fill, f"flagged replaces, but nothing held: {candle}"
            kinds["flagged, not held"] += 1
        elif before.revision == candle.revision:
            assert before == candle and fill, (before, candle)
            kinds["the same again (fill)"] += 1
        else:
            assert candle.revision > before.revision, (before, candle)
            kinds["revision"] += 1
        held[key] = candle
    return kinds


def test_restart_trim_fill_and_revisions_against_the_ledger(tmp_path: Path, redis_url: str) -> None:
    pipe = start_pipeline(
        tmp_path, redis_url,
        ("--symbols", "60", "--rate", "600", "--quiet-fraction", "0",
         "--delay", "uniform:0:400", "--delay-rate", "0.2"),
        shards=2, intervals="1s,2s", STREAMER_KLINES_MAXLEN="1000",
    )  # fmt: skip
    try:
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        wait_until(lambda: len(pipe.stream_candles()) > 400, 60, "candles in the streams")
        held: dict[Key, CandleView] = {}

        first, reader = read_some(pipe, 300)
        kinds = apply(first, held)
        assert kinds["new"] > 100 and reader.fills == []
        # Started again: it goes on where it stopped (nothing missed, nothing twice: `apply`
        # refuses an unflagged candle it holds; the ledger check below finds any missing).
        again, reader = read_some(pipe, 300)
        kinds = apply(again, held)
        assert kinds["new"] > 100 and reader.fills == []
        before_stop = {k: stored_position(pipe, k) for k in range(pipe.shards)}

        # Away while the streams are trimmed past its position (MAXLEN ~1000 entries a shard):
        # an entry written after the position is gone before it comes back.
        for shard, position in before_stop.items():
            after = wait_until(
                lambda s=shard, p=position: entry_after(pipe, s, p),  # type: ignore[misc]  # default-bound lambda: waiting.py
                30,
                f"an entry after the reader's position in shard {shard}",
            )
            wait_until(lambda s=shard, a=after: trimmed_past(pipe, s, a), 60,  # type: ignore[misc]  # default-bound lambda: waiting.py
                       f"shard {shard} trimmed past the reader")  # fmt: skip
        assert pipe.sim.proc.stop() == 0
        assert pipe.procs["ingest"].stop() == 0
        wait_until(lambda: aggregated_all(pipe), 60, "the aggregator at the trade streams' end")
        assert pipe.procs["aggregate"].stop() == 0

        rest, reader = read_to_the_end(pipe)
        assert {f.shard for f in reader.fills} == set(range(pipe.shards)), reader.fills
        assert all(f.candles > 0 for f in reader.fills)
        kinds = apply(rest, held, fill=True)
        print(f"reads: {len(first)}, {len(again)}, {len(rest)}; last run: {dict(kinds)}; "
              f"fills: {reader.fills}")  # fmt: skip

        # Everything, exactly: the streams' last revisions (what is left of them) ...
        stream = latest(pipe.stream_candles())
        assert {k: held.get(k) for k in stream} == stream
        # ... and every candle of every ledger series, with the ledger's values.
        trades = pipe.ledger_trades()
        until_ms = pipe.closed_by_ms(trades)
        floors = {1000: 60 * 15, 2000: 60 * 7}  # 60 symbols, >= 15 s of candles
        compared = check_series(trades, pipe.parsed_intervals(), held, until_ms, floors)
        print(f"compared with the ledger: {compared}")
        assert all(isinstance(c.close, Decimal) and isinstance(c.turnover, Decimal)
                   for c in held.values())  # fmt: skip
        revised = [c for c in held.values() if c.revision > 0]
        assert revised, "no revision came (the late deliveries should make some)"
        assert any(r.replaces and r.candle.revision > 0 for r in first + again + rest)
    finally:
        pipe.stop_all()
