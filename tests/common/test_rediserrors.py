"""The classifier against the errors a real redis-server and redis-py raise."""

from __future__ import annotations

import socket
from collections.abc import Awaitable

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from common.keys import Keys
from common.leases import FENCE_LUA
from common.rediserrors import REDIS_DOWN, REDIS_FAILED, ReplyCode, reply_code

pytestmark = pytest.mark.redis


async def _error(call: Awaitable[object]) -> BaseException:
    try:
        await call
    except Exception as exc:
        return exc
    raise AssertionError("no error")


async def test_reply_codes_of_the_replies_we_act_on(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        fenced = client.register_script(FENCE_LUA + "return 1")
        lease = Keys("t").lease("agg", 0)
        lost = await _error(fenced(keys=[lease], args=["not-the-owner"]))
        assert reply_code(lost) is ReplyCode.LEASELOST

        await client.xgroup_create("s", "g", id="$", mkstream=True)
        busy = await _error(client.xgroup_create("s", "g", id="$", mkstream=True))
        assert reply_code(busy) is ReplyCode.BUSYGROUP

        gone = await _error(client.xreadgroup("other", "c", {"s": ">"}, count=1))
        assert reply_code(gone) is ReplyCode.NOGROUP

        await client.set("k", "v")
        wrong_type = await _error(client.xadd("k", {"f": "v"}))
        assert isinstance(wrong_type, ResponseError)
        assert reply_code(wrong_type) is None  # WRONGTYPE: an error reply, not one we act on
        assert isinstance(wrong_type, REDIS_FAILED)
        assert not isinstance(wrong_type, REDIS_DOWN)
    finally:
        await client.aclose()


def test_reply_code_of_other_errors_is_none() -> None:
    assert reply_code(ValueError("LEASELOST")) is None
    assert reply_code(ResponseError("")) is None
    assert reply_code(ResponseError("the LEASELOST word later on")) is None


async def test_refused_and_silent_servers_are_redis_down() -> None:
    with socket.socket() as closed, socket.socket() as silent:
        closed.bind(("127.0.0.1", 0))  # bound, not listening: connections are refused
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts into its backlog, never answers
        for sock in (closed, silent):
            client = aioredis.Redis(
                port=sock.getsockname()[1],
                socket_connect_timeout=1,
                socket_timeout=0.2,
                retry=Retry(NoBackoff(), 0),  # the first error, not redis-py's retries of it
            )
            try:
                down = await _error(client.ping())
            finally:
                await client.aclose()
            assert isinstance(down, REDIS_DOWN), repr(down)
            assert isinstance(down, REDIS_FAILED)
            assert reply_code(down) is None
