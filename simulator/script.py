"""A pre-built load (`--pregenerate-s`): every trade frame of the run made before the simulator
is ready, then played at its time with no per-trade work, so a benchmark's load costs little of
the CPU the pipeline under test shares.

The trades are the generator's, slot by slot, exactly as the live market loop draws them with
the same seed and flags (slot k starts at `start_ms + k × slot_ms`). Each message is sent when its
slot has ended, stamped `ts` = that moment, as the live loop does; its frame (a WebSocket text
frame, serialized once) goes straight to each subscriber's socket. Only trade topics play: kline
topics, recent-trade and the kline REST answer do not follow these trades.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

from websockets.frames import Frame, Opcode

from common.wire import Category
from simulator.frames import encode_trades
from simulator.generator import Batch, Generator
from simulator.instruments import Instrument

log = logging.getLogger(__name__)
LEAD_MS = 1000  # wall time between the script being ready and its first trade, at least


@dataclass(frozen=True)
class Send:
    at_ms: int  # market time it is due (its slot's end); also the message's `ts`
    topic: str
    frame: bytes  # the serialized WebSocket text frame


@dataclass(frozen=True)
class Script:
    start_ms: int  # the first slot's start
    sends: list[Send]  # in send order
    trades: int


def build_script(
    generator: Generator,
    category: Category,
    instruments: list[Instrument],
    seconds: float,
    slot_ms: int,
    now_ms: int,
) -> Script:
    """Draw `seconds` of slots, then encode them against a start far enough ahead that encoding
    ends before it (estimated from the draw's own time; slots it still overtakes are dropped)."""
    began = time.monotonic()
    slots = [generator.next_slot(k * slot_ms) for k in range(math.ceil(seconds * 1000 / slot_ms))]
    drawn_ms = (time.monotonic() - began) * 1000
    ahead_ms = now_ms + int(drawn_ms * 1.5) + LEAD_MS
    start_ms = ahead_ms - ahead_ms % slot_ms + slot_ms
    sends = []
    trades = 0
    for k, batches in enumerate(slots):
        at_ms = start_ms + (k + 1) * slot_ms
        for batch in batches:
            sends.append(_send(category, instruments, batch, start_ms, at_ms))
            trades += len(batch.trades)
    return Script(start_ms, sends, trades)


def _send(
    category: Category, instruments: list[Instrument], batch: Batch, start_ms: int, at_ms: int
) -> Send:
    moved = [t._replace(time_ms=t.time_ms + start_ms) for t in batch.trades]
    message = encode_trades(category, instruments[batch.idx], moved, at_ms)
    frame = Frame(Opcode.TEXT, message.text.encode()).serialize(mask=False)
    return Send(at_ms, message.topic, frame)
