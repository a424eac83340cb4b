"""Several calls of one Lua script sent to Redis in one pipeline, each keeping its own outcome.

One send and one reply for all of them, on one connection, and Redis runs the scripts back to
back: ingest's write of a batch's shard parts (ingest.writer) and the aggregator's deadline writes
of a process's shards (aggregate.together). Not on a Redis Cluster, where the calls' keys live on
different nodes.

A call is never sent twice unless it did not run: a script missing from Redis (restarted without
its scripts) is refused before it runs (NOSCRIPT), and only those calls are sent again, once the
script is loaded.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, RedisError, ResponseError

Call = tuple[Sequence[Any], Sequence[Any]]
"""A script call's keys and arguments."""


async def call_together(
    redis: aioredis.Redis, script: AsyncScript, calls: Sequence[Call]
) -> list[Any]:
    """Each call's reply, or the error it gave (returned, not raised), in the calls' order.

    A pipeline that fails as a whole (a lost connection) raises: none of its outcomes is known.
    When only the second send, of the calls refused with NOSCRIPT, fails so, those calls get its
    error and the others keep their replies. A call alone goes as the plain script call, which
    loads a missing script itself."""
    if len(calls) == 1:
        keys, args = calls[0]
        try:
            return [await script(keys=keys, args=args)]
        except ResponseError as exc:  # the script's own refusal; a lost connection raises
            return [exc]
    outcomes = await _pipelined(redis, script.sha, calls)
    missing = [k for k, outcome in enumerate(outcomes) if isinstance(outcome, NoScriptError)]
    if missing:
        again: list[Any]
        try:
            await redis.script_load(script.script)
            again = await _pipelined(redis, script.sha, [calls[k] for k in missing])
        except (RedisError, OSError) as exc:
            again = [exc] * len(missing)
        for k, outcome in zip(missing, again, strict=True):
            outcomes[k] = outcome
    return outcomes


async def _pipelined(redis: aioredis.Redis, sha: str, calls: Sequence[Call]) -> list[Any]:
    async with redis.pipeline(transaction=False) as pipe:
        for keys, args in calls:
            pipe.execute_command("EVALSHA", sha, len(keys), *keys, *args)
        replies: list[Any] = await pipe.execute(raise_on_error=False)
    return replies
