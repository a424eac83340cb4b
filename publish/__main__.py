"""`python -m publish [NAME...]`: the candle streams -> the consumers named."""

from __future__ import annotations

import sys

from common.cli import SETTINGS_EPILOG, command_parser
from common.errors import ConfigError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.realtime import take_priority
from common.settings import PublishSettings, load_settings
from publish.consumers.manager import ConsumerManager
from publish.service import PublishService

DESCRIPTION = """\
Reads the candle streams of every shard and hands each closed candle to the consumers named
(default: STREAMER_ENABLED_CONSUMERS): console, redis (pub/sub), websocket (the feed on
STREAMER_WEBSOCKET_PORT), or your own (STREAMER_CONSUMER_MODULES, entry points). Metrics and a
/health that reflects each consumer's lag on STREAMER_METRICS_PORT. Runs until SIGTERM/SIGINT."""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser(
        "python -m publish",
        DESCRIPTION,
        SETTINGS_EPILOG + "\n\nconsumers known here: " + ", ".join(ConsumerManager.known_names()),
    )
    parser.add_argument("names", nargs="*", metavar="NAME", help="consumers to run")
    names = parser.parse_args(sys.argv[1:] if argv is None else argv).names
    try:
        settings = load_settings(PublishSettings)
        ConsumerManager.import_modules(settings.consumer_modules)
        consumers = ConsumerManager.create(names or settings.enabled_consumers, settings)
        take_priority(settings.realtime_priority)
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
