"""Every Redis key name, built in one place.

All keys of shard k carry the hash tag `{k}`, so one shard's keys live in one Redis Cluster slot
and a Lua script may touch them together.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    prefix: str

    def trades(self, shard: int) -> str:
        """Stream: raw trades of the shard, plus clock and gap entries (ingest → aggregate)."""
        return f"{self.prefix}:{{{shard}}}:trades"

    def klines(self, shard: int) -> str:
        """Stream: closed candles and revisions of the shard, field `data` = candle JSON."""
        return f"{self.prefix}:{{{shard}}}:klines"

    def updates(self, shard: int) -> str:
        """Stream: in-progress candle snapshots (`closed: false`), short, for live charts."""
        return f"{self.prefix}:{{{shard}}}:updates"

    def state(self, shard: int) -> str:
        """The aggregator's checkpoint of the shard."""
        return f"{self.prefix}:{{{shard}}}:state"

    def ingest_batch(self, shard: int) -> str:
        """String: `<token>:<serial>` of the last batch ingest wrote, so a retry is not doubled."""
        return f"{self.prefix}:{{{shard}}}:ingest-batch"

    def klines_last(self, shard: int) -> str:
        """Hash: klines mode, the open time of the last confirmed candle written per series."""
        return f"{self.prefix}:{{{shard}}}:klines-last"

    def history(self, shard: int, interval_label: str, symbol: str) -> str:
        """Sorted set: the store of one series' closed candles (score = open time ms, member =
        the candle JSON from its timestamp on, see common/history.py)."""
        return f"{self.prefix}:{{{shard}}}:hist:{interval_label}:{symbol}"

    def history_pattern(self) -> str:
        """A SCAN pattern for every series' store key (glob characters of the prefix escaped)."""
        escaped = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix)
        return f"{escaped}:{{*}}:hist:*"

    def history_shard_pattern(self, shard: int) -> str:
        """A SCAN pattern for the store keys of one shard's series."""
        escaped = re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix)
        return f"{escaped}:{{{shard}}}:hist:*"

    def lease(self, stage: str, shard: int) -> str:
        """String with the owner's token; expires unless renewed."""
        return f"{self.prefix}:{{{shard}}}:lease:{stage}"

    def members(self, stage: str) -> str:
        """Hash: live replicas of a stage (field = replica id, value = expiry ms)."""
        return f"{self.prefix}:members:{stage}"

    def meta(self) -> str:
        """Hash: `shards`, `intervals`, `mode`: what a downstream reader needs to find streams."""
        return f"{self.prefix}:meta"

    def status(self, stage: str) -> str:
        """Hash: per replica of a stage, a JSON status it refreshes (for `python -m ops status`)."""
        return f"{self.prefix}:status:{stage}"

    def publish_position(self, consumer: str, shard: int) -> str:
        """String: the last candle stream id a (non-group) consumer has handled."""
        return f"{self.prefix}:{{{shard}}}:pos:{consumer}"

    def reader_position(self, name: str, shard: int) -> str:
        """Hash: a `streamer.client` reader's position in the shard's candle stream (`id`: the
        last entry it handed out and saw handled, `end`: the latest candle end among them)."""
        return f"{self.prefix}:{{{shard}}}:reader:{name}"
