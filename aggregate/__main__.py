"""`python -m aggregate`: trade streams -> candle streams, for the shards this process owns."""

from __future__ import annotations

import asyncio
import logging
import sys

from common.cli import command_parser
from common.errors import ConfigError
from common.gcpolicy import quiet_offset_ms
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.realtime import take_priority
from common.settings import AggregateSettings, load_settings

DESCRIPTION = """\
The trade streams <prefix>:{k}:trades -> candle streams <prefix>:{k}:klines (one JSON candle
per entry, exact decimals), for the shards this process owns (STREAMER_SHARD_IDS, or claimed
through Redis leases). Candles at every STREAMER_KLINE_INTERVALS; a crash or restart resumes
from the checkpoint written with the candles. Runs until SIGTERM/SIGINT (then drains)."""


def main(argv: list[str]) -> int:
    command_parser("python -m aggregate", DESCRIPTION).parse_args(argv)
    from aggregate import service

    try:
        settings = load_settings(AggregateSettings)
        take_priority(settings.realtime_priority)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    setup_logging(settings.log_level, settings.log_format, "aggregate")
    if settings.klines_mode:
        return run_service(_idle, settings.shutdown_timeout_s)
    return run_service(
        lambda stop: service.run(settings, stop),
        settings.shutdown_timeout_s,
        quiet_ms=quiet_offset_ms(settings.aggregator_waiter_latency_ms),
    )


async def _idle(stop: asyncio.Event) -> None:
    """Klines mode: ingest writes Bybit's candles itself; stay up (supervisord, compose) idle."""
    logging.getLogger("aggregate").warning(
        "STREAMER_KLINES_MODE=true: ingest writes Bybit's own candles, there is nothing to "
        "aggregate; idle until stopped"
    )
    await stop.wait()


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
