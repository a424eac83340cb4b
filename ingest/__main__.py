"""`python -m ingest` (live) and `python -m ingest replay FILE...` (history)."""

from __future__ import annotations

import sys

from common.errors import ConfigError, RetryableError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.settings import IngestSettings, load_settings


def main(argv: list[str]) -> int:
    if argv[:1] == ["replay"]:
        from ingest.replay import main as replay_main

        return replay_main(argv[1:])
    if argv:
        print(
            f"error: unknown arguments {' '.join(argv)!r}; usage: python -m ingest "
            "[replay FILE...]",
            file=sys.stderr,
        )
        return 2
    from ingest import service

    try:
        settings = load_settings(IngestSettings)
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
