"""Real processes for e2e tests: `python -m <stage>` with an environment, output to a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.waiting import wait_until

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
TESTDATA = Path(os.environ.get("BYBIT_TESTDATA") or SHARED / "testdata" / "bybit")
"""The real Bybit captures: `../shared/testdata/bybit` as CI lays it out, or `BYBIT_TESTDATA`
(a checkout elsewhere, e.g. a git worktree, points there)."""
NO_TESTDATA = "real Bybit captures not found"
"""How every capture test's skip reason starts: tests/conftest.py fails such a skip when the
folder is there (a capture test must not skip silently where CI has the captures)."""


def need_testdata(*names: str) -> None:
    """Skip the test, saying why, unless the capture folder (and these files in it) exist."""
    for path in (TESTDATA, *(TESTDATA / name for name in names)):
        if not path.exists():
            pytest.skip(f"{NO_TESTDATA}: {path} (../shared/testdata/bybit beside the repo)")


RUNNING: list[Proc] = []
"""Every process a test started; the conftest kills what a test left behind (a failed assertion
must not leave a simulator or an ingest running into the next test)."""


def kill_leftovers() -> None:
    while RUNNING:
        proc = RUNNING.pop()
        if proc.popen.poll() is None:
            proc.popen.kill()
            proc.popen.wait(10)
        proc._log.close()


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.args = args
        self.log_path = log_path
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("STREAMER_")}
        full_env.update(env)
        full_env.setdefault("STREAMER_ENV_FILE", "/nonexistent.env")
        full_env["PYTHONUNBUFFERED"] = "1"
        self._log = log_path.open("ab")
        self.popen = subprocess.Popen(
            args, env=full_env, cwd=ROOT, stdout=self._log, stderr=subprocess.STDOUT
        )
        RUNNING.append(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_output(self, text: str, timeout_s: float = 20.0) -> None:
        def seen() -> bool:
            if text in self.output():
                return True
            if self.popen.poll() is not None:
                raise AssertionError(
                    f"{self.args} exited {self.popen.returncode}:\n{self.output()}"
                )
            return False

        wait_until(seen, timeout_s, what=f"{text!r} in the output of {self.args}")

    def signal(self, signum: int) -> None:
        self.popen.send_signal(signum)

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def stop(self, timeout_s: float = 20.0) -> int:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
                raise AssertionError(f"{self.args} ignored SIGTERM:\n{self.output()}") from None
        self._log.close()
        return self.popen.returncode


def python_module(module: str, *args: str, env: dict[str, str], log_path: Path) -> Proc:
    return Proc([sys.executable, "-m", module, *args], env, log_path)
