"""publish.routes without a server: which paths are served, credentials first, Redis down."""

from __future__ import annotations

import asyncio
import base64

import redis.asyncio as aioredis

from common.intervals import parse_intervals
from common.keys import Keys
from publish.auth import Credentials
from publish.history import HistoryReader
from publish.routes import HttpRoutes
from tests.support.redisproc import free_port

BASIC = "Basic " + base64.b64encode(b"u:k").decode()


def routes_on_a_closed_port() -> tuple[HttpRoutes, aioredis.Redis]:
    client = aioredis.Redis(port=free_port(), socket_connect_timeout=2)
    reader = HistoryReader(client, Keys("r"), parse_intervals("1s,1m"), 2)
    return HttpRoutes(reader, "linear", Credentials(b"u", b"k")), client


def test_other_paths_are_not_routes_and_credentials_come_first() -> None:
    async def go() -> None:
        routes, client = routes_on_a_closed_port()
        try:
            assert await routes.handle("/", BASIC) is None
            assert await routes.handle("/v5/public/linear", None) is None
            answer = await routes.handle("/candles?symbol=X&interval=1m", None)
            assert answer is not None and answer.status == 401 and answer.challenge
            # parameters are checked before Redis is asked
            answer = await routes.handle("/candles?symbol=X&interval=2m", BASIC)
            assert answer is not None and answer.status == 400
            assert answer.body.startswith(b'{"error":"Invalid period! configured: 1s 1m (1)')
        finally:
            await client.aclose()

    asyncio.run(go())


def test_redis_down_is_a_503_not_a_crash() -> None:
    async def go() -> None:
        routes, client = routes_on_a_closed_port()
        try:
            for target in ("/candles?symbol=X&interval=1m",
                           "/v5/market/kline?symbol=X&interval=1"):  # fmt: skip
                answer = await routes.handle(target, BASIC)
                assert answer is not None and answer.status == 503, target
        finally:
            await client.aclose()

    asyncio.run(go())
