"""Which shard a symbol belongs to: crc32 of its UTF-8 bytes modulo the shard count.

The same function in every process and every language: Python's `zlib.crc32`, the IEEE
polynomial, e.g. `crc32(b"BTCUSDT") % 4`.
"""

from __future__ import annotations

import zlib


def shard_of(symbol: str, shards: int) -> int:
    return zlib.crc32(symbol.encode()) % shards


def split_by_shard(symbols: list[str], shards: int) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for symbol in symbols:
        out.setdefault(shard_of(symbol, shards), []).append(symbol)
    return out
