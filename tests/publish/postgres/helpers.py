"""Candles to feed the postgres consumer, and both sides of the comparison: what the candles say
(decoded here, independently of the consumer's own decoding) and what the table holds."""

from __future__ import annotations

from decimal import Decimal

import psycopg

from common.wire import Candle, CandleView, candle_encoder, candle_view_decoder, raw_number

RowKey = tuple[str, str, str, int]
NUMBER_FIELDS = ("open", "high", "low", "close", "volume", "turnover", "buy_volume", "sell_volume")


def candle(
    symbol: str = "BTCUSDT",
    open_ms: int = 1_786_310_820_000,
    *,
    revision: int = 0,
    close: str = "65114.3",
    label: str = "1m",
    interval_ms: int = 60_000,
    gap: bool = False,
    category: str = "linear",
) -> bytes:
    return candle_encoder.encode(
        Candle(
            symbol=symbol, interval=interval_ms, interval_label=label, timestamp=open_ms,
            open=raw_number("65114.2"), high=raw_number("65114.30"), low=raw_number("0.00000001"),
            close=raw_number(close), volume=raw_number("7.035"),
            turnover=raw_number("458078.35880000001"), trade_count=55 + revision,
            buy_volume=raw_number("3.1"), sell_volume=raw_number("3.935"),
            revision=revision, category=category, gap=gap,
        )
    )  # fmt: skip


def row_of(view: CandleView) -> tuple[str, ...]:
    """The stored values of a candle, decimals as their exact text."""
    numbers = tuple(str(Decimal(getattr(view, name))) for name in NUMBER_FIELDS)
    return (
        str(view.interval), *numbers, str(view.trade_count), str(view.revision),
        str(view.gap), view.source,
    )  # fmt: skip


def expected_rows(raws: list[bytes]) -> dict[RowKey, tuple[str, ...]]:
    """The latest revision of every candle, as the table must hold it."""
    latest: dict[RowKey, CandleView] = {}
    for raw in raws:
        view = candle_view_decoder.decode(raw)
        key = (view.category, view.symbol, view.interval_label, view.timestamp)
        if key not in latest or view.revision >= latest[key].revision:
            latest[key] = view
    return {key: row_of(view) for key, view in latest.items()}


def table_rows(dsn: str, table: str = "candles") -> dict[RowKey, tuple[str, ...]]:
    """Every row of the table, with the same shape as `expected_rows`; fails on a doubled key."""
    with psycopg.connect(dsn) as conn:
        cur = conn.execute(
            "SELECT category, symbol, interval_label, "
            "(extract(epoch FROM open_time) * 1000)::bigint, interval_ms, open, high, low, close, "
            f"volume, turnover, buy_volume, sell_volume, trade_count, revision, gap, source "
            f"FROM {table}"
        )
        out: dict[RowKey, tuple[str, ...]] = {}
        for category, symbol, label, open_ms, interval_ms, *rest in cur.fetchall():
            key = (category, symbol, label, int(open_ms))
            assert key not in out, f"row {key} doubled"
            out[key] = (str(interval_ms), *(str(v) for v in rest))
        return out
