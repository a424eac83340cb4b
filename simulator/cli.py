"""Command line of `python -m simulator` (part of the contract, simulator/README.md), and the
wiring from parsed flags to a running simulator."""

from __future__ import annotations

import argparse
import gc
import time
from pathlib import Path

from common.cli import add_version
from common.errors import ConfigError
from common.wire import Category
from simulator.faults import DelaySpec, FaultConfig, Faults
from simulator.generator import Generator, GeneratorConfig
from simulator.instruments import build_universe
from simulator.ledger import Ledger
from simulator.market import Market
from simulator.replay import instruments_of, load_capture
from simulator.script import build_script
from simulator.server import ServerConfig, Simulator
from simulator.sources import GeneratedSource, ReplaySource, Source, replay_shift_ms


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m simulator",
        description="A local Bybit V5 public API (WebSocket at /v5/public/<category>, REST at "
        "/v5/market/...) for demos, tests and load. Flags only; it reads no STREAMER_* setting.",
    )
    add_version(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    p.add_argument("--category", choices=[c.value for c in Category], default="linear")
    p.add_argument("--symbols", type=int, default=50, help="number of trading symbols")
    p.add_argument("--symbol-list", default="", help="comma-separated names instead of --symbols")
    p.add_argument("--non-trading", type=int, default=0, help="extra PreLaunch/Closed symbols")
    p.add_argument("--rate", type=float, default=1000.0, help="trades per second, all symbols")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--quiet-fraction", type=float, default=0.1, help="symbols that never trade")
    p.add_argument("--burst-every-s", type=float, default=0.0, help="0 = no bursts")
    p.add_argument("--burst-ms", type=int, default=500)
    p.add_argument("--burst-factor", type=float, default=10.0)
    p.add_argument("--max-batch", type=int, default=1024, help="trades per message, 1..1024")
    p.add_argument(
        "--pregenerate-s", type=float, default=0.0,
        help="build this many seconds of trade frames before ready and play them as they are "
        "(a lean load for benchmarks: trade topics only; 0 = the live market loop)",
    )  # fmt: skip
    p.add_argument("--replay", type=Path, default=None, help="capture .jsonl or .jsonl.zst")
    p.add_argument("--speed", type=float, default=1.0, help="replay speed factor")
    p.add_argument("--replay-lead-s", type=float, default=1.0, help="wall time before the first")
    p.add_argument("--ledger", type=Path, default=None)
    p.add_argument("--kline-ledger", type=Path, default=None)
    p.add_argument("--kline-push-ms", type=int, default=1000)
    p.add_argument("--confirm-delay-ms", type=int, default=100)
    p.add_argument("--ack-delay-ms", type=float, default=5.0)
    p.add_argument("--idle-timeout-s", type=float, default=600.0)
    p.add_argument("--loop-ms", type=int, default=10, help="market step and generator slot")
    p.add_argument("--clock-offset-ms", type=int, default=0, help="market clock = wall + this")
    p.add_argument("--drop-every-s", type=float, default=0.0)
    p.add_argument("--delay", default="", help="fixed:MS | uniform:MIN:MAX | exp:MEAN")
    p.add_argument("--delay-rate", type=float, default=1.0, help="fraction of messages delayed")
    p.add_argument("--malformed-rate", type=float, default=0.0)
    p.add_argument("--refuse-subscribe", type=float, default=0.0, help="fraction refused")
    p.add_argument("--stall-subscribe", type=float, default=0.0, help="fraction never answered")
    p.add_argument(
        "--rest-fail-rate", type=float, default=0.0, help="fraction of recent-trade requests failed"
    )
    p.add_argument("--log-level", default="INFO")
    return p


def _check(args: argparse.Namespace) -> None:
    problems = []
    if not 1 <= args.max_batch <= 1024:
        problems.append("--max-batch must be 1..1024")
    if args.symbols < 1 and not args.symbol_list and args.replay is None:
        problems.append("--symbols must be at least 1")
    if args.rate < 0 or args.speed <= 0:
        problems.append("--rate must be >= 0 and --speed > 0")
    for name in ("quiet_fraction", "delay_rate", "malformed_rate", "rest_fail_rate"):
        if not 0 <= getattr(args, name) <= 1:
            problems.append(f"--{name.replace('_', '-')} must be between 0 and 1")
    if args.refuse_subscribe < 0 or args.stall_subscribe < 0:
        problems.append("--refuse-subscribe and --stall-subscribe must be >= 0")
    if args.refuse_subscribe + args.stall_subscribe > 1:
        problems.append("--refuse-subscribe + --stall-subscribe must be at most 1")
    if args.pregenerate_s < 0 or (args.pregenerate_s > 0 and args.replay is not None):
        problems.append("--pregenerate-s must be >= 0, and 0 with --replay")
    faulty = (
        args.ledger or args.kline_ledger or args.delay or args.drop_every_s or (args.malformed_rate)
    )
    if args.pregenerate_s > 0 and faulty:
        problems.append("--pregenerate-s plays trades only: no --ledger, --kline-ledger, "
                        "--delay, --drop-every-s or --malformed-rate with it")  # fmt: skip
    if args.loop_ms < 1 or args.kline_push_ms < 1:
        problems.append("--loop-ms and --kline-push-ms must be >= 1")
    if problems:
        raise ConfigError("\n".join(problems))


def build(args: argparse.Namespace) -> Simulator:
    """Everything but the sockets; raises ConfigError on bad flags."""
    _check(args)
    category = Category(args.category)
    start_ms = int(time.time() * 1000) + args.clock_offset_ms
    source: Source
    script = None
    if args.replay is not None:
        capture = load_capture(args.replay, category)
        instruments = instruments_of(capture, category)
        lead_ms = int(args.replay_lead_s * 1000 * args.speed)  # time for clients to subscribe
        shift = replay_shift_ms(capture, start_ms + lead_ms)
        source = ReplaySource(capture, instruments, shift)
    else:
        names = [s.strip() for s in args.symbol_list.split(",") if s.strip()] or None
        instruments = build_universe(category, args.symbols, names, args.seed, args.non_trading)
        generator = Generator(
            instruments,
            category,
            GeneratorConfig(
                rate=args.rate, seed=args.seed, slot_ms=args.loop_ms,
                quiet_fraction=args.quiet_fraction, burst_every_s=args.burst_every_s,
                burst_ms=args.burst_ms, burst_factor=args.burst_factor, max_batch=args.max_batch,
            ),
        )  # fmt: skip
        source = GeneratedSource(generator, args.loop_ms, start_ms)
        if args.pregenerate_s > 0:
            # Its frames live for the whole run: no collection walks them, neither while they
            # are drawn nor later (a full collection over them took 370 ms at 20,000 trades/s
            # × 70 s, and the sends it held up went out in one burst).
            gc.disable()
            try:
                script = build_script(
                    generator, category, instruments, args.pregenerate_s, args.loop_ms, start_ms
                )
            finally:
                gc.enable()
            gc.collect()
            gc.freeze()
            start_ms = int(time.time() * 1000) + args.clock_offset_ms  # the market clock's 0
    market = Market(
        category, instruments, source, start_ms, args.kline_push_ms, args.confirm_delay_ms
    )
    faults = Faults(
        FaultConfig(
            drop_every_s=args.drop_every_s,
            delay=DelaySpec.parse(args.delay) if args.delay else None,
            delay_rate=args.delay_rate, malformed_rate=args.malformed_rate,
            refuse_subscribe=args.refuse_subscribe, stall_subscribe=args.stall_subscribe,
            rest_fail_rate=args.rest_fail_rate,
        ),
        args.seed,
    )  # fmt: skip
    config = ServerConfig(
        args.host, args.port, args.ack_delay_ms, args.idle_timeout_s, args.loop_ms,
        args.clock_offset_ms, args.speed,
    )  # fmt: skip
    return Simulator(config, market, faults, Ledger(args.ledger), Ledger(args.kline_ledger), script)
