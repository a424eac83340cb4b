"""`make demo`, `make status` and `scripts/run.sh` with the real supervisord, as the README says.

Each test runs the pipeline on its own ports and in its own var directory (PIPELINE_VAR), and
gives the commands a copy of .env.example through STREAMER_ENV_FILE instead of `./.env`, so
that a developer's own .env and a `make run` of theirs are left alone.
"""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Proc
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = pytest.mark.e2e

STAGES = ("ingest-0", "aggregate-0", "publish")


def _pipeline_env(tmp_path: Path) -> dict[str, str]:
    env_file = tmp_path / ".env"
    env_file.write_text((ROOT / ".env.example").read_text())  # cp .env.example .env
    return {
        "STREAMER_ENV_FILE": str(env_file),
        "PIPELINE_VAR": str(tmp_path / "var"),
        "PIPELINE_REDIS_PORT": str(free_port()),
        "PIPELINE_METRICS_PORT": str(free_port()),
        "PIPELINE_SIMULATOR_PORT": str(free_port()),
        "STREAMER_WEBSOCKET_PORT": str(free_port()),
    }


def _stop(proc: Proc, env: dict[str, str]) -> None:
    """SIGTERM to supervisord (from its pidfile; under make it is not our child): it stops
    every stage (each drains), then exits, and make with it."""
    pidfile = Path(env["PIPELINE_VAR"]) / "supervisord.pid"
    if proc.popen.poll() is None and pidfile.exists():
        os.kill(int(pidfile.read_text()), signal.SIGTERM)
    try:
        proc.popen.wait(60)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        raise


def _supervisor_states(env: dict[str, str]) -> dict[str, str]:
    full = {**os.environ, **env}
    full.setdefault("PIPELINE_HOME", str(ROOT))
    for name, value in (("PIPELINE_INGEST_PROCS", "1"), ("PIPELINE_AGGREGATE_PROCS", "1")):
        full.setdefault(name, value)
    full.update(PIPELINE_PRIVATE_REDIS="true", PIPELINE_DEMO="true")
    answer = subprocess.run(
        [str(ROOT / ".venv/bin/supervisorctl"), "-c", str(ROOT / "supervisord.conf"), "status"],
        env=full, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    states = {}
    for line in answer.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2:
            states[parts[0].rsplit(":", 1)[-1]] = parts[1]
    return states


def test_a_configuration_error_is_shown_on_the_console_and_not_restarted(tmp_path: Path) -> None:
    env = _pipeline_env(tmp_path) | {"STREAMER_KLINE_INTERVALS": "7x", "PIPELINE_METRICS_PORT": "0"}
    run = Proc([str(ROOT / "scripts/run.sh"), "--demo"], env, tmp_path / "run.log")
    try:
        wait_until(
            lambda: all(f"exited: {stage} (exit status 2" in run.output() for stage in STAGES),
            timeout_s=90, what="every stage exiting 2",
        )  # fmt: skip
        # each stage's own error line reaches the console of `make run`
        assert run.output().count("error: STREAMER_KLINE_INTERVALS: interval '7x'") == 3
        states = wait_until(
            lambda: (s := _supervisor_states(env)) and all(s.get(x) for x in STAGES) and s,
            timeout_s=30, what="supervisorctl status",
        )  # fmt: skip
        assert {stage: states[stage] for stage in STAGES} == dict.fromkeys(STAGES, "EXITED")
        for stage in STAGES:
            assert run.output().count(f"spawned: '{stage}'") == 1, "restarted after exit 2"
    finally:
        _stop(run, env)


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text: str = answer.read().decode()
        return text


@pytest.mark.timeout(400)
def test_cp_env_example_make_demo_then_make_status(tmp_path: Path) -> None:
    env = _pipeline_env(tmp_path)
    make = ["make", "--no-print-directory", "-C", str(ROOT)]
    # every target runs `make install` first: once here, so that the two below (run at the same
    # time) do not both find the virtualenv stale and install into it at once
    subprocess.run([*make, "install"], check=True, capture_output=True, timeout=600)
    demo = Proc([*make, "demo"], env, tmp_path / "demo.log")
    try:
        status = ""

        def candles_in_status() -> bool:
            nonlocal status
            answer = subprocess.run(
                [*make, "status"], env={**os.environ, **env}, capture_output=True, text=True,
                timeout=60,
            )  # fmt: skip
            status = answer.stdout + answer.stderr
            if demo.popen.poll() is not None:
                raise AssertionError(f"make demo exited:\n{demo.output()}")
            return answer.returncode == 0 and bool(
                re.search(r"\n\s+1s\s+\d{4}-\d\d-\d\d \d\d:", status)
            )

        try:
            wait_until(candles_in_status, timeout_s=120, what="candles in make status")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{status}\n{demo.output()[-3000:]}") from None
        assert "newest closed candle per interval" in status
        out = demo.output()
        # every stage's lines reach the console, not only publish's (candles)
        for line in ("ingest started", "aggregate started", "publishing ", "[1000ms] timestamp="):
            assert line in out, f"{line!r} not on the console:\n{out[-3000:]}"
        # each process its own metrics port: base, base + 1 (aggregate), base + 2 (publish)
        base = int(env["PIPELINE_METRICS_PORT"])
        assert "streamer_ingest_trades_total" in _metrics(base)
        assert "streamer_candle_delay_seconds_bucket" in _metrics(base + 1)
        assert "streamer_publish_candles_total" in _metrics(base + 2)
        # the chart's address, printed as the README says, answers with the page and its library
        printed = re.search(r"demo: live chart at (http://\S+/chart) \(user demo, key demo\)", out)
        assert printed, out[-3000:]
        page = _get(printed.group(1), "demo", "demo")
        assert "<title>Candles" in page
        assert "LightweightCharts" in _get(printed.group(1) + "/lib.js", "demo", "demo")
    finally:
        _stop(demo, env)


def _get(url: str, user: str, key: str) -> str:
    token = base64.b64encode(f"{user}:{key}".encode()).decode()
    request = urllib.request.Request(url, headers={"Authorization": f"Basic {token}"})
    with urllib.request.urlopen(request, timeout=10) as answer:
        text: str = answer.read().decode()
        return text


@pytest.mark.parametrize(("target", "redis_kept"), [("clean", True), ("clean-data", False)])
def test_make_clean_keeps_the_private_redis_data(
    tmp_path: Path, target: str, redis_kept: bool
) -> None:
    """On a copy of the Makefile: `make clean` must not delete var/redis (the AOF)."""
    (tmp_path / "Makefile").write_text((ROOT / "Makefile").read_text())
    for path in ("var/redis/appendonly.aof", "var/log/publish.log", "var/supervisord.pid",
                 ".venv/bin/python"):  # fmt: skip
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("x")
    subprocess.run(["make", "-s", "-C", str(tmp_path), target], check=True, capture_output=True)
    assert (tmp_path / "var/redis/appendonly.aof").exists() is redis_kept
    if target == "clean":
        assert not (tmp_path / "var/log").exists() and not (tmp_path / ".venv").exists()
