"""The checkpoint of one shard, and the one Redis script that writes it with its candles.

`<p>:{k}:state` is a hash of two fields (and a third for a few ms after a waiter deadline:
`unstored`, the first of the candles whose store is left for later, common/history.py):
- `head`: the last trade stream id whose candles are written (and the stream time then). Every
  step's candles and its head go to Redis in one Lua script, fenced by the shard lease.
- `checkpoint`: the core state covering the stream up to its own `last_id`. It is megabytes for a
  busy shard, so it is written (in the same script) only now and then: at most every
  `CHECKPOINT_EVERY_S`, in a step at a quiet moment (no candle closed in it, none due to close
  within `QUIET_MS` of stream time: its encoding and sending never delay a boundary's candles),
  and at least every `CHECKPOINT_MAX_S`.

Exactly once: the core is deterministic (its candles depend on the entries only, not on how they
are split into steps). After a crash the process loads the checkpoint, replays the entries after
its `last_id` up to the head's id while discarding their candles (they are already written), and
reads on after the head: it emits exactly what an uninterrupted run would have emitted.

The duplicate filter's trade ids are not in the checkpoint (at 100 k trades/s and a 10 s revision
window they would be megabytes per write). Instead the checkpoint names `ids_from`: a trade
stream id before which every trade is older than anything the filter still needs; a resume
re-reads the trades between `ids_from` and `last_id` and only remembers their ids.
"""

from __future__ import annotations

import msgspec

from aggregate.candles import CoreConfig
from aggregate.state import CoreState
from common.history import LINES_LUA, STORE_LUA, UNSTORED
from common.intervals import canonical_label
from common.leases import FENCE_LUA

VERSION = 5  # 5: gap repairs (open repairs per symbol, pruned_until per level); 4: scale 10**13
CHECKPOINT_EVERY_S = 1.0
CHECKPOINT_MAX_S = 5.0
QUIET_MS = 250
HEAD = "head"
CHECKPOINT = "checkpoint"


class Head(msgspec.Struct, gc=False):
    last_id: str  # every candle of the entries up to this one is written
    now_ms: int = -1  # stream time after that entry


class Checkpoint(msgspec.Struct, gc=False):
    version: int
    config: str  # the candle rules it was made under; another config = cold start
    last_id: str  # the last trade stream entry this state covers
    ids_from: str  # re-read trades after this id (up to last_id) to rebuild the dedup ids
    steps: list[tuple[int, str]]  # (stream time, last id) of recent steps, to move ids_from on
    core: CoreState
    shards: int = 0  # STREAMER_SHARDS it was made under (0: not recorded, before this field)


# JSON, not msgpack: turnover sums (24 decimal digits, scaled) outgrow msgpack's 64-bit ints.
encoder = msgspec.json.Encoder()
decoder = msgspec.json.Decoder(Checkpoint)
head_decoder = msgspec.json.Decoder(Head)


def fingerprint(config: CoreConfig) -> str:
    """The candle rules a checkpoint was made under. The shard count is not one of them: a
    change of it is migrated (see aggregate.shard's load), not a cold start."""
    labels = ",".join(interval.label for interval in config.intervals)
    return (
        f"{labels}|latency={config.waiter_latency_ms}|window={config.revision_window_ms}"
        f"|repair={max(config.repair_window_ms, config.revision_window_ms)}"
        f"|open={'previous_close' if config.open_at_previous_close else 'first_trade'}"
        f"|empty={'emit' if config.emit_empty else 'skip'}|updates={config.updates_ms}"
    )


def same_rules(saved: str, current: str) -> bool:
    """Whether a checkpoint's fingerprint names the current rules; interval labels compared in
    their canonical spelling (a checkpoint made under `60m` resumes under `1h`)."""
    labels, bar, rest = saved.partition("|")
    canonical = ",".join(canonical_label(label) for label in labels.split(","))
    return canonical + bar + rest == current


WRITE_LUA = (
    FENCE_LUA
    + STORE_LUA
    + LINES_LUA
    + """
-- KEYS: lease, klines, updates, state, then each closed candle's history key (in order; none
-- when the store is left for later).
-- ARGV: token, klines maxlen, updates maxlen, head, checkpoint ('' = keep the one there), the
-- closed candles' JSON joined by newlines, the in-progress snapshots' JSON joined by newlines
-- (candle JSON never holds a raw newline; one argument for all instead of one per candle is far
-- cheaper to send), history depth, '1' to store the closed candles or '0' to leave them to
-- STORE_AFTER_LUA (common/history.py: the state's `unstored` mark then names the first).
local n = 0
local depth = tonumber(ARGV[8])
local store = ARGV[9] ~= '0'
local first = false
for candle in lines(ARGV[6]) do
  local id = redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 'data', candle)
  n = n + 1
  if store then
    store_candle(KEYS[4 + n], candle, depth)
  elseif not first then
    first = id
  end
end
for candle in lines(ARGV[7]) do
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'data', candle)
end
if redis.call('TYPE', KEYS[4]).ok == 'string' then
  redis.call('DEL', KEYS[4])  -- a version 1 checkpoint: replaced by this write
end
if ARGV[5] ~= '' then
  redis.call('HSET', KEYS[4], 'head', ARGV[4], 'checkpoint', ARGV[5])
else
  redis.call('HSET', KEYS[4], 'head', ARGV[4])
end
if first then
  redis.call('HSETNX', KEYS[4], '"""
    + UNSTORED
    + """', first)
end
return n
"""
)
