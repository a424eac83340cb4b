"""Simulator throughput: trades per second delivered to one real websockets client in another
process. The simulator is asked for far more than it can do (`--rate`); the client counts the
trades it receives over a window after a warm-up. Target: >= 50,000 trades/s."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.report import Row

ROOT = Path(__file__).resolve().parents[1]

CLIENT = r"""
import asyncio, json, os, sys, time
import websockets

async def main(url, symbols, warmup_s, window_s):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        for i in range(0, len(symbols), 10):
            args = [f"publicTrade.{s}" for s in symbols[i:i + 10]]
            await ws.send(json.dumps({"op": "subscribe", "req_id": str(i), "args": args}))
        end_warm = time.monotonic() + warmup_s
        while time.monotonic() < end_warm:
            await ws.recv()
        count = 0
        start = time.monotonic()
        end = start + window_s
        while True:
            msg = await ws.recv()
            count += msg.count('"T":')
            now = time.monotonic()
            if now >= end:
                break
        print(count / (now - start), flush=True)
        os._exit(0)  # no closing handshake behind megabytes still queued for us

asyncio.run(main(sys.argv[1], sys.argv[2].split(","), float(sys.argv[3]), float(sys.argv[4])))
"""


def _trial(rate: int, symbols: int, window_s: float, ledger: bool) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        log_path = Path(tmp) / "sim.log"
        args = [
            sys.executable, "-m", "simulator", "--port", "0", "--symbols", str(symbols),
            "--rate", str(rate), "--quiet-fraction", "0", "--seed", "7",
        ]  # fmt: skip
        if ledger:
            args += ["--ledger", str(Path(tmp) / "ledger.jsonl")]
        with log_path.open("wb") as log:
            sim = subprocess.Popen(args, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
            try:
                url = _wait_ready(log_path, sim)
                names = _symbols(url)
                out = subprocess.run(
                    [sys.executable, "-c", CLIENT, url, ",".join(names), "1.0", str(window_s)],
                    cwd=ROOT, capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
                return float(out.stdout.strip().splitlines()[-1])
            finally:
                sim.terminate()
                sim.wait(10)


def _wait_ready(log_path: Path, sim: subprocess.Popen[bytes]) -> str:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        match = re.search(r"simulator ready (ws://\S+)", log_path.read_text())
        if match:
            return match.group(1)
        if sim.poll() is not None:
            raise RuntimeError(log_path.read_text())
        time.sleep(0.02)
    raise RuntimeError("simulator did not start")


def _symbols(url: str) -> list[str]:
    import json
    import urllib.request

    base = url.replace("ws://", "http://").split("/v5/")[0]
    query = "/v5/market/instruments-info?category=linear&limit=1000"
    with urllib.request.urlopen(base + query) as response:
        body = json.load(response)
    return [item["symbol"] for item in body["result"]["list"]]


def run(smoke: bool) -> list[Row]:
    trials = 1 if smoke else 5
    window_s = 1.0 if smoke else 5.0
    rows = []
    for ledger in (False, True):
        rates = [_trial(150_000, 50, window_s, ledger) for _ in range(trials)]
        what = "trades/s to one client" + (" (with --ledger)" if ledger else "")
        rows.append(
            Row("simulator", what, statistics.median(rates), "trades/s", target=">= 50,000")
        )
    return rows


if __name__ == "__main__":
    os.chdir(ROOT)
    for row in run(smoke="--smoke" in sys.argv):
        print(row)
