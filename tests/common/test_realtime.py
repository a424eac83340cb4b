"""STREAMER_REALTIME_PRIORITY, on real stage processes: every thread of the process runs under
SCHED_FIFO at the priority asked (read back from the kernel), the stage does its work and drains
on SIGTERM; a priority the kernel refuses, or one out of range, exits 2 naming the setting."""

from __future__ import annotations

import ctypes
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.procs import ROOT, Proc, python_module
from tests.support.sched import may_take_realtime, policies
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.redis]

PR_CAPBSET_DROP = 24  # prctl(2)
CAP_SYS_NICE = 23  # capability(7)


def _env(redis_url: str, priority: str) -> dict[str, str]:
    return {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_SHARDS": "2",
        "STREAMER_SHARD_IDS": "0,1",
        "STREAMER_KLINE_INTERVALS": "1s",
        "STREAMER_ENABLED_CONSUMERS": "console",
        # ingest exits before it would load its symbols: nothing listens on port 9 anyway
        "STREAMER_BYBIT_SYMBOLS": "BTCUSDT",
        "STREAMER_BYBIT_REST_URL": "http://127.0.0.1:9",
        "STREAMER_BYBIT_WS_URL": "ws://127.0.0.1:9/v5/public/linear",
        "STREAMER_REALTIME_PRIORITY": priority,
        "STREAMER_SHUTDOWN_TIMEOUT_S": "5",
    }


@pytest.mark.skipif(not may_take_realtime(7), reason="needs root or an rtprio limit of 7")
@pytest.mark.parametrize(("stage", "ready"), [
    ("aggregate", "shard 1 acquired"),
    ("publish", "consumer console started"),
])  # fmt: skip
def test_a_stage_runs_every_thread_under_sched_fifo(
    stage: str, ready: str, redis_url: str, tmp_path: Path
) -> None:
    proc = python_module(stage, env=_env(redis_url, "7"), log_path=tmp_path / f"{stage}.log")
    proc.wait_output(ready)
    assert policies(proc.pid) == {(os.SCHED_FIFO, 7)}
    assert proc.stop() == 0, proc.output()

    plain = python_module(stage, env=_env(redis_url, "0"), log_path=tmp_path / "plain.log")
    plain.wait_output(ready)
    assert policies(plain.pid) == {(os.SCHED_OTHER, 0)}
    assert plain.stop() == 0, plain.output()


def _without_sys_nice() -> None:
    """In the child before exec: no CAP_SYS_NICE (root keeps the rest) and no rtprio limit."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_CAPBSET_DROP, CAP_SYS_NICE, 0, 0, 0)  # fails harmlessly when not root
    resource.setrlimit(resource.RLIMIT_RTPRIO, (0, 0))


def _run_refused(stage: str, redis_url: str, priority: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
    env |= _env(redis_url, priority) | {"STREAMER_ENV_FILE": "/nonexistent.env"}
    return subprocess.run(
        [sys.executable, "-m", stage], env=env, cwd=ROOT, capture_output=True, text=True,
        timeout=60, preexec_fn=_without_sys_nice,
    )  # fmt: skip


@pytest.mark.parametrize("stage", ["ingest", "aggregate", "publish"])
def test_a_refused_priority_exits_2_saying_what_to_do(stage: str, redis_url: str) -> None:
    done = _run_refused(stage, redis_url, "5")
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(
        "error: STREAMER_REALTIME_PRIORITY=5: the kernel refused real-time priority"
    ), done.stderr
    assert "CAP_SYS_NICE" in lines[-1] and "ulimit -r 5" in lines[-1]


def test_an_out_of_range_priority_is_a_settings_error(redis_url: str, tmp_path: Path) -> None:
    proc = Proc([sys.executable, "-m", "aggregate"], _env(redis_url, "100"), tmp_path / "a.log")
    wait_until(lambda: proc.popen.poll() is not None, 30, what="aggregate to exit")
    assert proc.popen.returncode == 2
    assert "STREAMER_REALTIME_PRIORITY" in proc.output() and "99" in proc.output()
