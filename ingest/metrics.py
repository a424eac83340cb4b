"""Ingest's counters and gauges, in the shared registry."""

from __future__ import annotations

from common.metrics import REGISTRY

TRADES = REGISTRY.counter("ingest_trades_total", "trades written to the trade streams")
MESSAGES = REGISTRY.counter(
    "ingest_messages_total", "publicTrade messages written (one stream entry each)"
)
MALFORMED = REGISTRY.counter("ingest_malformed_total", "frames that could not be understood")
DUPLICATES = REGISTRY.counter("ingest_duplicate_trades_total", "trades seen twice, written once")
RECONNECTS = REGISTRY.counter("ingest_reconnects_total", "WebSocket reconnects")
GAPS = REGISTRY.counter("ingest_gaps_total", "gap entries written", ("reason",))
DROPPED = REGISTRY.counter("ingest_dropped_trades_total", "trades dropped (buffer full, lease)")
REDIS_ERRORS = REGISTRY.counter("ingest_redis_errors_total", "failed Redis writes")
WRITTEN = REGISTRY.counter("ingest_entries_written_total", "stream entries written")
BUFFER = REGISTRY.gauge("ingest_buffer_entries", "entries waiting for Redis")
CONNECTIONS = REGISTRY.gauge("ingest_connections", "open WebSocket connections")
REFUSED = REGISTRY.counter("ingest_refused_topics_total", "topics Bybit refused to subscribe")
TRADE_LAG = REGISTRY.gauge(
    "ingest_trade_lag_seconds",
    "Receive time minus Bybit's message time (ts) of the newest trade message, worst connection",
)
REPAIR_REQUESTS = REGISTRY.counter(
    "ingest_repair_requests_total", "recent-trade requests sent to repair gaps"
)
REPAIR_ERRORS = REGISTRY.counter(
    "ingest_repair_errors_total",
    "recent-trade requests that failed (http: not reached or a status other than 200; "
    "rate-limit; refused: a retCode asking again will not change; malformed)",
    ("kind",),
)
REPAIRS = REGISTRY.counter(
    "ingest_repairs_total",
    "gaps whose repair ended: complete (every symbol), partial, unrepaired (no answer at all), "
    "abandoned (the shard went to another replica, which takes it up)",
    ("outcome",),
)
REPAIR_SYMBOLS = REGISTRY.counter(
    "ingest_repair_symbols_total",
    "symbols of gaps whose repair ended: complete, partial (the answer did not reach back to "
    "the gap's start), unrepaired (no answer within the give-up time)",
    ("outcome",),
)
REPAIRED_TRADES = REGISTRY.counter(
    "ingest_repaired_trades_total", "trades fetched back from recent-trade and written for gaps"
)
REPAIR_QUEUE = REGISTRY.gauge(
    "ingest_repair_pending_symbols", "symbols of gaps waiting for a recent-trade answer"
)
