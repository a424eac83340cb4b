from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.procs import Proc, python_module
from tests.support.waiting import wait_until


@dataclass
class Sim:
    proc: Proc
    ws_url: str
    http_url: str
    ledger: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.http_url + path, timeout=10) as response:
            assert response.status == 200
            return json.load(response)

    def ledger_lines(self) -> list[dict[str, Any]]:
        """The lines of trades sent and of drop windows."""
        return [line for line in self._lines() if "missed" not in line]

    def missed(self) -> list[dict[str, Any]]:
        """The trades never sent (their topic had lost its subscribers)."""
        return [line["missed"] for line in self._lines() if "missed" in line]

    def _lines(self) -> list[dict[str, Any]]:
        if not self.ledger.exists():
            return []
        text = self.ledger.read_text()
        return [json.loads(line) for line in text.splitlines() if line.endswith("}")]


def start_sim(tmp_path: Path, *args: str, name: str = "sim") -> Sim:
    ledger = tmp_path / f"{name}-ledger.jsonl"
    proc = python_module(
        "simulator", "--port", "0", "--ledger", str(ledger), *args,
        env={}, log_path=tmp_path / f"{name}.log",
    )  # fmt: skip
    proc.wait_output("simulator ready")
    match = wait_until(
        lambda: re.search(r"simulator ready (ws://\S+) (http://\S+)", proc.output()), 5
    )
    return Sim(proc, match.group(1), match.group(2), ledger)


@pytest.fixture
def sim_factory(tmp_path: Path) -> Iterator[Any]:
    started: list[Sim] = []

    def factory(*args: str, name: str = "sim") -> Sim:
        sim = start_sim(tmp_path, *args, name=name)
        started.append(sim)
        return sim

    yield factory
    for sim in started:
        assert sim.proc.stop() == 0, sim.proc.output()
