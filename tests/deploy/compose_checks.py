"""What the compose test reads back from Redis: lease owners, and the fault suite's end checks.

Once the exchange stops: every trade it sent (from its shard's first written trade on, see
`before_start`) is in a trade stream once, or inside a gap entry that says why it is not; every
candle equals the one computed from the simulator's ledger, none missing or doubled; a candle
missing trades says so; the WebSocket client got every candle published while it was connected,
and pub/sub carried every candle once.
"""

from __future__ import annotations

import collections

from tests.pipeline.test_e2e import check_against_ledger
from tests.pipeline.test_faults import (
    StreamContent,
    _entries,
    covering_reason,
    read_trade_streams,
)
from tests.support.expected import LedgerTrade
from tests.support.pipeline import Collector, Pipeline
from tests.support.waiting import wait_until

WS_SLACK_MS = 3000  # a candle written while the client (re)connected may not reach it


def owners(pipe: Pipeline, stage: str) -> dict[int, str]:
    """Shard -> the token of the replica holding its lease, for the shards that have one."""
    client = pipe.client()
    values = client.mget([pipe.keys.lease(stage, shard) for shard in range(pipe.shards)])
    client.close()
    return {k: v.decode() if isinstance(v, bytes) else v for k, v in enumerate(values) if v}


def before_start(pipe: Pipeline, ledger: list[LedgerTrade], content: StreamContent) -> set[str]:
    """Ids of the trades sent before their shard's stream began (its first written trade).

    The replicas start together: one standing by for a shard can subscribe, and receive that
    shard's first trades, before the replica that comes to own the shard has subscribed. Nobody
    owned the shard yet, so these trades are not written and no gap is owed for them; the
    candles do not miss them either (the first, partial candle of a symbol is never emitted).
    """
    began: dict[int, int] = {}
    for trade in ledger:
        if trade.trade_id in content.trade_ids:
            shard = pipe.shard_of(trade.symbol)
            began[shard] = min(trade.time_ms, began.get(shard, trade.time_ms))
    return {t.trade_id for t in ledger if t.time_ms < began.get(pipe.shard_of(t.symbol), 1 << 62)}


def check_outcome(pipe: Pipeline, ws: Collector, pubsub: Collector) -> dict[str, object]:
    """Stop the exchange, wait for everything it sent to get through, check it; the figures."""
    assert pipe.sim.proc.stop() == 0
    ledger = pipe.ledger_trades()

    def missing(content: StreamContent) -> list[LedgerTrade]:
        early = before_start(pipe, ledger, content)
        return [
            t for t in ledger if t.trade_id not in content.trade_ids and t.trade_id not in early
        ]

    def settled() -> bool:
        content = read_trade_streams(pipe)
        return all(covering_reason(t, content.gaps) for t in missing(content))

    try:
        wait_until(settled, 120, "every ledger trade written or covered by a gap")
    except AssertionError as exc:
        content = read_trade_streams(pipe)
        lost = [t for t in missing(content) if not covering_reason(t, content.gaps)]
        shown = [(pipe.shard_of(t.symbol), t.symbol, t.time_ms, t.trade_id) for t in lost[:20]]
        raise AssertionError(f"{exc}: {len(lost)} trades lost without a gap, e.g. {shown}; "
                             f"gaps: {content.gaps}") from None  # fmt: skip
    last_t = max(t.time_ms for t in ledger)
    boundary = last_t - last_t % 5000 + 5000
    wait_until(
        lambda: any(c.interval == 5000 and c.timestamp >= boundary for c in pipe.stream_candles()),
        120, "the last candles to close",
    )  # fmt: skip
    stream, entries = pipe.stream_candles(), _entries(pipe)
    wait_until(lambda: entries[-1][1] in set(ws.raws), 60, "the WebSocket client's last candle")
    wait_until(lambda: entries[-1][1] in set(pubsub.raws), 60, "the last candle on pub/sub")
    ws.stop()
    pubsub.stop()
    # The stages go on writing (flat candles on the ingest's clock): what the users got is checked
    # against the streams as they stand now that the collectors stopped; what they were owed,
    # against the snapshot above.
    written = {raw for _, raw in _entries(pipe)}

    content = read_trade_streams(pipe)
    assert [i for i, n in content.trade_ids.items() if n > 1] == [], "a trade written twice"
    # beyond the trades sent, only trades nobody was subscribed to that a gap repair fetched
    missed = pipe.missed_trades()
    assert set(content.trade_ids) <= {t.trade_id for t in ledger + missed}
    lost = missing(content)
    lost_by: collections.Counter[str] = collections.Counter()
    for trade in lost:
        reason = covering_reason(trade, content.gaps)
        assert reason is not None, f"trade lost without a gap entry: {trade}"
        lost_by[reason] += 1
    kept = content.from_series_start(
        [t for t in ledger + missed if t.trade_id in content.trade_ids], 1000
    )
    pipe.sim.trades = lambda: [  # type: ignore[method-assign]  # the ledger's kept trades
        {"symbol": t.symbol, "T": t.time_ms, "p": str(t.price), "v": str(t.size),
         "S": "Buy" if t.buy else "Sell", "i": t.trade_id}
        for t in kept
    ]  # fmt: skip
    # floors: well under what a run compares (442 one-second and 84 five-second candles seen)
    compared = check_against_ledger(pipe, stream, {1000: 100, 5000: 20})
    lost_keys = {(t.symbol, t.time_ms - t.time_ms % 1000) for t in lost}
    flagged = {(c.symbol, c.timestamp) for c in stream if c.interval == 1000 and c.gap}
    assert lost_keys <= flagged, "a candle missing trades is not flagged"

    assert set(ws.raws) <= written
    # Owed to the client: what was published while it was connected (the stack ran before it).
    away = [(0, ws.down[0][1]), *ws.down]
    unseen = [(ms, raw) for ms, raw in entries if raw not in set(ws.raws)]
    for written_ms, raw in unseen:
        assert any(a - WS_SLACK_MS <= written_ms <= b + WS_SLACK_MS for a, b in away), raw
    published = collections.Counter(pubsub.raws)
    assert [raw for raw, n in published.items() if n > 1] == [], "a candle published twice"
    assert set(published) <= written
    # The publish group starts at the stream's end when the first replica starts: every candle
    # written after the first one pub/sub carried is carried too.
    first_ms = min(ms for ms, raw in entries if raw in published)
    assert [raw for ms, raw in entries if ms > first_ms and raw not in published] == []
    return {
        "trades the exchange sent": len(ledger),
        "of which before their shard's stream began": len(before_start(pipe, ledger, content)),
        "trades lost, each inside a gap entry": dict(lost_by) or 0,
        "candles checked against the ledger (1s / 5s)": f"{compared[1000]} / {compared[5000]}",
        "candles in the streams missing or twice": 0,
        "candles the WebSocket client got": f"{len(set(ws.raws))} of {len(written)}",
        "candles on pub/sub, each once": len(published),
    }
