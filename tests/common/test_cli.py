"""Every command answers --help (exit 0: what it does, its sub-commands, where the settings are)
and --version, without settings, Redis or an exchange."""

from __future__ import annotations

import subprocess
import sys

import pytest

from common.cli import package_version, redacted
from tests.support.procs import ROOT

COMMANDS = [
    (("ingest",), ("Bybit's public trade stream", "replay", ".env.example")),
    (("ingest", "replay"), ("FILE", "--clock-ms", "progress bar", ".env.example")),
    (("aggregate",), ("candle streams", "STREAMER_KLINE_INTERVALS", ".env.example")),
    (("publish",), ("NAME", "console, postgres, redis, websocket", ".env.example")),
    (("simulator",), ("--symbols", "--replay", "--ledger")),
    (("ops",), ("status", "verify", ".env.example")),
    (("ops", "status"), ("--json",)),
    (("ops", "verify"), ("--from", "--to")),
    (("ops", "backfill-db"), ("PostgreSQL", "STREAMER_POSTGRES_DSN")),
    (("bench",), ("--smoke", "boundary", "docs/benchmarks.md")),
]


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "STREAMER_ENV_FILE": "/nonexistent.env",
             "STREAMER_KLINE_INTERVALS": "not-an-interval"},  # help never reads settings
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip


@pytest.mark.parametrize(("command", "says"), COMMANDS, ids=" ".join)
def test_help_exits_0_and_says_what_the_command_does(
    command: tuple[str, ...], says: tuple[str, ...]
) -> None:
    out = _run(*command, "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("usage: python -m " + " ".join(command))
    for text in (*says, "--version"):
        assert text in out.stdout, text


@pytest.mark.parametrize("command", [c for c, _ in COMMANDS], ids=" ".join)
def test_version(command: tuple[str, ...]) -> None:
    out = _run(*command, "--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"python -m {' '.join(command)} {package_version()}"


def test_unknown_arguments_exit_2_with_usage() -> None:
    out = _run("aggregate", "--bogus")
    assert out.returncode == 2
    assert "usage: python -m aggregate" in out.stderr and "--bogus" in out.stderr


def test_redacted_hides_only_the_password() -> None:
    assert redacted("redis://user:pw@host:6380/0") == "redis://user:***@host:6380/0"
    assert redacted("rediss://:pw@host/1") == "rediss://:***@host/1"
    assert redacted("redis://127.0.0.1:46379/0") == "redis://127.0.0.1:46379/0"
