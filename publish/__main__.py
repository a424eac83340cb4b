"""usage: python -m publish [NAME...]

Reads the candle streams of every shard and hands each candle to the consumers named (default:
STREAMER_ENABLED_CONSUMERS). Settings come from STREAMER_* variables and .env; see .env.example.
"""

from __future__ import annotations

import sys

from common.errors import ConfigError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.settings import PublishSettings, load_settings
from publish.consumers.manager import ConsumerManager
from publish.service import PublishService


def main(argv: list[str] | None = None) -> int:
    names = list(sys.argv[1:] if argv is None else argv)
    if any(name in ("-h", "--help") for name in names):
        print(__doc__.strip() + "\nConsumers: " + ", ".join(ConsumerManager.known_names()))
        return 0
    try:
        settings = load_settings(PublishSettings)
        ConsumerManager.import_modules(settings.consumer_modules)
        consumers = ConsumerManager.create(names or settings.enabled_consumers, settings)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
        return 2
    setup_logging(settings.log_level, settings.log_format, "publish")
    service = PublishService(settings, consumers)
    code = run_service(service.run, settings.shutdown_timeout_s)
    if service.start_error is not None:
        exit_with_config_error(service.start_error)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
