"""The suite's skip rule: every skip is listed with its reason, and a real-capture test that
skips although the capture folder is there fails the run (tests/conftest.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.procs import ROOT

TEST = "tests/aggregate/test_capture.py::test_the_capture_holds_the_snapshots_its_readme_counts"


def run_with_testdata(folder: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BYBIT_TESTDATA": str(folder)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", TEST],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_capture_tests_skip_with_their_reason_where_the_folder_is_absent(tmp_path: Path) -> None:
    done = run_with_testdata(tmp_path / "absent")
    assert done.returncode == 0, done.stdout
    assert f"SKIPPED [1] {TEST}: real Bybit captures not found: {tmp_path / 'absent'}" in (
        done.stdout
    )


def test_a_capture_test_that_skips_although_the_folder_is_there_fails(tmp_path: Path) -> None:
    done = run_with_testdata(tmp_path)  # there, but without the capture files
    assert done.returncode == 1, done.stdout
    assert f"{tmp_path} is there, but this real-capture test skipped" in done.stdout
    assert "1 failed" in done.stdout
