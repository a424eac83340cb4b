"""One shard's keys share a Redis Cluster slot, and leases work on a real cluster."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.asyncio.cluster import RedisCluster as AsyncCluster
from redis.crc import key_slot

from common.keys import Keys
from common.leases import FENCE_LUA, ShardClaimer
from tests.common.test_leases import Recorder
from tests.support.cluster import RedisCluster

pytestmark = pytest.mark.redis


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    started = RedisCluster(Path(tmp_path_factory.mktemp("cluster"))).start()
    yield started
    started.stop()


def test_a_shards_keys_share_one_slot() -> None:
    keys = Keys("streamer")
    for shard in range(16):
        slots = {
            key_slot(key.encode())
            for key in (
                keys.trades(shard),
                keys.klines(shard),
                keys.updates(shard),
                keys.state(shard),
                keys.klines_last(shard),
                keys.lease("ingest", shard),
                keys.lease("aggregate", shard),
                keys.publish_position("websocket", shard),
            )
        }
        assert len(slots) == 1, f"shard {shard} spans slots {slots}"


async def test_leases_and_fenced_scripts_on_a_cluster(cluster: RedisCluster) -> None:
    client = AsyncCluster.from_url(cluster.url)
    keys = Keys("c")
    recorder = Recorder()
    claimer = ShardClaimer(client, keys, "aggregate", 6, None, 2000, recorder)  # type: ignore[arg-type]  # cluster as Redis: common/redisconn.py
    await claimer.step()
    assert recorder.running == set(range(6))
    write = client.register_script(
        FENCE_LUA + "return redis.call('XADD', KEYS[2], '*', 'data', ARGV[2])"
    )
    for shard in range(6):
        await write(
            keys=[keys.lease("aggregate", shard), keys.klines(shard)],
            args=[claimer.token, f"candle-{shard}"],
        )
        assert await client.xlen(keys.klines(shard)) == 1
    await claimer.release_all()
    await client.aclose()
