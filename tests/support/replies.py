"""redis-py's replies as the tests' clients get them: bytes, never str.

redis-py 8 types each reply for both `decode_responses` modes (`bytes | str`), and a stream range
as possibly None. The tests' clients never decode, so a reply is narrowed here, once, to what it
is; the asserts say so at run time too. Use it as `replies.entries(client.xrange(key))`.
"""

from __future__ import annotations

from typing import cast

from redis.typing import StreamRangeResponse, ZSetRangeResponse

Fields = dict[bytes, bytes]
Entry = tuple[bytes, Fields]


def entries(reply: StreamRangeResponse | None) -> list[Entry]:
    """An XRANGE / XREVRANGE reply: (entry id, fields) pairs."""
    assert reply is not None
    return cast(list[Entry], reply)


def scored(reply: ZSetRangeResponse) -> list[tuple[bytes, float]]:
    """A ZRANGE ... WITHSCORES reply: (member, score) pairs."""
    return cast(list[tuple[bytes, float]], reply)


def value(reply: bytes | str | None) -> bytes:
    """A reply of one string that must be there: GET, HGET, the id XADD gives."""
    assert isinstance(reply, bytes), f"expected bytes, got {reply!r}"
    return reply


def maybe(reply: bytes | str | None) -> bytes | None:
    """A GET / HGET reply that may be missing."""
    assert not isinstance(reply, str), "the tests' clients do not decode replies"
    return reply
