"""Calls of one script sent together, against a real redis-server: each keeps its own outcome,
and a call refused with NOSCRIPT is sent again once, the others never."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError, ResponseError

from common.scripts import Call, call_together

pytestmark = pytest.mark.redis

APPEND = """
if ARGV[1] == 'bad' then
  return redis.error_reply('BAD refused: ' .. KEYS[1])
end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


async def test_each_call_gets_its_own_reply_or_error(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(APPEND)
    await client.script_load(APPEND)
    outcomes = await call_together(
        client, script, [(["a"], ["x"]), (["b"], ["bad"]), (["a"], ["y"])]
    )
    assert outcomes[0] == 1 and outcomes[2] == 2
    assert isinstance(outcomes[1], ResponseError) and str(outcomes[1]) == "BAD refused: b"
    assert await client.lrange("a", 0, -1) == [b"x", b"y"]
    assert await client.exists("b") == 0
    await client.aclose()


@pytest.mark.parametrize("together", [True, False], ids=["together", "alone"])
async def test_calls_refused_for_a_missing_script_run_once_after_it_is_loaded(
    redis_url: str, together: bool
) -> None:
    """Together: the refused calls sent again once the script is loaded. Alone: the plain call,
    which loads the script itself."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(APPEND)
    await client.script_flush()
    calls: list[Call] = [(["a"], ["x"]), (["b"], ["bad"])]
    if together:
        outcomes = await call_together(client, script, calls)
    else:
        outcomes = [(await call_together(client, script, [call]))[0] for call in calls]
    assert outcomes[0] == 1
    assert isinstance(outcomes[1], ResponseError) and str(outcomes[1]) == "BAD refused: b"
    assert await client.lrange("a", 0, -1) == [b"x"]
    assert await client.exists("b") == 0
    assert await client.script_exists(script.sha) == [True]
    await client.aclose()


async def test_a_failed_second_send_is_each_refused_call_s_outcome(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Loading the script fails (the connection broke): the calls that did not run get that
    error, returned rather than raised, so each caller decides; nothing was written."""
    client = aioredis.Redis.from_url(redis_url)
    script = client.register_script(APPEND)
    await client.script_flush()

    async def broken(*_: object) -> str:
        raise ConnectionError("connection lost while loading")

    monkeypatch.setattr(client, "script_load", broken)
    outcomes = await call_together(client, script, [(["a"], ["x"]), (["c"], ["z"])])
    assert [type(o) for o in outcomes] == [ConnectionError, ConnectionError]
    assert await client.exists("a", "c") == 0
    await client.aclose()
