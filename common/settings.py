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

from pydantic import AfterValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.errors import ConfigError
from common.intervals import BYBIT_INTERVALS_TEXT, Interval, parse_intervals
from common.wire import Category

ENV_PREFIX = "STREAMER_"
_MODULE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HOST = re.compile(r"^(?:[A-Za-z0-9_.-]{1,253}|\[?[0-9A-Fa-f:.]{2,45}\]?)$")
_BIG = 1_000_000_000  # an upper bound for counts and lengths: no setting holds an unbounded int
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
# Bybit's symbols: BTCUSDT, 1000PEPEUSDT, dated futures BTC-26DEC25 / BTCUSDT-26DEC25, options
# BTC-26DEC25-100000-C: uppercase letters, digits and '-' ('_' and '.' allowed for safety).
SYMBOL_TEXT = r"[A-Z0-9][A-Z0-9._-]{1,39}"
_SYMBOL = re.compile(f"^{SYMBOL_TEXT}$")
# Names Kubernetes injects for a Service named `streamer` (docker links too): not settings.
_KUBERNETES = re.compile(
    r"^STREAMER_(SERVICE_HOST|SERVICE_PORT(_[A-Z0-9_]+)?|PORT(_\d+_(TCP|UDP|SCTP)(_(PROTO|PORT|ADDR))?)?)$"
)
_notes: list[str] = []  # debug lines from before logging is set up: setup_logging emits them


def take_notes() -> list[str]:
    notes, _notes[:] = list(_notes), []
    return notes


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


def _check_host(value: str) -> str:
    if not _HOST.match(value):
        raise ValueError(f"{value!r} is not a host name or IP address (e.g. 127.0.0.1, 0.0.0.0)")
    return value


class _Base(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        validate_default=True,
        allow_inf_nan=False,
    )

    @field_validator("*")
    @classmethod
    def _no_control_characters(cls, value: object) -> object:
        """No setting holds a control character (a pasted newline, a stray escape)."""
        texts = value if isinstance(value, list) else [value]
        if any(isinstance(t, str | Path) and _CONTROL.search(str(t)) for t in texts):
            raise ValueError("control characters are not allowed")
        return value


class CommonSettings(_Base):
    """What every process needs: Redis, sharding, intervals, mode, logging, lifecycle."""

    redis_url: str = DEFAULT_REDIS_URL
    redis_cluster: bool = False
    redis_prefix: str = "streamer"
    shards: int = Field(default=4, ge=1, le=1024)
    shard_ids: str = ""
    kline_intervals: Annotated[tuple[Interval, ...], NoDecode] = parse_intervals("1m,5m,1h")
    klines_mode: bool = False
    kline_revision_window_s: float = Field(default=10.0, ge=0, le=86_400)
    kline_repair_window_s: float = Field(default=300.0, ge=0, le=86_400)
    bybit_category: Category = Category.LINEAR
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    log_format: LogFormat = LogFormat.TEXT
    metrics_port: int = Field(default=0, ge=0, le=65535)
    metrics_host: Annotated[str, AfterValidator(_check_host)] = "127.0.0.1"
    shutdown_timeout_s: float = Field(default=10.0, gt=0, le=600)
    lease_ttl_ms: int = Field(default=3000, ge=500, le=600_000)
    history_candles: int = Field(default=1000, ge=1, le=1_000_000)
    realtime_priority: int = Field(default=0, ge=0, le=99)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("metrics_port", mode="before")
    @classmethod
    def _port_plus_offsets(cls, value: object) -> object:
        """`<base>+<n>[+<m>...]` = their sum (a base of 0 stays 0 = off): supervisord.conf gives
        each process its own port this way, as supervisord cannot add."""
        if isinstance(value, str) and "+" in value:
            terms = [term.strip() for term in value.split("+")]
            if not all(term.isdigit() for term in terms):
                raise ValueError(f"{value!r}: use a port, or '<base>+<offset>', e.g. 9100+2")
            return sum(map(int, terms)) if int(terms[0]) else 0
        return value

    @field_validator("redis_url", mode="before")
    @classmethod
    def _default_redis_url(cls, value: object) -> object:
        """Empty (as .env.example has it) = the default; `make` then uses its private Redis."""
        return DEFAULT_REDIS_URL if value == "" else value

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
    bybit_symbols_limit: int | None = Field(default=None, ge=1, le=100_000)
    bybit_socket_pool_size: int = Field(default=5, ge=1, le=100)
    bybit_ping_interval_s: float = Field(default=20.0, gt=0, le=300)
    bybit_dead_after_s: float = Field(default=30.0, gt=0, le=600)
    bybit_symbols_refresh_s: float = Field(default=300.0, ge=0, le=86_400)
    bybit_rest_timeout_s: float = Field(default=10.0, gt=0, le=120)
    trades_retention_s: int = Field(default=3600, ge=10, le=31_536_000)
    clock_interval_ms: int = Field(default=20, ge=1, le=10_000)
    ingest_buffer_max: int = Field(default=200_000, ge=100, le=_BIG)
    ingest_batch_max: int = Field(default=1000, ge=1, le=100_000)
    ingest_gather_ms: int = Field(default=3, ge=0, le=1000)
    ingest_standby_s: float = Field(default=0.0, ge=0, le=600)
    history_backfill: int = Field(default=0, ge=0, le=100_000)
    repair_enabled: bool = True
    repair_requests_per_s: float = Field(default=20.0, gt=0, le=120)
    repair_give_up_s: float = Field(default=60.0, gt=0, le=3600)
    # Klines mode: ingest writes the candle streams itself (same names as the aggregator's).
    kline_updates_ms: int = Field(default=0, ge=0, le=3_600_000)
    klines_maxlen: int = Field(default=1_000_000, ge=1000, le=_BIG)
    updates_maxlen: int = Field(default=10_000, ge=100, le=_BIG)
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
            raise ValueError(
                f"not Bybit symbols: {', '.join(bad)}; allowed: 2-40 of uppercase A-Z, 0-9 and "
                "'-' (e.g. BTCUSDT, BTC-26DEC25)"
            )
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
    kline_updates_ms: int = Field(default=0, ge=0, le=3_600_000)
    klines_maxlen: int = Field(default=1_000_000, ge=1000, le=_BIG)
    updates_maxlen: int = Field(default=10_000, ge=100, le=_BIG)


