"""The postgres consumer's stream reads: XREAD replies taken as Redis sent them (no dict per
entry) give the batch of the entries written, whichever protocol the client speaks."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.typing import KeyT, StreamIdT

from publish.postgres.leases import _as_sent_to_batch, _raw_replies
from publish.reader import _to_batch
from tests.support import replies

pytestmark = pytest.mark.redis
STREAMS = ["t:{0}:klines", "t:{1}:klines"]


@pytest.mark.parametrize("protocol", [None, 2, 3])
def test_replies_as_sent_give_the_entries_written(redis_url: str, protocol: int | None) -> None:
    client = redis.Redis.from_url(redis_url)
    ids: dict[int, list[bytes]] = {0: [], 1: []}
    for n in range(5):
        ids[n % 2].append(replies.value(client.xadd(STREAMS[n % 2], {"data": b'{"n":%d}' % n})))
    # other order; then no candle: an id, no data
    ids[0].append(replies.value(client.xadd(STREAMS[0], {"other": b"x", "data": b'{"n":5}'})))
    ids[1].append(replies.value(client.xadd(STREAMS[1], {"other": b"y"})))
    client.close()
    shard_of_key = {s.encode(): k for k, s in enumerate(STREAMS)}

    async def go() -> None:
        options: dict[str, Any] = {} if protocol is None else {"protocol": protocol}
        parsed = aioredis.Redis.from_url(redis_url, **options)
        raw = _raw_replies(parsed)
        try:
            positions: dict[KeyT, StreamIdT] = {s: "0-0" for s in STREAMS}
            got = _as_sent_to_batch(await raw.xread(positions, count=100), shard_of_key)
            assert got is not None
            assert got.raws_by_shard == {
                0: [b'{"n":0}', b'{"n":2}', b'{"n":4}', b'{"n":5}'],
                1: [b'{"n":1}', b'{"n":3}'],
            }
            assert got.ids == ids
            assert sorted(got.raws) == sorted(
                r for raws in got.raws_by_shard.values() for r in raws
            )
            if protocol is None:  # the project's clients: the same batch as redis-py's parsing
                want = _to_batch(await parsed.xread(positions, count=100), shard_of_key)
                assert want is not None and (want.ids, want.raws_by_shard) == (
                    got.ids,
                    got.raws_by_shard,
                )
            after: dict[KeyT, StreamIdT] = {s: ids[k][-1] for k, s in enumerate(STREAMS)}
            assert (
                _as_sent_to_batch(await raw.xread(after, count=10, block=10), shard_of_key) is None
            )
        finally:
            await parsed.aclose()

    asyncio.run(go())
