"""The history store read back independently of publish.history: SCAN + ZRANGE, and what the
candle stream says it must hold (the latest revision of each series' candle)."""

from __future__ import annotations

from collections.abc import Iterable

import redis

from common.history import SeriesHead
from common.intervals import Interval
from common.keys import Keys
from common.wire import candle_view_decoder
from tests.support import replies

SeriesTime = tuple[str, str, int]
"""(symbol, interval label, open time ms)."""


def stored(
    client: redis.Redis, keys: Keys, intervals: Iterable[Interval]
) -> dict[SeriesTime, bytes]:
    by_label = {i.label: i for i in intervals}
    out: dict[SeriesTime, bytes] = {}
    for raw in client.scan_iter(match=keys.history_pattern(), count=1000):
        label, _, symbol = raw.decode().rsplit(":hist:", 1)[1].partition(":")
        head = SeriesHead(symbol, by_label[label])
        for member, score in replies.scored(client.zrange(raw, 0, -1, withscores=True)):
            key = (symbol, label, int(score))
            assert key not in out, f"two members for {key}"
            out[key] = head.candle(member)
    return out


def latest_revisions(raws: Iterable[bytes], newest: int | None = None) -> dict[SeriesTime, bytes]:
    """The candle stream's last word on each (series, open time); with `newest`, only each
    series' `newest` latest open times (what a store of that depth must hold at least)."""
    out: dict[SeriesTime, tuple[int, bytes]] = {}
    for raw in raws:
        view = candle_view_decoder.decode(raw)
        key = (view.symbol, view.interval_label, view.timestamp)
        held = out.get(key)
        if held is None or held[0] <= view.revision:
            out[key] = (view.revision, raw)
    latest = {key: raw for key, (_, raw) in out.items()}
    if newest is None:
        return latest
    series: dict[tuple[str, str], list[int]] = {}
    for symbol, label, ts in latest:
        series.setdefault((symbol, label), []).append(ts)
    keep = {
        (s, label, ts) for (s, label), times in series.items() for ts in sorted(times)[-newest:]
    }
    return {key: raw for key, raw in latest.items() if key in keep}
