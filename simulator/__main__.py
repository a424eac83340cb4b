"""`python -m simulator`: flags -> logging -> run_service(simulator.run)."""

from __future__ import annotations

import asyncio

from common.errors import ConfigError
from common.lifecycle import exit_with_config_error, run_service
from common.logs import setup_logging
from common.settings import LogFormat
from simulator.cli import build, parser
from simulator.server import CLOSE_WAIT_S


def main() -> int:
    args = parser().parse_args()
    setup_logging(args.log_level.upper(), LogFormat.TEXT, "simulator")
    try:
        simulator = build(args)
    except ConfigError as exc:
        exit_with_config_error(str(exc))

    async def service(stop: asyncio.Event) -> None:
        await simulator.run(stop)

    return run_service(service, shutdown_timeout_s=CLOSE_WAIT_S + 5.0)


if __name__ == "__main__":
    raise SystemExit(main())
