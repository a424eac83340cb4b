"""Where trades come from: the seeded generator or a recorded capture. Pure (no sockets).

A source answers two questions for a market time `now_ms`: which trades have happened by then
(they go into the candles at once, in T order), and which messages are due to be sent (a
message's `ts` is at or after its trades' T).
"""

from __future__ import annotations

from collections import deque
from itertools import takewhile
from typing import NamedTuple, Protocol

from simulator.generator import Batch, Generator, SimTrade
from simulator.instruments import Instrument
from simulator.klines import MINUTE, Candle
from simulator.replay import Capture, seed_candle, to_sim_trades


class Tick(NamedTuple):
    trades: list[tuple[int, SimTrade]]  # (instrument index, trade) in T order: into the candles
    messages: list[Batch]  # due to be sent, in send order
    kline_pushes: list[str]  # symbols whose kline.1 the capture pushed now (replay only)


class Source(Protocol):
    def checkpoints(self, now_ms: int) -> list[int]:
        """Market times to stop at up to now_ms, so recorded snapshots see the right trades."""
        ...

    def poll(self, now_ms: int) -> Tick:
        """Everything that happened up to now_ms and was not polled before."""
        ...


class GeneratedSource:
    def __init__(self, generator: Generator, slot_ms: int, start_ms: int) -> None:
        self._generator = generator
        self._slot_ms = slot_ms
        self._next_slot_ms = start_ms - start_ms % slot_ms
        self.max_catch_up_slots = 10

    def checkpoints(self, now_ms: int) -> list[int]:
        """The last time through which every slot is generated: a kline snapshot stamped with it
        holds every trade with T up to its timestamp."""
        return [now_ms - (now_ms + 1) % self._slot_ms]

    def poll(self, now_ms: int) -> Tick:
        messages: list[Batch] = []
        slots = 0
        while self._next_slot_ms + self._slot_ms <= now_ms + 1:
            if slots == self.max_catch_up_slots:  # a stalled loop skips time, it does not flood
                self._next_slot_ms = now_ms + 1 - (now_ms + 1) % self._slot_ms
                break
            for batch in self._generator.next_slot(self._next_slot_ms):
                messages.append(Batch(batch.idx, batch.trades, now_ms))
            self._next_slot_ms += self._slot_ms
            slots += 1
        trades = [(b.idx, t) for b in messages for t in b.trades]
        trades.sort(key=lambda pair: pair[1].time_ms)
        return Tick(trades, messages, [])


def replay_shift_ms(capture: Capture, start_ms: int) -> int:
    """A whole number of minutes that moves the capture's start to `start_ms` or just after."""
    behind = start_ms - capture.first_ms
    return -(-behind // MINUTE.ms) * MINUTE.ms


class ReplaySource:
    def __init__(self, capture: Capture, instruments: list[Instrument], shift_ms: int) -> None:
        index = {inst.symbol: i for i, inst in enumerate(instruments)}
        self._messages: deque[Batch] = deque()
        trades: list[tuple[int, SimTrade]] = []
        for m in capture.messages:
            i = index[m.symbol]
            batch = Batch(i, to_sim_trades(instruments[i], m.trades, shift_ms), m.ts_ms + shift_ms)
            self._messages.append(batch)
            trades.extend((i, t) for t in batch.trades)
        self.seeds: dict[str, tuple[Candle, int]] = {
            symbol: seed_candle(instruments[index[symbol]], kline, shift_ms)
            for symbol, kline in capture.first_klines.items()
        }
        trades = [
            (i, t)
            for i, t in trades
            if t.time_ms > self.seeds.get(instruments[i].symbol, (None, -1))[1]
        ]
        trades.sort(key=lambda pair: pair[1].time_ms)
        self._trades = deque(trades)
        self._pushes = deque(
            sorted((t + shift_ms, s) for s, times in capture.kline_times.items() for t in times)
        )
        self.shift_ms = shift_ms

    @property
    def done(self) -> bool:
        return not self._messages and not self._pushes

    def checkpoints(self, now_ms: int) -> list[int]:
        times = sorted({t for t, _ in takewhile(lambda push: push[0] <= now_ms, self._pushes)})
        return [*times, now_ms] if not times or times[-1] != now_ms else times

    def poll(self, now_ms: int) -> Tick:
        trades = []
        while self._trades and self._trades[0][1].time_ms <= now_ms:
            trades.append(self._trades.popleft())
        messages = []
        while self._messages and self._messages[0].ts_ms <= now_ms:
            messages.append(self._messages.popleft())
        pushes = []
        while self._pushes and self._pushes[0][0] <= now_ms:
            pushes.append(self._pushes.popleft()[1])
        return Tick(trades, messages, pushes)
