"""The checkpoint of one shard, and the one Redis script that writes it with its candles.

Exactly once: the candles a step emits and the checkpoint covering them (core state + the last
trade stream id read) go to Redis in one Lua script, fenced by the shard lease. After a crash the
process loads the checkpoint and reads after its id, so it emits exactly what an uninterrupted run
would have emitted after that point.

The duplicate filter's trade ids are not in the checkpoint (at 100 k trades/s and a 10 s revision
window they would be megabytes per write). Instead the checkpoint names `ids_from`: a trade
stream id before which every trade is older than anything the filter still needs; a resume
re-reads the trades between `ids_from` and `last_id` and only remembers their ids.
"""

from __future__ import annotations

import msgspec

from aggregate.candles import CoreConfig
from aggregate.state import CoreState
from common.leases import FENCE_LUA

VERSION = 1


class Checkpoint(msgspec.Struct, gc=False):
    version: int
    config: str  # the candle rules it was made under; another config = cold start
    last_id: str  # the last trade stream entry this state covers
    ids_from: str  # re-read trades after this id (up to last_id) to rebuild the dedup ids
    steps: list[tuple[int, str]]  # (stream time, last id) of recent steps, to move ids_from on
    core: CoreState


# JSON, not msgpack: turnover sums (24 decimal digits, scaled) outgrow msgpack's 64-bit ints.
encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(Checkpoint)


def fingerprint(config: CoreConfig) -> str:
    labels = ",".join(interval.label for interval in config.intervals)
    return (
        f"{labels}|latency={config.waiter_latency_ms}|window={config.revision_window_ms}"
        f"|open={'previous_close' if config.open_at_previous_close else 'first_trade'}"
        f"|empty={'emit' if config.emit_empty else 'skip'}|updates={config.updates_ms}"
    )


WRITE_LUA = (
    FENCE_LUA
    + """
-- KEYS: lease, klines, updates, state. ARGV: token, klines maxlen, updates maxlen, checkpoint,
-- number of closed candles, then the closed candles' JSON, then the in-progress snapshots' JSON.
local closed = tonumber(ARGV[5])
for i = 6, 5 + closed do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', ARGV[i])
end
for i = 6 + closed, #ARGV do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'data', ARGV[i])
end
redis.call('SET', KEYS[4], ARGV[4])
return closed
"""
)
