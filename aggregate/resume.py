"""What a resume must know about the trade stream besides the checkpoint: whether entries it has
not read yet were trimmed away (ingest trims by age, STREAMER_TRADES_RETENTION_S), and when.

Trimming deletes the oldest entries, so the first entry left tells: when it is newer than the
checkpoint's position, the position itself is gone and so, with it, what followed it up to that
first entry (ingest writes a clock entry every few ms: a trim that stops right after the
position is not told apart; it is flagged too). An entry deleted with XDEL after the position
(Redis 7's `max-deleted-entry-id`) counts as well; so does a stream emptied by trimming after
the position (its `last-generated-id`). The lost window in stream time runs from the
checkpoint's stream time to the time of the first entry left after the loss (every trade of a
lost entry was received before that entry was written).
"""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import redis.asyncio as aioredis

from aggregate.candles import CandleCore
from common.sharding import shard_of
from common.wire import ClockEntry, GapEntry, SymbolsEntry, TradesEntry, entry_decoder, entry_id

log = logging.getLogger(__name__)


class Trimmed(NamedTuple):
    seen: str  # the stream id that shows the loss (first entry left, or a deleted one)
    to_ms: int  # the lost window's end in stream time


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def trimmed_after(redis: aioredis.Redis, stream: str, position: str) -> Trimmed | None:
    """Whether entries after `position` were deleted from `stream` before being read."""
    if position == "0-0" or not await redis.exists(stream):
        return None
    info: Any = await redis.execute_command("XINFO", "STREAM", stream)  # type: ignore[no-untyped-call]
    if isinstance(info, list):  # RESP2: [name, value, ...]
        info = dict(zip(info[::2], info[1::2], strict=True))
    fields = {_text(k): v for k, v in info.items()}
    at = entry_id(position)
    first = fields.get("first-entry")
    if first and entry_id(first[0]) > at:  # trimmed past the position
        return Trimmed(_text(first[0]), await _first_time(redis, stream, _text(first[0])))
    deleted = _text(fields.get("max-deleted-entry-id") or "0-0")
    if entry_id(deleted) > at:  # XDEL after the position
        return Trimmed(deleted, await _first_time(redis, stream, f"({deleted}"))
    generated = _text(fields.get("last-generated-id") or "0-0")
    if not first and entry_id(generated) > at:  # emptied after the position
        return Trimmed(generated, entry_id(generated)[0])
    return None


async def _first_time(redis: aioredis.Redis, stream: str, start: str) -> int:
    """The stream time of the first entry from `start` on (a deleted id's time if none is left:
    ingest's ids are its wall clock, as its clock entries are)."""
    rows: Any = await redis.xrange(stream, min=start, max="+", count=1)
    if not rows:
        return entry_id(start.lstrip("("))[0]
    try:
        entry = entry_decoder.decode(rows[0][1][b"data"])
    except (ValueError, KeyError):
        return entry_id(rows[0][0])[0]
    if isinstance(entry, TradesEntry):
        return max([entry.received_ms, *(t.time_ms for t in entry.trades)])
    if isinstance(entry, ClockEntry | SymbolsEntry):
        return entry.time_ms
    if isinstance(entry, GapEntry):
        return entry.to_ms
    return entry_id(rows[0][0])[0]


async def flag_trimmed(
    redis: aioredis.Redis,
    stream: str,
    core: CandleCore,
    shard: int,
    position: str,
    position_ms: int,
) -> bool:
    """Entries after `position` (stream time `position_ms`) trimmed away unread, because the
    aggregator was down longer than ingest's retention: every candle of the lost window is
    flagged `gap: true` (none of them is written yet: they end after `position_ms`)."""
    trimmed = await trimmed_after(redis, stream, position)
    if trimmed is None:
        return False
    core.gap([], position_ms, trimmed.to_ms)  # every symbol
    log.warning(
        "shard %d: trade entries after %s (up to %s) were trimmed before being read "
        "(down longer than STREAMER_TRADES_RETENTION_S?): candles of %d symbols between "
        "stream times %d and %d are flagged gap",
        shard, position, trimmed.seen, len(core.state.symbols), position_ms, trimmed.to_ms,
    )  # fmt: skip
    return True


def migrate(core: CandleCore, shard: int, shards: int, saved_shards: int) -> None:
    """A checkpoint made under another STREAMER_SHARDS: the symbols that moved to another shard
    end here (their new shard starts them); the others resume as they were. `shards` 0: the
    count is not known (a bench, a test), nothing moves."""
    if not shards:
        return
    moved = sorted(s for s in core.state.symbols if shard_of(s, shards) != shard)
    if not moved and saved_shards in (0, shards):
        return
    core.forget(moved)
    log.warning(
        "shard %d: checkpoint made with STREAMER_SHARDS=%s, now %d: %d symbols moved to other "
        "shards, their series end here (%s); %d resume",
        shard, saved_shards or "?", shards, len(moved),
        ",".join(moved[:10]) + (",..." if len(moved) > 10 else ""), len(core.state.symbols),
    )  # fmt: skip
