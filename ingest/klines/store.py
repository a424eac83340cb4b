"""Klines mode's Redis writes: each confirmed candle exactly once, each series in order.

One Lua script per batch, fenced by the shard's ingest lease (`FENCE_LUA`). For every candle it
compares the candle's open time with the last written one of its series (hash
`<p>:{k}:klines-last`, field `<symbol>:<interval label>`) and XADDs only when it is newer, setting
the hash in the same script. So a confirm seen twice (a reconnect, a backfill overlapping live
data) is written once, and after `kill -9` the restart knows every series' last candle. The
same script adds each written candle to its series' history store (common/history.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from common.errors import LeaseLostError
from common.history import STORE_LUA
from common.keys import Keys
from common.leases import FENCE_LUA
from common.rediserrors import ReplyCode, reply_code
from common.wire import Candle, candle_encoder

_WRITE_CONFIRMED = (
    FENCE_LUA
    + STORE_LUA
    + """
-- KEYS: lease, klines, klines-last, then each candle's history key. ARGV: token, maxlen,
-- history depth, then (series field, open time, candle JSON) per candle.
local written = {}
local depth = tonumber(ARGV[3])
for i = 4, #ARGV, 3 do
  local field, start = ARGV[i], tonumber(ARGV[i + 1])
  local last = redis.call('HGET', KEYS[3], field)
  if (not last) or tonumber(last) < start then
    redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[i + 2])
    redis.call('HSET', KEYS[3], field, ARGV[i + 1])
    store_candle(KEYS[4 + (i - 4) / 3], ARGV[i + 2], depth)
    written[#written + 1] = 1
  else
    written[#written + 1] = 0
  end
end
return written
"""
)
_WRITE_UPDATES = (
    FENCE_LUA
    + """
for i = 3, #ARGV do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[i])
end
return #ARGV - 2
"""
)


def series_field(symbol: str, interval_label: str) -> str:
    return f"{symbol}:{interval_label}"


class KlineStore:
    """The candle writes of one shard, under the lease token of this process."""

    def __init__(
        self,
        redis: aioredis.Redis,
        keys: Keys,
        shard: int,
        token: str,
        klines_maxlen: int,
        updates_maxlen: int,
        history_candles: int = 1000,
    ) -> None:
        self._redis = redis
        self._keys = keys
        self._history_depth = history_candles
        self._shard = shard
        self._token = token
        self._klines_maxlen = klines_maxlen
        self._updates_maxlen = updates_maxlen
        self._lease = keys.lease("ingest", shard)
        self._klines = keys.klines(shard)
        self._updates = keys.updates(shard)
        self._last = keys.klines_last(shard)
        self._confirmed = redis.register_script(_WRITE_CONFIRMED)
        self._snapshots = redis.register_script(_WRITE_UPDATES)

    async def last_starts(self) -> dict[str, int]:
        """Open time of the last written candle per series field (`BTCUSDT:1m`)."""
        raw = await self._redis.hgetall(self._last)
        return {_text(field): int(value) for field, value in raw.items()}

    async def write_confirmed(self, candles: Sequence[Candle]) -> list[bool]:
        """XADD the candles that are newer than their series' last one; which ones were written."""
        if not candles:
            return []
        args: list[str | bytes | int] = [self._token, self._klines_maxlen, self._history_depth]
        keys = [self._lease, self._klines, self._last]
        for candle in candles:
            keys.append(self._keys.history(self._shard, candle.interval_label, candle.symbol))
            args += [
                series_field(candle.symbol, candle.interval_label),
                candle.timestamp,
                candle_encoder.encode(candle),
            ]
        try:
            written = await self._confirmed(keys=keys, args=args)
        except ResponseError as exc:
            raise _lease_error(exc, self._shard) from None
        return [bool(flag) for flag in written]

    async def write_updates(self, candles: Sequence[Candle]) -> None:
        if not candles:
            return
        args: list[str | bytes | int] = [self._token, self._updates_maxlen]
        args += [candle_encoder.encode(candle) for candle in candles]
        try:
            await self._snapshots(keys=[self._lease, self._updates], args=args)
        except ResponseError as exc:
            raise _lease_error(exc, self._shard) from None


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _lease_error(exc: ResponseError, shard: int) -> Exception:
    if reply_code(exc) is ReplyCode.LEASELOST:
        return LeaseLostError(f"shard {shard}: the ingest lease is held by another process")
    return exc
