"""`python -m aggregate`: trade streams -> candle streams, for the shards this process owns."""

from __future__ import annotations

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
    return run_service(lambda stop: service.run(settings, stop), settings.shutdown_timeout_s)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
