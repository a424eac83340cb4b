"""The history store's layout (docs/protocol.md "History over HTTP"): one sorted set per series,
written with the candles.

Key `<p>:{k}:hist:<interval label>:<symbol>` (common.keys), score = the candle's open time in ms,
member = the candle's JSON from `"timestamp":` on. The part left out (symbol, interval, label)
is the same for every candle of the series and is rebuilt from the key, so a candle read back is
byte for byte the JSON the candle stream holds, and fields added to the candle later are stored
without a change here. The timestamp stays in the member: two candles of equal content (quiet,
empty ones) must be two members.

It is written by the same Lua script that XADDs the candle to `<p>:{k}:klines` (the aggregator's
`aggregate.checkpoint.WRITE_LUA`, klines mode's `ingest.klines.store`), with one exception: a
waiter deadline's candles. The aggregator XADDs those at the deadline without storing them, so
that Redis runs only the stream's half of the work while every consumer waits for them, and
leaves the id of the first one in the shard's state hash (`<p>:{k}:state`, field `unstored`,
`UNSTORED`); a second script stores them a few ms later (`STORE_AFTER_LUA`) and removes the
mark. So the store holds every candle up to the candle stream's head except those from the
`unstored` id on, and after `kill -9` of any stage the aggregator's resume stores those first
(aggregate.shard's load). A reader that must not miss a candle between store and stream (the
WebSocket resume, the reader library's fill) reads the mark before the store and takes the
candles from the mark on from the stream; the HTTP routes answer from the store alone (a
deadline's candle reaches them a few ms after the stream).
A revision (revision > 0) first removes the member of its open time; a revision-0 candle is new,
so a plain ZADD suffices. Trimming needs no ZCARD: a series is cut back to `depth`
(STREAMER_HISTORY_CANDLES) when it stores a candle whose open time in seconds is a multiple of
16. Open times are multiples of the interval, so that comes at least every 16th candle (every
4th for 1m, every one from 1h up; sub-second intervals hit such seconds for whole runs): a series
holds at least `depth` and at most `depth + 15` candles (sub-second ones: 16 s more), and each
cut removes a few members (a cut only once a set passed depth + a tenth would remove a hundred
members from every series of an interval at the same boundary: a burst inside its burst).
"""

from __future__ import annotations

from typing import Any

import msgspec

from common.intervals import Interval
from common.leases import FENCE_LUA
from common.redisconn import AnyRedis
from common.wire import STREAM_FIELD

STORE_LUA = """
-- The history store (common/history.py). Plain finds only: a pattern match scans every position.
local function store_candle(key, candle, depth)
  local at = string.find(candle, '"timestamp":', 1, true)
  local ts = string.sub(candle, at + 12, string.find(candle, ',', at + 12, true) - 1)
  if not string.find(candle, '"revision":0,', at, true) then
    redis.call('ZREMRANGEBYSCORE', key, ts, ts)
  end
  redis.call('ZADD', key, ts, string.sub(candle, at))
  if math.floor(tonumber(ts) / 1000) % 16 == 0 then
    redis.call('ZREMRANGEBYRANK', key, 0, -depth - 1)
  end
end
"""
"""Defines `store_candle(key, candle_json, depth)` for a script that includes it."""

LINES_LUA = """
-- The non-empty lines of a newline-joined argument, by plain finds: a pattern (gmatch '[^\\n]+')
-- tests every byte against its class, about 1.3 µs of Redis time per candle, an eighth of a
-- boundary's write script.
local function lines(text)
  local from, size = 1, #text
  return function()
    while from <= size do
      local stop = string.find(text, '\\n', from, true) or size + 1
      local line = string.sub(text, from, stop - 1)
      from = stop + 1
      if line ~= '' then
        return line
      end
    end
  end
end
"""

UNSTORED = "unstored"
"""The field of a shard's state hash holding the candle stream id from which the candles are not
in the store yet (absent: every candle is)."""

STORE_AFTER_LUA = (
    FENCE_LUA
    + STORE_LUA
    + LINES_LUA
    + """
-- KEYS: lease, state, then each candle's history key (in order). ARGV: token, the candles' JSON
-- joined by newlines, history depth. Stores candles XADDed before without a store, and removes
-- the state's mark of them.
local n = 0
local depth = tonumber(ARGV[3])
for candle in lines(ARGV[2]) do
  n = n + 1
  store_candle(KEYS[2 + n], candle, depth)
end
redis.call('HDEL', KEYS[2], '"""
    + UNSTORED
    + """')
return n
"""
)


async def unstored_candles(
    redis: AnyRedis, stream: str, mark: bytes | str, until: str = "+"
) -> list[bytes]:
    """The candles of a candle stream from its shard's `unstored` mark on (up to `until`): those
    written to the stream and not yet stored."""
    rows: Any = await redis.xrange(stream, min=mark, max=until)
    return [data for _, fields in rows if fields and (data := fields.get(STREAM_FIELD)) is not None]


BACKFILLED = b'"trade_count":null'
"""What marks a backfilled member (ingest/backfill.py): Bybit's REST kline has no trade count."""


def member_rank(member: bytes) -> int:
    """Which of two members at one open time counts: the higher rank. A candle of the candle
    stream ranks by its revision; a backfilled one (Bybit's REST kline, STREAMER_HISTORY_BACKFILL)
    ranks below them all (-1), so the pipeline's own candle always replaces it in what readers
    get. (Two members share an open time when a revision-0 candle is written twice after a cold
    start, or when the aggregator writes a candle the backfill had just filled in.)"""
    if BACKFILLED in member:
        return -1
    at = member.rfind(b'"revision":')
    if at < 0:
        return 0
    digits = member[at + 11 :].split(b",", 1)[0].split(b"}", 1)[0]
    return int(digits) if digits.isdigit() else 0


def member_of(candle: bytes) -> bytes:
    """The stored member of a candle JSON (what STORE_LUA stores), for tests and tools."""
    at = candle.find(b'"timestamp":')
    if at < 0:
        raise ValueError("not a candle: no timestamp")
    return candle[at:]


class SeriesHead:
    """Rebuilds a series' candle JSON from stored members: the head is built once per series."""

    __slots__ = ("_head",)

    def __init__(self, symbol: str, interval: Interval) -> None:
        self._head = b'{"symbol":%s,"interval":%d,"interval_label":%s,' % (
            msgspec.json.encode(symbol),
            interval.ms,
            msgspec.json.encode(interval.label),
        )

    def candle(self, member: bytes) -> bytes:
        """The candle JSON of a stored member."""
        return self._head + member
