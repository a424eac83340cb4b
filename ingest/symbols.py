"""Which symbols to serve: the configured list checked against Bybit, or every trading symbol."""

from __future__ import annotations

from common.errors import ConfigError
from common.settings import IngestSettings
from ingest.bybit.instruments import Instrument, check_symbols, trading_symbols


def select_symbols(settings: IngestSettings, instruments: list[Instrument]) -> list[str]:
    """The symbols to subscribe; ConfigError (one line) for unknown or non-trading ones.

    With STREAMER_BYBIT_LOAD_ALL_SYMBOLS the trading symbols are taken in alphabetical order (so
    every replica picks the same ones) up to STREAMER_BYBIT_SYMBOLS_LIMIT.
    """
    if settings.bybit_load_all_symbols:
        symbols = trading_symbols(instruments)
        if settings.bybit_symbols_limit is not None:
            symbols = symbols[: settings.bybit_symbols_limit]
        if not symbols:
            raise ConfigError(
                f"STREAMER_BYBIT_LOAD_ALL_SYMBOLS: Bybit lists no trading "
                f"{settings.bybit_category.value} symbols"
            )
        return symbols
    problems = check_symbols(settings.bybit_symbols, instruments)
    if problems:
        raise ConfigError(
            f"STREAMER_BYBIT_SYMBOLS: not trading on {settings.bybit_category.value}: "
            + "; ".join(problems)
        )
    symbols = list(settings.bybit_symbols)
    if settings.bybit_symbols_limit is not None:
        symbols = symbols[: settings.bybit_symbols_limit]
    return symbols


def refreshed_symbols(settings: IngestSettings, instruments: list[Instrument]) -> list[str]:
    """On refresh a delisted configured symbol is dropped rather than stopping the process."""
    if settings.bybit_load_all_symbols:
        return select_symbols(settings, instruments)
    trading = set(trading_symbols(instruments))
    symbols = [s for s in settings.bybit_symbols if s in trading]
    if settings.bybit_symbols_limit is not None:
        symbols = symbols[: settings.bybit_symbols_limit]
    return symbols
