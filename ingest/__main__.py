"""`python -m ingest` (live) and `python -m ingest replay FILE...` (history)."""

from __future__ import annotations

import argparse
import sys

from common.cli import SETTINGS_EPILOG, add_version, command_parser
from common.errors import ConfigError, RetryableError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.realtime import take_priority
from common.settings import IngestSettings, load_settings

DESCRIPTION = """\
Bybit's public trade stream (STREAMER_BYBIT_WS_URL) -> the trade streams <prefix>:{k}:trades,
one shard per crc32(symbol) % STREAMER_SHARDS; with STREAMER_KLINES_MODE=true, Bybit's own
confirmed klines -> the candle streams instead. Runs until SIGTERM/SIGINT (then drains).

sub-commands:
  replay FILE...   Bybit's trading archive (.csv, .csv.gz) or a recorded capture (.jsonl,
                   .jsonl.zst) -> the trade streams, for historical candles
                   (python -m ingest replay --help)"""


def parser() -> argparse.ArgumentParser:
    from ingest.replay import DESCRIPTION as REPLAY_DESCRIPTION
    from ingest.replay import add_arguments

    p = command_parser("python -m ingest", DESCRIPTION)
    commands = p.add_subparsers(dest="command", metavar="{replay}")
    replay = commands.add_parser(
        "replay",
        help="history files -> trade streams",
        description=REPLAY_DESCRIPTION,
        epilog=SETTINGS_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_version(replay)
    add_arguments(replay)
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.command == "replay":
        from ingest.replay import main as replay_main

        return replay_main(args)
    from ingest import service

    try:
        settings = load_settings(IngestSettings)
        take_priority(settings.realtime_priority)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    setup_logging(settings.log_level, settings.log_format, "ingest")
    try:
        symbols = service.resolve_symbols(settings)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    except RetryableError as exc:
        print(f"error: cannot load Bybit's instruments: {exc}", file=sys.stderr)
        return 1
    if settings.klines_mode:
        from ingest.klines import service as klines_service

        return run_service(
            lambda stop: klines_service.run(settings, symbols, stop), settings.shutdown_timeout_s
        )
    return run_service(
        lambda stop: service.run(settings, symbols, stop), settings.shutdown_timeout_s
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
