from __future__ import annotations

import itertools
import zlib

from common.backoff import backoff
from common.sharding import shard_of, split_by_shard


def test_shard_is_crc32_mod_shards() -> None:
    assert shard_of("BTCUSDT", 4) == zlib.crc32(b"BTCUSDT") % 4
    assert shard_of("BTCUSDT", 1) == 0
    groups = split_by_shard(["BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"], 3)
    assert sorted(s for g in groups.values() for s in g) == [
        "BTCUSDT",
        "DOGEUSDT",
        "ETHUSDT",
        "SOLUSDT",
    ]
    assert all(shard_of(s, 3) == k for k, g in groups.items() for s in g)


def test_backoff_grows_to_the_cap_with_jitter() -> None:
    no_jitter = list(itertools.islice(backoff(0.5, 4.0, 2.0, 0.0), 6))
    assert no_jitter == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    full = list(itertools.islice(backoff(1.0, 8.0, 2.0, 0.5, rand=lambda: 1.0), 4))
    assert full == [0.5, 1.0, 2.0, 4.0]
