"""`python -m aggregate`: trade streams -> candle streams, for the shards this process owns."""

from __future__ import annotations

import asyncio
import logging
import sys

from common.errors import ConfigError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.settings import AggregateSettings, load_settings


def main(argv: list[str]) -> int:
    if argv:
        print(f"error: unknown arguments {' '.join(argv)!r}; usage: python -m aggregate",
              file=sys.stderr)  # fmt: skip
        return 2
    from aggregate import service

    try:
        settings = load_settings(AggregateSettings)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    setup_logging(settings.log_level, settings.log_format, "aggregate")
    if settings.klines_mode:
        return run_service(_idle, settings.shutdown_timeout_s)
    return run_service(lambda stop: service.run(settings, stop), settings.shutdown_timeout_s)


async def _idle(stop: asyncio.Event) -> None:
    """Klines mode: ingest writes Bybit's candles itself; stay up (supervisord, compose) idle."""
    logging.getLogger("aggregate").warning(
        "STREAMER_KLINES_MODE=true: ingest writes Bybit's own candles, there is nothing to "
        "aggregate; idle until stopped"
    )
    await stop.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
