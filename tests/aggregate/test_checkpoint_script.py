"""The write scripts' line splitting (common.history.LINES_LUA), in a real redis-server."""

from __future__ import annotations

import pytest
import redis

from common.history import LINES_LUA

pytestmark = pytest.mark.redis

COLLECT = (
    LINES_LUA
    + """
local out = {}
for line in lines(ARGV[1]) do
  out[#out + 1] = line
end
return out
"""
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"", []),
        (b"\n\n", []),
        (b"a", [b"a"]),
        (b'{"x":1}\n{"y":2}', [b'{"x":1}', b'{"y":2}']),
        (b"\nab\n\ncd\n", [b"ab", b"cd"]),  # empty lines skipped, as gmatch('[^\n]+') did
        (b"a b\tc\r\nd", [b"a b\tc\r", b"d"]),  # only the newline splits
    ],
)
def test_lines_splits_at_newlines_only(redis_url: str, text: bytes, expected: list[bytes]) -> None:
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.eval(COLLECT, 0, text) == expected
    finally:
        client.close()
