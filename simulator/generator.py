"""Deterministic trade generation: the same seed gives the same trades, slot by slot.

Time is cut into fixed slots of `slot_ms`; slot k always draws the same trades from the seeded
generator, whenever the loop gets to it, so only the absolute times depend on the start time.
A slot's trades are spread over symbols by a Zipf-like weight (a few busy symbols, a long tail);
a `quiet_fraction` of the symbols never trade (their candles are the flat, empty ones). Bursts
multiply the rate for `burst_ms` every `burst_every_s`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from itertools import accumulate
from typing import NamedTuple

from common.wire import Category
from simulator.instruments import Instrument


class SimTrade(NamedTuple):
    time_ms: int
    price: int  # units of the symbol's price digits
    size: int  # units of the symbol's size digits
    buy: bool
    seq: int
    trade_id: str
    tick: str  # Bybit's tick direction (`L`)
    rpi: bool


class Batch(NamedTuple):
    """Trades of one symbol for one message; `ts_ms` is the recorded message time (replay)."""

    idx: int
    trades: list[SimTrade]
    ts_ms: int


@dataclass(frozen=True)
class GeneratorConfig:
    rate: float
    seed: int
    slot_ms: int = 10
    quiet_fraction: float = 0.1
    burst_every_s: float = 0.0
    burst_ms: int = 500
    burst_factor: float = 10.0
    max_batch: int = 1024


_UP = ("PlusTick", "ZeroPlusTick")
_DOWN = ("MinusTick", "ZeroMinusTick")


class Generator:
    def __init__(
        self, instruments: list[Instrument], category: Category, config: GeneratorConfig
    ) -> None:
        self._config = config
        self._rng = random.Random(config.seed)
        self._uuid_ids = category is not Category.SPOT
        traded = [i for i, inst in enumerate(instruments) if inst.trading]
        quiet_count = int(len(traded) * config.quiet_fraction)
        quiet = set(self._rng.sample(traded, quiet_count)) if quiet_count else set()
        self.quiet = frozenset(instruments[i].symbol for i in quiet)
        self._active = [i for i in traded if i not in quiet]
        weights = [1.0 / (rank + 1) ** 0.8 for rank in range(len(self._active))]
        self._cum = list(accumulate(weights))
        self._instruments = instruments
        self._price = [inst.seed_price_units for inst in instruments]
        self._up = [True] * len(instruments)
        self._seq = [self._rng.randrange(10**11, 9 * 10**11) for _ in instruments]
        if self._uuid_ids:
            self._counter = [self._rng.getrandbits(40) for _ in instruments]
        else:
            self._counter = [
                2_280_000_000_000_000_000 + i * 10**12 for i in range(len(instruments))
            ]
        self._uuid_head = [self._uuid_head_text() for _ in instruments]
        self._carry = 0.0
        self.slot = 0

    def _uuid_head_text(self) -> str:
        h = f"{self._rng.getrandbits(80):020x}"
        return f"{h[:8]}-{h[8:12]}-5{h[13:16]}-{'89ab'[int(h[16], 16) & 3]}{h[17:20]}-"

    def rate_at(self, slot: int) -> float:
        config = self._config
        if config.burst_every_s > 0:
            period_slots = max(1, int(config.burst_every_s * 1000 / config.slot_ms))
            if (slot % period_slots) * config.slot_ms < config.burst_ms:
                return config.rate * config.burst_factor
        return config.rate

    def next_slot(self, slot_start_ms: int) -> list[Batch]:
        """Trades of the next slot, with T in [slot_start_ms, slot_start_ms + slot_ms)."""
        config = self._config
        expected = self.rate_at(self.slot) * config.slot_ms / 1000 + self._carry
        self.slot += 1
        count = int(expected)
        self._carry = expected - count
        if count == 0 or not self._active:
            return []
        picks = self._rng.choices(self._active, cum_weights=self._cum, k=count)
        per_symbol: dict[int, int] = {}
        for index in picks:
            per_symbol[index] = per_symbol.get(index, 0) + 1
        batches = []
        for index in sorted(per_symbol):
            trades = self._trades(index, per_symbol[index], slot_start_ms)
            for first in range(0, len(trades), config.max_batch):
                batches.append(Batch(index, trades[first : first + config.max_batch], 0))
        return batches

    def _trades(self, index: int, count: int, slot_start_ms: int) -> list[SimTrade]:
        rng = self._rng
        inst = self._instruments[index]
        slot_ms = self._config.slot_ms
        random_ = rng.random
        offsets = sorted(int(random_() * slot_ms) for _ in range(count))
        price = self._price[index]
        tick = inst.tick_units
        up = self._up[index]
        seq = self._seq[index]
        out: list[SimTrade] = []
        last_offset = -1
        buy = True
        for offset in offsets:
            if offset != last_offset or rng.random() < 0.3:
                seq += rng.randint(1, 40)
                buy = rng.random() < 0.5
                last_offset = offset
            move = rng.random()
            if move < 0.35:
                new_price = price + tick if buy else price - tick
                if new_price <= 0 or (price > inst.seed_price_units * 3 and buy):
                    new_price = price
            else:
                new_price = price
            if new_price != price:
                up = new_price > price
            direction = (_UP if up else _DOWN)[new_price == price]
            price = new_price
            size = inst.lot_units * (1 + int(rng.expovariate(0.25)))
            out.append(
                SimTrade(
                    slot_start_ms + offset,
                    price,
                    size,
                    buy,
                    seq,
                    self._trade_id(index),
                    direction,
                    rng.random() < 0.01,
                )
            )
        self._price[index] = price
        self._up[index] = up
        self._seq[index] = seq
        return out

    def _trade_id(self, index: int) -> str:
        """Contracts: UUID-shaped (a random per-symbol head, a counter tail); spot: a long
        numeric string. Unique per symbol and cheap."""
        self._counter[index] += 1
        if self._uuid_ids:
            return f"{self._uuid_head[index]}{self._counter[index]:012x}"
        return str(self._counter[index])
