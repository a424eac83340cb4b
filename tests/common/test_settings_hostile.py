"""No setting ever ends in a traceback: every field of every settings model, fed hostile values,
makes the real command (`python -m ingest|aggregate|publish`) exit 2 with exactly one line.

The fields are iterated from the models, so a new setting without hostile values here fails the
test (`test_every_field_has_hostile_values`) until someone says what must be refused for it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import types
import typing
from concurrent.futures import ThreadPoolExecutor
from enum import Enum
from pathlib import Path

import pytest

from common.settings import (
    ALL_MODELS,
    ENV_PREFIX,
    AggregateSettings,
    CommonSettings,
    IngestSettings,
    PublishSettings,
)
from tests.support.procs import ROOT

COMMANDS: dict[type[CommonSettings], str] = {
    IngestSettings: "ingest",
    AggregateSettings: "aggregate",
    PublishSettings: "publish",
}

HUGE = "9" * 30  # past any 64-bit integer
CONTROL = "a\x01b"

# By the field's type.
BY_KIND: dict[str, list[str]] = {
    "int": ["1.5", HUGE],
    "float": ["nan", "1e308"],
    "bool": ["maybe"],
    "choice": ["nope"],
}

# Text fields take text; what each must refuse.
BY_NAME: dict[str, list[str]] = {
    "redis_url": ["http://127.0.0.1:1", "redis://127.0.0.1:1/0" + CONTROL],
    "redis_prefix": ["a b", ""],
    "shard_ids": ["x", "1/0"],
    "metrics_host": ["not a host!", CONTROL],
    "kline_intervals": ["60m,1h", "0s", "1w,2w", "99999999999d", ","],
    "bybit_ws_url": ["ftp://127.0.0.1:1", "ws://127.0.0.1:1/" + CONTROL],
    "bybit_rest_url": ["ftp://127.0.0.1:1", "http://127.0.0.1:1/" + CONTROL],
    "bybit_symbols": ["btc usdt", ","],
    "bybit_symbols_limit": ["0", HUGE],
    "history_backfill": ["-1", "100001", "1.5"],
    "enabled_consumers": ["nope", "console,nope"],
    "redis_channel": ["", CONTROL],
    "publish_group": ["", CONTROL],
    "websocket_host": ["not a host!", ""],
    "websocket_url": ["ftp://x", CONTROL],
    "wss_auth_user": ["a:b", CONTROL],
    "wss_auth_key": [CONTROL],
    "websocket_tls_cert": ["/nonexistent/cert.pem"],
    "websocket_tls_key": ["/nonexistent/key.pem"],
    "consumer_modules": ["no.such.module_xyz", "../x"],
    "publish_replica": [CONTROL],
    "postgres_dsn": ["mysql://127.0.0.1/x", "postgresql://127.0.0.1/" + CONTROL],
    "postgres_table": ["candles; drop table x", "1candles", ""],
    "repair_requests_per_s": ["0", "121", "nan"],  # over Bybit's 600 per 5 s alone
    "repair_give_up_s": ["0", "-1", "3601"],
    "kline_repair_window_s": ["-1", "86401", "1e308"],
}

BASE_ENV = {
    "STREAMER_ENV_FILE": "/nonexistent.env",
    "STREAMER_REDIS_URL": "redis://127.0.0.1:1/0",  # nothing listens: never reached anyway
    "STREAMER_BYBIT_SYMBOLS": "BTCUSDT",
    "STREAMER_BYBIT_REST_URL": "http://127.0.0.1:1",
    "STREAMER_BYBIT_WS_URL": "ws://127.0.0.1:1/v5/public/linear",
    "STREAMER_WSS_AUTH_DISABLED": "true",
}


def _kind(annotation: object) -> str:
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _kind(args[0])
    if annotation is bool:
        return "bool"
    if annotation is int:
        return "int"
    if annotation is float:
        return "float"
    if typing.get_origin(annotation) is typing.Literal or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        return "choice"
    return "text"


def _cases() -> list[tuple[type[CommonSettings], str, str]]:
    """(model, field, value): each field once, its values spread over the models holding it."""
    cases = []
    seen: set[str] = set()
    for model in ALL_MODELS:
        for name, info in model.model_fields.items():
            if name in seen:
                continue
            seen.add(name)
            holders = [m for m in ALL_MODELS if name in m.model_fields]
            values = BY_NAME.get(name) or BY_KIND.get(_kind(info.annotation), [])
            for i, value in enumerate(values):
                cases.append((holders[i % len(holders)], name, value))
    return cases


def test_every_field_has_hostile_values() -> None:
    missing = [
        f"{m.__name__}.{name}"
        for m in ALL_MODELS
        for name, info in m.model_fields.items()
        if name not in BY_NAME and _kind(info.annotation) not in BY_KIND
    ]
    assert not missing, f"say which values these settings must refuse: {missing}"
    # every command is run
    assert {model for model, _, _ in _cases()} == set(ALL_MODELS)


def _run(case: tuple[type[CommonSettings], str, str]) -> tuple[str, int, str]:
    """(what, exit code, stderr) of the command given one hostile value. A process that logs
    anything but an `error:` line got past its settings: it is stopped at once (-9)."""
    model, name, value = case
    env = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    env.update(BASE_ENV)
    env[ENV_PREFIX + name.upper()] = value
    what = f"{COMMANDS[model]}: {ENV_PREFIX}{name.upper()}={value!r}"
    proc = subprocess.Popen(
        [sys.executable, "-m", COMMANDS[model]],
        env=env,
        cwd=Path(ROOT),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    lines = []
    for line in proc.stderr:  # ends when the process exits
        lines.append(line)
        if not line.startswith(("error: ", "Traceback", " ")) and "Error" not in line:
            proc.kill()  # a log line: it is running
            break
    return what, proc.wait(timeout=120), "".join(lines)


@pytest.mark.timeout(900)  # ~120 process starts, on a loaded 2-core machine
def test_hostile_values_exit_2_with_one_line() -> None:
    cases = _cases()
    assert len(cases) > 100
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(_run, cases))
    bad = []
    for what, code, stderr in results:
        lines = stderr.splitlines()
        if code != 2 or len(lines) != 1 or not lines[0].startswith("error: "):
            bad.append(f"{what} -> exit {code}, stderr {stderr[-600:]!r}")
    assert not bad, f"{len(bad)} of {len(results)} cases:\n" + "\n".join(bad)
