"""The waiter-deadline writes of one process's shards, sent to Redis together.

At a waiter deadline ingest writes a clock entry to every shard's trade stream in one pipeline,
so the blocked reads of all the shards a process owns come back at once, and each shard then
sends the write of the candles the deadline closes (aggregate.shard `_write_ahead`). Sent one
call each, that is one send, one reply and one event-loop wake-up per shard, and Redis gets the
four scripts one by one as the process gets to them; on the 2-core machine a deadline's four
writes spread over 2-4 ms of the aggregator's CPU before the last one left, while publish
waited for a core (docs/benchmarks.md "Where a candle's time goes"). `DeadlineWrites` collects
the writes asked for in the same event-loop turn (the shards whose reads came back together)
and sends them in one pipeline on one connection: one send and one reply for all, and Redis runs
the scripts back to back.

Each write keeps its own outcome: a shard whose lease is lost is refused by its own script
while the others' land; a pipeline that fails as a whole (a lost connection) fails every write
in it, and each shard resumes from what Redis holds, as after a failed write of its own. A
write is never sent twice by this module: a script missing from Redis (restarted without its
scripts) refuses the call before it runs (NOSCRIPT), and only then is it sent again, with the
script loaded. Not on a Redis Cluster, where the shards live on different nodes: there each
shard sends its own (aggregate.service).
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from common.scripts import call_together

TURNS = 2
"""Event-loop turns a write waits for others to join it. The replies of a deadline's reads leave
Redis within microseconds of each other; the turn the first is handled in may have polled the
sockets before the last arrived, and one more turn polls them again (without waiting)."""


class DeadlineWrites:
    """Script calls of several shards of one process, sent together (see the module)."""

    def __init__(self, redis: aioredis.Redis, script: AsyncScript) -> None:
        self._redis = redis
        self._script = script
        self._queued: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._sending: set[asyncio.Task[None]] = set()

    async def call(self, keys: list[Any], args: list[Any]) -> Any:
        """The script's reply for these keys and arguments (its error raised), once it has run
        together with the calls of the same turn."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queued.append((keys, args, future))
        if len(self._queued) == 1:
            loop.call_soon(self._after_turns, TURNS)
        return await future

    def _after_turns(self, turns: int) -> None:
        if turns > 1:
            asyncio.get_running_loop().call_soon(self._after_turns, turns - 1)
            return
        queued = [call for call in self._queued if not call[2].done()]  # a cancelled one stays
        self._queued = []
        if not queued:
            return
        task = asyncio.ensure_future(self._send(queued))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def _send(self, queued: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            outcomes = await call_together(self._redis, self._script, [c[:2] for c in queued])
        except Exception as exc:  # the whole pipeline failed: every write in it did
            outcomes = [exc] * len(queued)
        for (_, _, future), outcome in zip(queued, outcomes, strict=True):
            if future.done():  # its shard was cancelled meanwhile
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
