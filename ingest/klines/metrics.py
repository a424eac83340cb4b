"""Klines mode's counters, in the shared registry."""

from __future__ import annotations

from common.metrics import REGISTRY

CONFIRMED = REGISTRY.counter("klines_confirmed_written_total", "confirmed candles written")
BACKFILLED = REGISTRY.counter("klines_backfilled_total", "candles written from REST backfill")
DUPLICATES = REGISTRY.counter(
    "klines_duplicates_total", "confirmed candles seen again, not written"
)
GAPS = REGISTRY.counter("klines_gaps_total", "holes in a series that backfill could not fill")
MALFORMED = REGISTRY.counter("klines_malformed_total", "kline frames that could not be understood")
UPDATES = REGISTRY.counter("klines_updates_written_total", "in-progress snapshots written")
REST_ERRORS = REGISTRY.counter("klines_rest_errors_total", "kline backfills that failed")
