"""`--pregenerate-s`: the lean load plays the generator's own trades, with live-loop times."""

from __future__ import annotations

import gc
import json
import re
import time
from pathlib import Path
from typing import Any

from websockets.sync.client import connect

from common.wire import Category
from simulator import cli
from simulator.generator import Generator, GeneratorConfig
from simulator.instruments import build_universe
from tests.support.procs import python_module
from tests.support.waiting import wait_until

SYMBOLS, RATE, SEED, SLOT_MS, SECONDS = 5, 2000, 7, 10, 3


def _expected() -> dict[str, list[dict[str, Any]]]:
    """What the generator draws with these flags, slot by slot (the independent side)."""
    instruments = build_universe(Category.LINEAR, SYMBOLS, None, SEED, 0)
    generator = Generator(
        instruments, Category.LINEAR, GeneratorConfig(rate=RATE, seed=SEED, slot_ms=SLOT_MS)
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for k in range(SECONDS * 1000 // SLOT_MS):
        for batch in generator.next_slot(k * SLOT_MS):
            inst = instruments[batch.idx]
            for t in batch.trades:
                out.setdefault(inst.symbol, []).append({
                    "rel_T": t.time_ms, "p": inst.price_text(t.price), "v": inst.size_text(t.size),
                    "S": "Buy" if t.buy else "Sell", "i": t.trade_id, "seq": t.seq,
                })  # fmt: skip
    return out


def test_pregenerated_frames_are_the_generators_trades_at_live_times(tmp_path: Path) -> None:
    proc = python_module(
        "simulator", "--port", "0", "--symbols", str(SYMBOLS), "--rate", str(RATE),
        "--seed", str(SEED), "--pregenerate-s", str(SECONDS), env={},
        log_path=tmp_path / "sim.log",
    )  # fmt: skip
    try:
        proc.wait_output("simulator ready", 30)
        ready = re.search(r"simulator ready (ws://\S+)", proc.output())
        assert ready, proc.output()
        expected = _expected()
        total = sum(len(trades) for trades in expected.values())
        got: dict[str, list[dict[str, Any]]] = {}
        arrivals: list[tuple[int, int, list[int]]] = []  # (arrival, ts, trade times)
        with connect(ready.group(1)) as ws:
            topics = [f"publicTrade.{symbol}" for symbol in expected]
            ws.send(json.dumps({"op": "subscribe", "args": topics}))
            assert json.loads(ws.recv(timeout=10))["success"] is True

            def all_received() -> bool:
                while sum(len(trades) for trades in got.values()) < total:
                    message = json.loads(ws.recv(timeout=10))
                    arrival = time.time_ns() // 1_000_000
                    arrivals.append((arrival, message["ts"], [t["T"] for t in message["data"]]))
                    for t in message["data"]:
                        got.setdefault(t["s"], []).append(t)
                return True

            wait_until(all_received, 60)
        start = got["BTCUSDT"][0]["T"] - expected["BTCUSDT"][0]["rel_T"]
        assert start % SLOT_MS == 0
        assert start > 0
        for symbol, trades in expected.items():
            seen = [
                {"rel_T": t["T"] - start, **{k: t[k] for k in ("p", "v", "S", "i", "seq")}}
                for t in got[symbol]
            ]
            assert seen == trades, symbol
        for arrival, ts, times in arrivals:
            slot_end = start + (max(times) - start) // SLOT_MS * SLOT_MS + SLOT_MS
            assert ts == slot_end  # sent when its slot ended, as the live loop does
            assert min(times) >= slot_end - SLOT_MS
            assert arrival >= ts  # never before its time
    finally:
        proc.stop()


def test_pregenerate_refuses_what_it_cannot_play(tmp_path: Path) -> None:
    proc = python_module(
        "simulator", "--port", "0", "--pregenerate-s", "2", "--drop-every-s", "5",
        env={}, log_path=tmp_path / "sim.log",
    )  # fmt: skip
    assert proc.popen.wait(30) == 2
    assert "--pregenerate-s plays trades only" in proc.output()
    proc.stop()


def test_pregenerated_frames_are_out_of_every_later_collection() -> None:
    """The frames live for the whole run: a full collection that walked them stopped the
    simulator's sends for 370 ms at 20,000 trades/s × 70 s (they then went out in one burst).
    Frozen (gc.freeze) they are in no generation a collection walks."""
    args = cli.parser().parse_args(
        ["--port", "0", "--symbols", "20", "--rate", "2000", "--pregenerate-s", "2"]
    )
    try:
        sim = cli.build(args)
        assert sim.script is not None and len(sim.script.sends) > 100
        walked = {id(o) for o in gc.get_objects()}
        assert id(sim.script.sends) not in walked
        assert not any(id(send) in walked for send in sim.script.sends)
    finally:
        gc.unfreeze()
