"""Candles for the publish tests, written straight into the candle streams."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path
from typing import Any

import redis

from common.keys import Keys
from common.settings import PublishSettings
from common.sharding import shard_of
from common.wire import Candle, candle_encoder, raw_number

PREFIX = "t"
USER, KEY = "alice", "s3cret:with:colons"


def candle(
    symbol: str = "BTCUSDT",
    label: str = "1m",
    interval_ms: int = 60_000,
    timestamp: int = 1_786_310_820_000,
    close: str = "65114.3",
    revision: int = 0,
) -> bytes:
    return candle_encoder.encode(
        Candle(
            symbol=symbol,
            interval=interval_ms,
            interval_label=label,
            timestamp=timestamp,
            open=raw_number("65114.2"),
            high=raw_number("65114.3"),
            low=raw_number("65113.1"),
            close=raw_number(close),
            volume=raw_number("7.035"),
            turnover=raw_number("458078.3588"),
            trade_count=55,
            buy_volume=raw_number("3.1"),
            sell_volume=raw_number("3.935"),
            revision=revision,
        )
    )


def series(count: int, symbols: int = 5, start_ms: int = 1_786_310_820_000) -> list[bytes]:
    """`count` 1m candles over `symbols` symbols, closes with more digits than a float holds."""
    return [
        candle(
            symbol=f"SYM{i % symbols}USDT",
            timestamp=start_ms + (i // symbols) * 60_000,
            close=f"0.{i + 1:04d}0000000001",
        )
        for i in range(count)
    ]


def xadd_candles(client: redis.Redis, raws: list[bytes], shards: int = 2) -> None:
    keys = Keys(PREFIX)
    pipe = client.pipeline(transaction=False)
    for raw in raws:
        symbol = raw.split(b'"symbol":"', 1)[1].split(b'"', 1)[0].decode()
        pipe.xadd(keys.klines(shard_of(symbol, shards)), {"data": raw})
    pipe.execute()


def ws_settings(port: int, **overrides: Any) -> PublishSettings:
    values: dict[str, Any] = {
        "redis_prefix": PREFIX,
        "websocket_host": "127.0.0.1",
        "websocket_port": port,
        "wss_auth_user": USER,
        "wss_auth_key": KEY,
        "websocket_ping_interval_s": 5.0,
    }
    values.update(overrides)
    return PublishSettings(_env_file=None, **values)


def basic(user: str = USER, key: str = KEY) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def self_signed(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, made with the openssl command line."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=127.0.0.1",
            "-addext", "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key
