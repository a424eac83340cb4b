"""What a Redis failure means, said once.

- `REDIS_DOWN`: Redis cannot be reached (refused, reset, timed out): the same call may be tried
  again once it is back.
- `REDIS_FAILED`: that, or Redis answered with an error (a script's refusal, OOM, …): for
  best-effort calls, and for retry loops that start again from what Redis holds.
- `reply_code()`: which error reply it was, for the replies that mean a decision (`ReplyCode`).

`OSError` covers the builtin `ConnectionError` and `TimeoutError` (`asyncio.wait_for`'s) too.
"""

from __future__ import annotations

from enum import StrEnum

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

REDIS_DOWN: tuple[type[Exception], ...] = (RedisConnectionError, RedisTimeoutError, OSError)
REDIS_FAILED: tuple[type[Exception], ...] = (RedisError, OSError)


class ReplyCode(StrEnum):
    """Error replies this project acts on: a reply's first word (`-NOGROUP No such key …`)."""

    LEASELOST = "LEASELOST"  # a write script's fence: another process holds the shard's lease
    BUSYGROUP = "BUSYGROUP"  # XGROUP CREATE: the consumer group exists already
    NOGROUP = "NOGROUP"  # the stream or its consumer group is gone (Redis came back empty)


def reply_code(exc: BaseException) -> ReplyCode | None:
    """The `ReplyCode` of a Redis error reply; None for another reply or another error."""
    if not isinstance(exc, ResponseError):
        return None
    words = str(exc).split(maxsplit=1)
    if not words:
        return None
    try:
        return ReplyCode(words[0])
    except ValueError:
        return None
