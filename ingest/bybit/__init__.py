"""Bybit V5 public API: wire types and parsing."""
