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
