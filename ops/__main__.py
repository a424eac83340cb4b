"""`python -m ops status` | `python -m ops verify --from T --to T`: look at a running pipeline."""

from __future__ import annotations

import argparse
import asyncio
import sys

from common.errors import ConfigError
from common.keys import Keys
from common.lifecycle import exit_with_config_error
from common.redisconn import connect
from common.settings import AggregateSettings, PublishSettings, load_settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ops", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status", help="shards, owners, streams, lag, publishers, newest candles")
    verify = commands.add_parser(
        "verify", help="recompute candles from the trade streams and compare with the published"
    )
    verify.add_argument(
        "--from",
        dest="from_ms",
        type=_time_ms,
        default=None,
        help="open time from (ms or ISO 8601 UTC); default: all retained",
    )
    verify.add_argument("--to", dest="to_ms", type=_time_ms, default=None,
                        help="open time up to, exclusive (ms or ISO 8601 UTC)")  # fmt: skip
    args = parser.parse_args(argv)
    model = PublishSettings if args.command == "status" else AggregateSettings
    try:
        settings = load_settings(model)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    if isinstance(settings, PublishSettings):
        return asyncio.run(_status(settings))
    from ops.verify import run_verify

    assert isinstance(settings, AggregateSettings)
    return asyncio.run(run_verify(settings, args.from_ms, args.to_ms))


async def _status(settings: PublishSettings) -> int:
    from ops.status import collect, render

    client = connect(settings)
    try:
        group = settings.publish_group
        status = await collect(client, Keys(settings.redis_prefix), group)
    finally:
        await client.aclose()
    print(render(status, settings.redis_prefix))
    return 0


def _time_ms(text: str) -> int:
    if text.isdigit():
        return int(text)
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


if __name__ == "__main__":
    sys.exit(main())
