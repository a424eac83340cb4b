"""`python -m ops status [--json]` | `python -m ops verify [--from T] [--to T]`: look at a running
pipeline, from Redis alone. `python -m ops backfill-db`: the history store and the candle streams
into the postgres consumer's table."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable

from common.cli import add_version, command_parser, redacted
from common.errors import ConfigError
from common.keys import Keys
from common.lifecycle import exit_with_config_error
from common.redisconn import connect
from common.rediserrors import REDIS_DOWN
from common.settings import AggregateSettings, CommonSettings, PublishSettings, load_settings

DESCRIPTION = """\
Look at a running pipeline, from Redis alone (STREAMER_REDIS_URL, STREAMER_REDIS_PREFIX).
`make status` / `make verify` run these against the pipeline `make run` started.

sub-commands:
  status   shards and their owners, stream lengths and lag, publishers, the newest candle of
           every interval, and whether that is healthy; exit 0 healthy, 1 not (or Redis down)
  verify   recompute candles from the trade streams, compare them with the published ones;
           exit 0 equal, 1 a difference (or Redis down)"""


def main(argv: list[str] | None = None) -> int:
    parser = command_parser("python -m ops", DESCRIPTION)
    commands = parser.add_subparsers(
        dest="command", required=True, metavar="{status,verify,backfill-db}"
    )
    status = commands.add_parser("status", help="the pipeline at a glance; exit 1 if unhealthy")
    status.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    verify = commands.add_parser(
        "verify", help="recompute candles from the trade streams and compare with the published"
    )
    for sub in (status, verify):
        add_version(sub)
    verify.add_argument(
        "--from", dest="from_ms", type=_time_ms, default=None,
        help="open time from (ms or ISO 8601 UTC); default: all retained",
    )  # fmt: skip
    verify.add_argument(
        "--to", dest="to_ms", type=_time_ms, default=None,
        help="open time up to, exclusive (ms or ISO 8601 UTC)",
    )  # fmt: skip
    backfill = commands.add_parser(
        "backfill-db",
        help="upsert every candle Redis holds (history store, candle streams) into PostgreSQL",
        description="Upsert every candle Redis holds (the history store, then the candle "
        "streams) into the PostgreSQL table of STREAMER_POSTGRES_DSN; idempotent.",
    )
    add_version(backfill)
    args = parser.parse_args(argv)
    model: type[CommonSettings] = AggregateSettings if args.command == "verify" else PublishSettings
    try:
        settings = load_settings(model)
    except ConfigError as exc:
        exit_with_config_error(str(exc))
    if isinstance(settings, PublishSettings) and args.command == "backfill-db":
        from ops.backfill_db import run_backfill

        return _redis_guarded(settings, lambda: run_backfill(settings))
    if isinstance(settings, PublishSettings):
        return _redis_guarded(settings, lambda: _status(settings, json=args.json))
    from ops.verify import run_verify

    assert isinstance(settings, AggregateSettings)
    return _redis_guarded(settings, lambda: run_verify(settings, args.from_ms, args.to_ms))


def _redis_guarded(settings: CommonSettings, work: Callable[[], Awaitable[int]]) -> int:
    """Redis down or unreachable: one line and exit 1, not a traceback."""

    async def run() -> int:
        return await work()

    try:
        return asyncio.run(run())
    except REDIS_DOWN as exc:
        print(f"error: Redis at {redacted(settings.redis_url)}: {exc}", file=sys.stderr)
        return 1


async def _status(settings: PublishSettings, *, json: bool) -> int:
    from ops.status import as_json, collect, render

    client = connect(settings)
    try:
        status = await collect(client, Keys(settings.redis_prefix), settings.publish_group)
    finally:
        await client.aclose()
    if json:
        sys.stdout.write(as_json(status).decode() + "\n")
    else:
        print(render(status, settings.redis_prefix))
    return 0 if not status.problems() else 1


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
