"""Shard ownership through Redis leases.

A lease is a key holding its owner's token that expires unless renewed. Fixed shards
(STREAMER_SHARD_IDS) are taken over at once; otherwise each replica registers itself and claims
free shards up to its fair share (ceil(shards / live replicas)), handing extras back when new
replicas join. Every write a stage makes for a shard goes through a script that first checks
`GET lease == token` (see `FENCE_LUA`), so a stale owner that lost its lease cannot go on writing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import Keys
from common.lifecycle import sleep_or_stop

log = logging.getLogger(__name__)

FENCE_LUA = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('LEASELOST shard lease is not held by this process')
end
"""
"""Prefix for write scripts: KEYS[1] is the lease key and ARGV[1] the token."""

_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] or not current or ARGV[3] == '1' then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def _always(shard: int) -> bool:
    return True


async def _never(shard: int) -> bool:
    return False


def renew_period_s(ttl_ms: int) -> float:
    """How often leases are renewed (and free shards looked for): three times a TTL."""
    return ttl_ms / 3000


def new_token(stage: str) -> str:
    return f"{stage}:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


class ShardWorkers(Protocol):
    """What a stage runs per owned shard."""

    async def start_shard(self, shard: int) -> None:
        """Serve the shard from now on. A `RedisError` (Redis failed under it) must come
        before anything changed: the claimer then lets the lease go, and the shard is claimed
        and started again later."""

    async def stop_shard(self, shard: int, *, graceful: bool) -> None: ...


@dataclass(frozen=True, slots=True)
class Claiming:
    """When a replica claims shards: by default as soon as they are free (ingest's hot standby
    passes its own, see `ingest.shards.IngestShards`)."""

    ready: Callable[[], bool] = lambda: True
    """Until ready, this replica claims no shard while another replica lives, and does not
    count as a member, so others neither hand it shards nor leave it free ones (ingest: until
    its hot standby is subscribed, so that what it takes over it takes over warm)."""
    prefer: Callable[[int], Awaitable[bool]] = _always
    """Whether to claim this shard if it is free now (ingest: not when another replica could
    take it over warm and this one could not)."""
    warm: Callable[[int], Awaitable[bool]] = _never
    """Whether this replica would take the shard over warm: then it claims it beyond its share."""


