"""Klines mode: Bybit's own confirmed klines, written to the candle streams exactly once."""
