"""Helpers of the ingest e2e tests: the simulator as the exchange, and reading back streams."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis

from common.keys import Keys
from common.sharding import shard_of
from common.wire import (
    ClockEntry,
    GapEntry,
    RepairEntry,
    SymbolsEntry,
    TradesEntry,
    entry_decoder,
)
from tests.support import replies
from tests.support.procs import Proc, python_module

PREFIX = "streamer"
KEYS = Keys(PREFIX)


@dataclass
class Sim:
    proc: Proc
    ws_url: str
    rest_url: str
    ledger: Path

    def trades(self) -> list[dict[str, Any]]:
        """The trades the exchange sent (delivered to a subscribed connection)."""
        return [t for t in _ledger_lines(self.ledger) if "drop" not in t and "missed" not in t]

    def missed(self) -> list[dict[str, Any]]:
        """The trades of topics that had lost every subscriber (a drop, a hand-over): never
        sent, still in recent-trade, so a gap repair may write them."""
        return [t["missed"] for t in _ledger_lines(self.ledger) if "missed" in t]

    def drops(self) -> list[tuple[int, int]]:
        return [
            (int(d["drop"]["from_ms"]), int(d["drop"]["to_ms"]))
            for d in _ledger_lines(self.ledger)
            if "drop" in d
        ]


def _ledger_lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in lines if line.endswith("}")]


def start_simulator(tmp_path: Path, *args: str, name: str = "sim") -> Sim:
    ledger = tmp_path / f"{name}-ledger.jsonl"
    proc = python_module(
        "simulator",
        "--port", "0", "--seed", "7", "--ledger", str(ledger), *args,
        env={},
        log_path=tmp_path / f"{name}.log",
    )  # fmt: skip
    proc.wait_output("simulator ready", 20)
    match = re.search(r"simulator ready (ws://\S+) (http://\S+)", proc.output())
    assert match, proc.output()
    return Sim(proc, match.group(1), match.group(2), ledger)


def ingest_env(sim: Sim, redis_url: str, **extra: str) -> dict[str, str]:
    env = {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": PREFIX,
        "STREAMER_BYBIT_WS_URL": sim.ws_url,
        "STREAMER_BYBIT_REST_URL": sim.rest_url,
        "STREAMER_BYBIT_LOAD_ALL_SYMBOLS": "true",
        "STREAMER_SHARDS": "3",
        "STREAMER_BYBIT_SOCKET_POOL_SIZE": "3",
        "STREAMER_LEASE_TTL_MS": "1500",
        "STREAMER_CLOCK_INTERVAL_MS": "50",
        "STREAMER_SHUTDOWN_TIMEOUT_S": "5",
    }
    env.update(extra)
    return env


def start_ingest(tmp_path: Path, env: dict[str, str], name: str = "ingest") -> Proc:
    return python_module("ingest", env=env, log_path=tmp_path / f"{name}.log")


@dataclass
class Streams:
    trades: dict[int, list[TradesEntry]] = field(default_factory=dict)
    gaps: dict[int, list[GapEntry]] = field(default_factory=dict)
    clocks: dict[int, list[ClockEntry]] = field(default_factory=dict)
    symbols: dict[int, list[SymbolsEntry]] = field(default_factory=dict)
    repairs: dict[int, list[RepairEntry]] = field(default_factory=dict)

    def unrepaired(self, shard: int) -> list[tuple[str, int, int]]:
        """(symbol, from, to) of the shard's gaps no repair entry reported yet."""
        done = {(s, r.from_ms, r.to_ms) for r in self.repairs[shard] for s in r.symbols}
        return [
            (s, g.from_ms, g.to_ms)
            for g in self.gaps[shard]
            for s in g.symbols
            if (s, g.from_ms, g.to_ms) not in done
        ]

    def trade_keys(self) -> list[tuple[int, str, str]]:
        """(shard, symbol, trade id) of every trade written, duplicates included."""
        return [
            (shard, entry.symbol, trade.trade_id)
            for shard, entries in self.trades.items()
            for entry in entries
            for trade in entry.trades
        ]


def read_streams(redis_url: str, shards: int = 3) -> Streams:
    client = redis.Redis.from_url(redis_url)
    out = Streams()
    for shard in range(shards):
        out.trades[shard], out.gaps[shard], out.clocks[shard] = [], [], []
        out.symbols[shard], out.repairs[shard] = [], []
        for _, fields in replies.entries(client.xrange(KEYS.trades(shard))):
            entry = entry_decoder.decode(fields[b"data"])
            if isinstance(entry, TradesEntry):
                out.trades[shard].append(entry)
            elif isinstance(entry, GapEntry):
                out.gaps[shard].append(entry)
            elif isinstance(entry, SymbolsEntry):
                out.symbols[shard].append(entry)
            elif isinstance(entry, RepairEntry):
                out.repairs[shard].append(entry)
            elif isinstance(entry, ClockEntry):  # live ingest writes no seeds (only replay)
                out.clocks[shard].append(entry)
    client.close()
    return out


def ledger_keys(sim: Sim, shards: int = 3, *, missed: bool = False) -> list[tuple[int, str, str]]:
    """(shard, symbol, id) of the trades sent (with `missed`: of those never sent instead)."""
    trades = sim.missed() if missed else sim.trades()
    return [(shard_of(str(t["symbol"]), shards), str(t["symbol"]), str(t["i"])) for t in trades]
