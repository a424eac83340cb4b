"""A batch of candles read from the candle streams, as the consumers receive it.

The raw JSON bytes of each candle travel untouched, so outputs that forward JSON (pub/sub,
WebSocket) carry the aggregator's exact digits; Python dicts are built only when a consumer asks.
"""

from __future__ import annotations

from typing import Any

import msgspec

from common.wire import CandleView, candle_view_decoder

_dict_decoder = msgspec.json.Decoder()


class CandleBatch:
    """Candles in stream order, with the stream entry id each came from (per shard)."""

    __slots__ = (
        "_dicts",
        "_views",
        "acknowledged",
        "count",
        "group",
        "ids",
        "raws",
        "raws_by_shard",
        "streams",
    )

    def __init__(
        self,
        raws: list[bytes],
        ids: dict[int, list[bytes]],
        raws_by_shard: dict[int, list[bytes]] | None = None,
        *,
        count: int | None = None,
    ) -> None:
        self.raws = raws
        # Candles handled already, whose raws never came here (the `redis` consumer's reads).
        self.count = len(raws) if count is None else count
        self.ids = ids
        self.raws_by_shard = raws_by_shard or {}
        # Set by a consumer-group reader: a consumer may acknowledge the batch itself, in the same
        # atomic step as its output (the `redis` consumer does), so a crash never repeats it.
        self.group: str | None = None
        self.streams: list[str] = []
        # Set by a consumer that did acknowledge it so: the reader's own acknowledgement, one more
        # round trip at a boundary that would find nothing left to acknowledge, is then skipped.
        self.acknowledged = False
        self._dicts: list[dict[str, Any]] | None = None
        self._views: list[CandleView] | None = None

    def __len__(self) -> int:
        return self.count

    def dicts(self) -> list[dict[str, Any]]:
        """The candles as dicts, decimals as floats: the original service's `consume()` data."""
        if self._dicts is None:
            self._dicts = [_dict_decoder.decode(raw) for raw in self.raws]
        return self._dicts

    def views(self) -> list[CandleView]:
        """The candles as `common.wire.CandleView`: prices and sizes as exact `Decimal`s (the
        aggregator's digits), for consumers that compute with them or store them exactly."""
        if self._views is None:
            self._views = [candle_view_decoder.decode(raw) for raw in self.raws]
        return self._views

    def last_ids(self) -> dict[int, bytes]:
        """The last entry id of each shard in this batch: the position once it is handled."""
        return {shard: ids[-1] for shard, ids in self.ids.items() if ids}


def json_array(raws: list[bytes]) -> bytes:
    """A JSON array of candles, joined from their raw JSON without decoding them."""
    return b"[" + b",".join(raws) + b"]"


def id_ms(entry_id: bytes) -> int:
    """The milliseconds part of a stream entry id."""
    return int(entry_id.split(b"-", 1)[0])
