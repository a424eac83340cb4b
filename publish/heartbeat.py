"""The publisher's status in Redis, for `python -m ops status`: lag per consumer and clients.

Each replica refreshes its field of `<p>:status:publish` every couple of seconds with a JSON object
that says until when it is valid, so a dead replica's entry is recognised as stale.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

import msgspec
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from common.keys import Keys
from common.lifecycle import sleep_or_stop
from publish.consumers.websocket import CLIENTS
from publish.runner import ConsumerRunner

log = logging.getLogger(__name__)
PERIOD_S = 2.0


class PublishStatus(msgspec.Struct):
    replica: str
    consumers: dict[str, int]  # name -> lag in ms
    websocket_clients: int
    expires_ms: int


status_encoder = msgspec.json.Encoder()
status_decoder = msgspec.json.Decoder(PublishStatus)


async def heartbeat_loop(
    client: aioredis.Redis,
    keys: Keys,
    replica: str,
    runners: list[ConsumerRunner],
    stop: asyncio.Event,
) -> None:
    key = keys.status("publish")
    while not stop.is_set():
        status = PublishStatus(
            replica=replica,
            consumers={runner.name: runner.lag_ms() for runner in runners},
            websocket_clients=int(CLIENTS.get()),
            expires_ms=int(time.time() * 1000 + 3 * PERIOD_S * 1000),
        )
        try:
            await client.hset(key, replica, status_encoder.encode(status))
        except RedisError as exc:
            log.debug("status not written: %r", exc)
        await sleep_or_stop(stop, PERIOD_S)
    with contextlib.suppress(RedisError):
        await client.hdel(key, replica)
