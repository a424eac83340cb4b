"""Settings: one pydantic-settings model per process kind, all read from STREAMER_* variables.

Built once in each `__main__` and passed down; nothing else reads the environment. Every problem
is reported as one line naming the variable, what was wrong and what is allowed.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.errors import ConfigError
from common.intervals import BYBIT_INTERVALS_TEXT, Interval, parse_intervals
from common.wire import Category

ENV_PREFIX = "STREAMER_"
_SYMBOL = re.compile(r"^[A-Z0-9]{2,30}$")


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class KlineOpen(StrEnum):
    PREVIOUS_CLOSE = "previous_close"
    FIRST_TRADE = "first_trade"


class KlineEmpty(StrEnum):
    EMIT = "emit"
    SKIP = "skip"


def _split(value: object) -> object:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
    )


class CommonSettings(_Base):
    """What every process needs: Redis, sharding, intervals, mode, logging, lifecycle."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_cluster: bool = False
    redis_prefix: str = "streamer"
    shards: int = Field(default=4, ge=1, le=1024)
    shard_ids: str = ""
    kline_intervals: Annotated[tuple[Interval, ...], NoDecode] = parse_intervals("1m,5m,1h")
    klines_mode: bool = False
    bybit_category: Category = Category.LINEAR
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"
    shutdown_timeout_s: float = Field(default=10.0, gt=0, le=600)
    lease_ttl_ms: int = Field(default=3000, ge=500, le=600_000)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"{value!r} is not a Redis URL; allowed: redis://, rediss://, unix://")
        return value

    @field_validator("redis_prefix")
    @classmethod
    def _check_prefix(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z0-9_.-]{1,64}$", value):
            raise ValueError("allowed: 1-64 characters of letters, digits, '_', '.', '-'")
        return value

    @field_validator("kline_intervals", mode="before")
    @classmethod
    def _parse_intervals(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return parse_intervals(value)
            except ConfigError as exc:
                raise ValueError(str(exc)) from None
        return value

    @model_validator(mode="after")
    def _check_shard_ids(self) -> CommonSettings:
        try:
            parse_shard_ids(self.shard_ids, self.shards)
        except ConfigError as exc:
            raise ValueError(f"STREAMER_SHARD_IDS: {exc}") from None
        return self

    def fixed_shards(self) -> tuple[int, ...] | None:
        """The shards named by STREAMER_SHARD_IDS, or None to claim shards through leases."""
        return parse_shard_ids(self.shard_ids, self.shards)


def parse_shard_ids(text: str, shards: int) -> tuple[int, ...] | None:
    """'' or 'auto' -> None (leases); '0,2' -> (0, 2); 'i/n' -> every shard k with k % n == i."""
    text = text.strip()
    if text in ("", "auto"):
        return None
    if "/" in text:
        index_text, _, count_text = text.partition("/")
        if not (index_text.strip().isdigit() and count_text.strip().isdigit()):
            raise ConfigError(f"{text!r}: use '<index>/<count>', e.g. 0/2")
        index, count = int(index_text), int(count_text)
        if count < 1 or index >= count:
            raise ConfigError(f"{text!r}: index must be below count")
        return tuple(k for k in range(shards) if k % count == index)
    ids: list[int] = []
    for raw in text.split(","):
        part = raw.strip()
        if not part.isdigit() or int(part) >= shards:
            raise ConfigError(
                f"{part!r} is not a shard id; allowed: 0..{shards - 1}, "
                "a comma list, '<index>/<count>', or 'auto'"
            )
        ids.append(int(part))
    return tuple(sorted(set(ids)))


class IngestSettings(CommonSettings):
    bybit_ws_url: str = ""
    bybit_rest_url: str = "https://api.bybit.com"
    bybit_load_all_symbols: bool = False
    bybit_symbols: Annotated[list[str], NoDecode] = Field(default_factory=list)
    bybit_symbols_limit: int | None = Field(default=None, ge=1)
    bybit_socket_pool_size: int = Field(default=5, ge=1, le=100)
    bybit_ping_interval_s: float = Field(default=20.0, gt=0, le=300)
    bybit_dead_after_s: float = Field(default=30.0, gt=0, le=600)
    bybit_symbols_refresh_s: float = Field(default=300.0, ge=0)
    bybit_rest_timeout_s: float = Field(default=10.0, gt=0, le=120)
    trades_retention_s: int = Field(default=3600, ge=10)
    clock_interval_ms: int = Field(default=20, ge=1, le=10_000)
    ingest_buffer_max: int = Field(default=200_000, ge=100)
    ingest_batch_max: int = Field(default=1000, ge=1, le=100_000)
    ingest_standby_s: float = Field(default=0.0, ge=0, le=600)
    # Klines mode: ingest writes the candle streams itself (same names as the aggregator's).
    kline_updates_ms: int = Field(default=0, ge=0, le=3_600_000)
    klines_maxlen: int = Field(default=1_000_000, ge=1000)
    updates_maxlen: int = Field(default=10_000, ge=100)
    # Read only to warn that waiter mode does not apply in klines mode when it was set.
    aggregator_waiter_mode_enabled: bool = True

    @field_validator("bybit_symbols", mode="before")
    @classmethod
    def _split_symbols(cls, value: object) -> object:
        return _split(value)

    @field_validator("bybit_symbols")
    @classmethod
    def _check_symbols(cls, value: list[str]) -> list[str]:
        bad = [s for s in value if not _SYMBOL.match(s)]
        if bad:
            raise ValueError(f"not Bybit symbols: {', '.join(bad)}; allowed: uppercase A-Z and 0-9")
        return list(dict.fromkeys(value))

    @field_validator("bybit_symbols_limit", mode="before")
    @classmethod
    def _empty_limit(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("bybit_ws_url", "bybit_rest_url")
    @classmethod
    def _check_urls(cls, value: str, info: Any) -> str:
        schemes = (
            ("ws://", "wss://") if info.field_name == "bybit_ws_url" else ("http://", "https://")
        )
        if value and not value.startswith(schemes):
            raise ValueError(f"{value!r} is not a URL; allowed schemes: {', '.join(schemes)}")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _check_symbol_source(self) -> IngestSettings:
        if not self.bybit_load_all_symbols and not self.bybit_symbols:
            raise ValueError(
                "STREAMER_BYBIT_SYMBOLS is empty; name symbols (e.g. BTCUSDT,ETHUSDT) "
                "or set STREAMER_BYBIT_LOAD_ALL_SYMBOLS=true"
            )
        if self.klines_mode:
            check_klines_mode_intervals(self.kline_intervals)
        return self

    @property
    def ws_url(self) -> str:
        return self.bybit_ws_url or f"wss://stream.bybit.com/v5/public/{self.bybit_category.value}"


def check_klines_mode_intervals(intervals: tuple[Interval, ...]) -> None:
    bad = [i.label for i in intervals if i.bybit_code is None]
    if bad:
        raise ValueError(
            f"STREAMER_KLINE_INTERVALS: {', '.join(bad)} not available in klines mode; "
            f"allowed: {BYBIT_INTERVALS_TEXT}"
        )


class AggregateSettings(CommonSettings):
    aggregator_waiter_mode_enabled: bool = True
    aggregator_waiter_latency_ms: int = Field(default=80, ge=0, le=60_000)
    aggregator_batch: int = Field(default=2000, ge=1, le=100_000)
    kline_open: KlineOpen = KlineOpen.PREVIOUS_CLOSE
    kline_empty: KlineEmpty = KlineEmpty.EMIT
    kline_revision_window_s: float = Field(default=10.0, ge=0, le=86_400)
    kline_updates_ms: int = Field(default=0, ge=0, le=3_600_000)
    klines_maxlen: int = Field(default=1_000_000, ge=1000)
    updates_maxlen: int = Field(default=10_000, ge=100)


class PublishSettings(CommonSettings):
    enabled_consumers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["console"])
    redis_channel: str = "klines"
    publish_group: str = "publish"
    publish_batch: int = Field(default=1000, ge=1, le=100_000)
    websocket_host: str = "127.0.0.1"
    websocket_port: int = Field(default=9500, ge=1, le=65535)
    websocket_url: str = ""
    wss_auth_user: str = ""
    wss_auth_key: str = ""
    wss_auth_disabled: bool = False
    websocket_tls_cert: Path | None = None
    websocket_tls_key: Path | None = None
    websocket_max_clients: int = Field(default=1000, ge=1)
    websocket_client_buffer: int = Field(default=1000, ge=1)
    websocket_max_frame_candles: int = Field(default=100, ge=1)
    websocket_ping_interval_s: float = Field(default=20.0, gt=0)
    consumer_queue_max: int = Field(default=100_000, ge=10)
    consumer_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    publish_replica: str = ""
    publish_claim_idle_ms: int = Field(default=30_000, ge=100, le=86_400_000)
    websocket_compression: bool = False
    websocket_updates: bool = False

    @field_validator("enabled_consumers", "consumer_modules", mode="before")
    @classmethod
    def _split_consumers(cls, value: object) -> object:
        return _split(value)

    @field_validator("websocket_tls_cert", "websocket_tls_key", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> PublishSettings:
        if (self.websocket_tls_cert is None) != (self.websocket_tls_key is None):
            raise ValueError(
                "STREAMER_WEBSOCKET_TLS_CERT and STREAMER_WEBSOCKET_TLS_KEY go together; set both"
            )
        return self


ALL_MODELS: tuple[type[CommonSettings], ...] = (IngestSettings, AggregateSettings, PublishSettings)
# Variables read by tools around the processes (compose, Makefile), not by a settings model.
OTHER_KNOWN = frozenset({"STREAMER_HOST", "STREAMER_ENV_FILE"})

S = TypeVar("S", bound=CommonSettings)


def known_variables() -> frozenset[str]:
    names = {ENV_PREFIX + name.upper() for model in ALL_MODELS for name in model.model_fields}
    return frozenset(names) | OTHER_KNOWN


def load_settings(model: type[S]) -> S:
    """Build `model` from the environment and `.env`; raise ConfigError listing every problem.

    `STREAMER_ENV_FILE` names another dotenv file than `./.env`.
    """
    env_file = os.environ.get("STREAMER_ENV_FILE", ".env")
    env: dict[str, str] = dict(_read_dotenv(Path(env_file)))
    env.update(os.environ)
    problems = _unknown_variables(env)
    try:
        settings = model(_env_file=env_file)
    except ValidationError as exc:
        problems.extend(_describe(exc))
        raise ConfigError("\n".join(problems)) from None
    if problems:
        raise ConfigError("\n".join(problems))
    return settings


def _read_dotenv(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {key: value or "" for key, value in dotenv_values(path).items()}


def _unknown_variables(env: Mapping[str, str]) -> list[str]:
    known = known_variables()
    problems = []
    for name in sorted(env):
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in known:
            close = difflib.get_close_matches(upper, known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            problems.append(f"{upper}: unknown setting{hint}")
    return problems


def _describe(exc: ValidationError) -> list[str]:
    lines = []
    for error in exc.errors():
        loc = [str(part) for part in error["loc"]]
        message = str(error["msg"]).removeprefix("Value error, ")
        if loc:
            lines.append(f"{ENV_PREFIX}{loc[0].upper()}: {message} (got {error.get('input')!r})")
        elif message.startswith(ENV_PREFIX):
            lines.append(message)
        else:
            lines.append(f"settings: {message}")
    return lines
