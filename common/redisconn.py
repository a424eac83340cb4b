"""Redis clients, built the same way everywhere.

`socket_timeout=None`: redis-py 8 otherwise wraps every reply in `asyncio.timeout()`, which
halves pipeline throughput (measured: an async pipeline of XADDs at 105 k/s with it, 175 k/s
without). Liveness comes from our own deadlines instead.

`resend=False`: the client never sends a command again by itself. A cluster client otherwise
sends a command again after its connection broke (redis-py: up to 10 times, the cluster's layout
read anew), also after Redis ran it and only the reply was lost: harmless for a read, but a write
script run twice writes its entries twice (the single-node client made from a URL never resends).
The aggregator's writes are such scripts (aggregate.checkpoint), so its client is made this way
and a lost reply surfaces as an error: the shard resumes from what Redis holds (its head).
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from common.settings import CommonSettings

AnyRedis: TypeAlias = "aioredis.Redis | RedisCluster"


def connect(
    settings: CommonSettings, *, decode: bool = False, resend: bool = True
) -> aioredis.Redis:
    """A client for STREAMER_REDIS_URL; a cluster client when STREAMER_REDIS_CLUSTER=true.
    `resend` False: no command is sent again by the client itself (see the module).

    The cluster client is typed as `Redis`: every command this project sends addresses keys of a
    single hash tag, so the two are used the same way.
    """
    once: dict[str, Any] = {} if resend else {"retry": Retry(NoBackoff(), 0)}
    if settings.redis_cluster:
        cluster = RedisCluster.from_url(
            settings.redis_url, decode_responses=decode, socket_timeout=None, **once
        )
        return cluster  # type: ignore[return-value]
    return aioredis.Redis.from_url(
        settings.redis_url,
        decode_responses=decode,
        socket_timeout=None,
        socket_connect_timeout=5,
        health_check_interval=0,
        **once,
    )
