from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from common.keys import Keys
from common.leases import FENCE_LUA, ShardClaimer

pytestmark = pytest.mark.redis


class Recorder:
    def __init__(self) -> None:
        self.running: set[int] = set()
        self.events: list[tuple[str, int]] = []

    async def start_shard(self, shard: int) -> None:
        self.running.add(shard)
        self.events.append(("start", shard))

    async def stop_shard(self, shard: int, *, graceful: bool) -> None:
        self.running.discard(shard)
        self.events.append(("stop" if graceful else "lost", shard))


async def test_replicas_share_shards_and_take_over_when_one_stops(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys("t")
    a, b = Recorder(), Recorder()
    claim_a = ShardClaimer(client, keys, "agg", 4, None, 600, a)
    claim_b = ShardClaimer(client, keys, "agg", 4, None, 600, b)
    await claim_a.step()
    assert a.running == {0, 1, 2, 3}  # alone: takes everything
    await claim_b.step()
    await claim_a.step()  # a sees two members: hands two back
    await claim_b.step()
    assert len(a.running) == 2 and len(b.running) == 2
    assert a.running.isdisjoint(b.running)
    # a dies without releasing: b takes its shards once the leases expire.
    owned_by_a = set(a.running)
    await asyncio.sleep(0.7)  # lease ttl: the one place a test must let wall time pass
    await claim_b.step()
    assert b.running == {0, 1, 2, 3}
    # a stale write by a is refused by the fence.
    fenced = client.register_script(FENCE_LUA + "return 1")
    shard = next(iter(owned_by_a))
    with pytest.raises(Exception, match="LEASELOST"):
        await fenced(keys=[keys.lease("agg", shard)], args=[claim_a.token])
    assert await fenced(keys=[keys.lease("agg", shard)], args=[claim_b.token]) == 1
    await client.aclose()


async def test_fixed_shards_are_taken_over_at_once(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    keys = Keys("t")
    old, new = Recorder(), Recorder()
    claim_old = ShardClaimer(client, keys, "ingest", 4, (1,), 60_000, old)
    claim_new = ShardClaimer(client, keys, "ingest", 4, (1,), 60_000, new)
    await claim_old.step()
    await claim_new.step()
    assert new.running == {1}
    await claim_old.step()  # renew fails: the old owner learns it lost the shard
    assert old.events == [("start", 1), ("lost", 1)]
    await claim_old.step()  # and does not steal it back while the new owner renews
    assert old.running == set() and new.running == {1}
    await claim_new.release_all()
    assert await client.get(keys.lease("ingest", 1)) is None
    await client.aclose()