class PublishSettings(CommonSettings):
    enabled_consumers: Annotated[list[str], NoDecode] = Field(default_factory=lambda: ["console"])
    redis_channel: str = Field(default="klines", min_length=1)
    publish_group: str = Field(default="publish", min_length=1)
    publish_batch: int = Field(default=1000, ge=1, le=100_000)
    websocket_host: Annotated[str, AfterValidator(_check_host)] = "127.0.0.1"
    websocket_port: int = Field(default=9500, ge=1, le=65535)
    websocket_url: str = ""
    wss_auth_user: str = ""
    wss_auth_key: str = ""
    wss_auth_disabled: bool = False
    websocket_tls_cert: Path | None = None
    websocket_tls_key: Path | None = None
    websocket_max_clients: int = Field(default=1000, ge=1, le=1_000_000)
    websocket_client_buffer: int = Field(default=1000, ge=1, le=1_000_000)
    websocket_max_frame_candles: int = Field(default=100, ge=1, le=100_000)
    websocket_ping_interval_s: float = Field(default=20.0, gt=0, le=3600)
    consumer_queue_max: int = Field(default=100_000, ge=10, le=_BIG)
    consumer_max_failures: int = Field(default=10, ge=1, le=1_000_000)
    consumer_health_lag_s: float = Field(default=60.0, gt=0, le=86_400)
    consumer_modules: Annotated[list[str], NoDecode] = Field(default_factory=list)
    publish_replica: str = ""
    publish_claim_idle_ms: int = Field(default=30_000, ge=100, le=86_400_000)
    websocket_compression: bool = False
    websocket_updates: bool = False
    postgres_dsn: str = ""
    postgres_table: str = "candles"
    postgres_batch: int = Field(default=2000, ge=1, le=100_000)
    postgres_connect_timeout_s: float = Field(default=5.0, ge=1, le=600)

    @field_validator("enabled_consumers", "consumer_modules", mode="before")
    @classmethod
    def _split_consumers(cls, value: object) -> object:
        return _split(value)

    @field_validator("consumer_modules")
    @classmethod
    def _check_modules(cls, value: list[str]) -> list[str]:
        bad = [m for m in value if not _MODULE.match(m)]
        if bad:
            raise ValueError(f"not Python module names: {', '.join(bad)} (e.g. my.consumers)")
        return value

    @field_validator("postgres_dsn")
    @classmethod
    def _check_postgres_dsn(cls, value: str) -> str:
        if value and not value.startswith(("postgresql://", "postgres://")):
            raise ValueError(
                "not a libpq URL; allowed: postgresql://[user[:password]@][host][:port][/db]"
            )
        return value

    @field_validator("postgres_table")
    @classmethod
    def _check_postgres_table(cls, value: str) -> str:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]{0,52}(\.[A-Za-z_][A-Za-z0-9_]{0,52})?$", value):
            raise ValueError(
                "allowed: 'name' or 'schema.name', each a letter or '_' then up to 52 letters, "
                "digits or '_'"
            )
        return value

    @field_validator("websocket_tls_cert", "websocket_tls_key", mode="before")
    @classmethod
    def _empty_path(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("websocket_tls_cert", "websocket_tls_key")
    @classmethod
    def _readable_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"{str(value)!r} is not a readable file")
        return value

    @field_validator("websocket_url")
    @classmethod
    def _check_public_url(cls, value: str) -> str:
        if value and not value.startswith(("ws://", "wss://", "http://", "https://")):
            raise ValueError(f"{value!r} is not a URL; allowed schemes: ws://, wss://")
        return value

    @field_validator("wss_auth_user")
    @classmethod
    def _check_user(cls, value: str) -> str:
        if ":" in value:
            raise ValueError("HTTP Basic auth user names cannot hold ':'")
        return value

    @model_validator(mode="after")
    def _check_tls_pair(self) -> PublishSettings:
        if (self.websocket_tls_cert is None) != (self.websocket_tls_key is None):
            raise ValueError(
                "STREAMER_WEBSOCKET_TLS_CERT and STREAMER_WEBSOCKET_TLS_KEY go together; set both"
            )
        return self


ALL_MODELS: tuple[type[CommonSettings], ...] = (IngestSettings, AggregateSettings, PublishSettings)
# Variables read by tools around the processes (compose, Makefile), not by a settings model.
OTHER_KNOWN = frozenset(
    {
        "STREAMER_HOST",
        "STREAMER_ENV_FILE",
        "STREAMER_WEBSOCKET_HOST_PORT",
        "STREAMER_COMPOSE_CONSUMERS",
    }
)

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
        if upper.startswith(ENV_PREFIX) and upper not in known and _KUBERNETES.match(upper):
            _notes.append(f"{upper}: ignored (a name Kubernetes injects for a Service 'streamer')")
        elif upper.startswith(ENV_PREFIX) and upper not in known:
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
            shown = "a hidden value" if loc[0].endswith("dsn") else repr(error.get("input"))
            lines.append(f"{ENV_PREFIX}{loc[0].upper()}: {message} (got {shown})")
        elif message.startswith(ENV_PREFIX):
            lines.append(message)
        else:
            lines.append(f"settings: {message}")
    return lines
