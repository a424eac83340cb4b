"""Loading instruments page by page from the simulator's REST, and following symbol changes."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.lifecycle import TaskSet
from common.sharding import shard_of
from common.wire import Category, SymbolsEntry, entry_decoder
from ingest.bybit.instruments import trading_symbols
from ingest.rest import fetch_instruments_sync
from ingest.shards import IngestShards
from ingest.writer import Writer
from tests.ingest.e2e_support import start_simulator
from tests.support import replies


@pytest.mark.e2e
def test_every_page_of_instruments_is_loaded(tmp_path: Path) -> None:
    sim = start_simulator(tmp_path, "--symbols", "60", "--non-trading", "5")
    try:
        instruments = fetch_instruments_sync(sim.rest_url, Category.LINEAR, 5, page_limit=25)
        # Bybit lists only Trading instruments unless asked for another status
        assert len(instruments) == 60
        assert len({i.symbol for i in instruments}) == 60
        assert len(trading_symbols(instruments)) == 60
        one_page = fetch_instruments_sync(sim.rest_url, Category.LINEAR, 5)
        assert [i.symbol for i in one_page] == [i.symbol for i in instruments]
    finally:
        sim.proc.stop()


class FakePool:
    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []

    async def add(self, symbols: list[str]) -> None:
        if symbols:
            self.calls.append(("add", sorted(symbols)))

    async def remove(self, symbols: list[str]) -> None:
        if symbols:
            self.calls.append(("remove", sorted(symbols)))


@pytest.mark.redis
async def test_refresh_subscribes_listings_of_owned_shards_and_drops_delistings(
    redis_url: str,
) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys("t")
    open_writer = partial(
        Writer, client, keys, "tok", clock_interval_ms=5, buffer_max=100, batch_max=10,
        retention_s=60,
    )  # fmt: skip
    pool = FakePool()
    old = ["AAAUSDT", "BBBUSDT", "CCCUSDT", "DDDUSDT"]
    shards = IngestShards(
        client, keys, 2, TaskSet(), 1.0, open_writer=open_writer,
        open_pool=lambda **hooks: pool,  # type: ignore[arg-type]  # a fake connection pool
        symbols=old,
    )  # fmt: skip
    writer = shards.writer
    owned = shard_of("AAAUSDT", 2)
    shards.own(owned, [s for s in old if shard_of(s, 2) == owned])
    new_symbols = ["EEEUSDT", "FFFUSDT", "GGGUSDT", "HHHUSDT"]
    await shards.set_symbols(["AAAUSDT", "CCCUSDT", *new_symbols])
    mine = sorted(s for s in new_symbols if shard_of(s, 2) == owned)
    assert mine  # the names above put at least one new listing in the owned shard
    assert pool.calls == [("remove", ["BBBUSDT", "DDDUSDT"]), ("add", mine)]
    assert shards.symbols == sorted(["AAAUSDT", "CCCUSDT", *new_symbols])
    # The owned shard's stream says which symbols it serves now (the aggregator ends the rest).
    await client.set(keys.lease("ingest", owned), "tok")
    await writer.flush_once(None)
    rows = replies.entries(await client.xrange(keys.trades(owned)))
    entries = [entry_decoder.decode(fields[b"data"]) for _, fields in rows]
    assert [e.symbols for e in entries if isinstance(e, SymbolsEntry)] == [
        sorted(s for s in ["AAAUSDT", "CCCUSDT", *new_symbols] if shard_of(s, 2) == owned)
    ]
    await client.aclose()