class ShardClaimer:
    """Keeps this process's set of owned shards right, and its leases alive."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        stage: str,
        shards: int,
        fixed: tuple[int, ...] | None,
        ttl_ms: int,
        workers: ShardWorkers,
        *,
        token: str | None = None,
        claiming: Claiming = Claiming(),
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._stage = stage
        self._shards = shards
        self._fixed = fixed
        self._ttl_ms = ttl_ms
        self._workers = workers
        self.token = token or new_token(stage)
        self.owned: dict[int, float] = {}  # shard -> monotonic time of the last good renewal
        self._acquire = redis.register_script(_ACQUIRE)
        self._renew = redis.register_script(_RENEW)
        self._release = redis.register_script(_RELEASE)
        self.changes = 0
        self._forced: set[int] = set()
        self._claiming = claiming

    @property
    def period_s(self) -> float:
        return renew_period_s(self._ttl_ms)

    async def run(self, stop: asyncio.Event) -> None:
        """Claim, renew and rebalance until `stop`; then stop the workers and release."""
        try:
            while not stop.is_set():
                try:
                    await self.step()
                except RedisError as exc:
                    log.warning("lease step failed: %r", exc)
                    await self._expire_unrenewed()
                await sleep_or_stop(stop, self.period_s)
        finally:
            await self.release_all()

    async def step(self) -> None:
        await self._renew_owned()
        wanted = await self._wanted_count()
        for shard in sorted(self.owned)[wanted:]:
            await self._hand_back(shard)
        for shard in self._candidates():
            if len(self.owned) >= wanted:
                # Beyond our share only to take over warm what nobody else would (ingest's hot
                # standby); rebalancing hands it on later, warm again.
                if self._fixed is not None or not await self._claiming.warm(shard):
                    continue
            # A fixed shard is taken over once, at start (its previous process is presumed dead,
            # as after kill -9 under supervisord); after losing it, wait until it is free again.
            elif self._fixed is None and not await self._claiming.prefer(shard):
                continue
            force = "1" if self._fixed is not None and shard not in self._forced else "0"
            self._forced.add(shard)
            got = await self._acquire(
                keys=[self._keys.lease(self._stage, shard)],
                args=[self.token, self._ttl_ms, force],
            )
            if got:
                self.owned[shard] = time.monotonic()
                self.changes += 1
                log.info("shard %d acquired by %s", shard, self.token)
                await self._start(shard)

    async def _start(self, shard: int) -> None:
        """The worker's start; if Redis failed under it, the lease goes at once (released, or
        expiring if Redis is gone), so that this replica or another claims the shard again.
        Kept, it was renewed for a shard nobody served: ingest's takeover read of the stream
        failed, and the shard's trades went nowhere until the process restarted."""
        try:
            await self._workers.start_shard(shard)
        except RedisError as exc:
            log.warning("shard %d: could not start (%r); letting the lease go", shard, exc)
            self.owned.pop(shard, None)
            self.changes += 1
            with contextlib.suppress(RedisError):
                await self._release(keys=[self._keys.lease(self._stage, shard)], args=[self.token])
            raise

    def _candidates(self) -> list[int]:
        if self._fixed is not None:
            return [k for k in self._fixed if k not in self.owned]
        # Start at a replica-specific offset so replicas do not all race for shard 0 first.
        offset = sum(self.token.encode()) % self._shards
        order = [(offset + i) % self._shards for i in range(self._shards)]
        return [k for k in order if k not in self.owned]

    async def _wanted_count(self) -> int:
        if self._fixed is not None:
            return len(self._fixed)
        members = await self._live_members()
        if not self._claiming.ready():
            # Not ready (see `Claiming.ready`): take shards only when no other replica is alive to.
            return self._shards if members == 0 else 0
        return math.ceil(self._shards / max(1, members))

    async def _live_members(self) -> int:
        seconds, micros = await self._redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        key = self._keys.members(self._stage)
        if self._claiming.ready():
            await self._redis.hset(key, self.token, now_ms + self._ttl_ms)
        members = await self._redis.hgetall(key)
        expired = [m for m, expiry in members.items() if int(expiry) < now_ms]
        if expired:
            await self._redis.hdel(key, *expired)
        return len(members) - len(expired)

    async def _renew_owned(self) -> None:
        for shard in list(self.owned):
            ok = await self._renew(
                keys=[self._keys.lease(self._stage, shard)], args=[self.token, self._ttl_ms]
            )
            if ok:
                self.owned[shard] = time.monotonic()
            else:
                await self._lose(shard, "lease taken by another process or expired")

    async def _expire_unrenewed(self) -> None:
        """Without Redis we cannot renew: once the TTL has passed locally, assume it is gone."""
        deadline = time.monotonic() - self._ttl_ms / 1000
        for shard, renewed in list(self.owned.items()):
            if renewed < deadline:
                await self._lose(shard, "could not renew within the lease time")

    async def _lose(self, shard: int, why: str) -> None:
        log.warning("shard %d lost: %s", shard, why)
        self.owned.pop(shard, None)
        self.changes += 1
        await self._workers.stop_shard(shard, graceful=False)

    async def _hand_back(self, shard: int) -> None:
        log.info("shard %d handed back for rebalancing", shard)
        await self._workers.stop_shard(shard, graceful=True)
        self.owned.pop(shard, None)
        self.changes += 1
        await self._release(keys=[self._keys.lease(self._stage, shard)], args=[self.token])

    async def release_all(self) -> None:
        for shard in sorted(self.owned):
            await self._workers.stop_shard(shard, graceful=True)
        try:
            for shard in sorted(self.owned):
                await self._release(keys=[self._keys.lease(self._stage, shard)], args=[self.token])
            await self._redis.hdel(self._keys.members(self._stage), self.token)
        except RedisError as exc:
            log.warning("could not release leases: %r", exc)
        self.owned.clear()
