"""Faults on demand, all drawn from the seed so a run can be repeated. Pure.

- drop: every `drop_every_s` the server closes every connection without a close frame (the
  client sees 1006, as on Bybit); the ledger gets a drop window from the close to the next
  subscription, so tests know which trades were lost on purpose.
- delay: a fraction `delay_rate` of trade messages is held back by a delay drawn from `delay`
  (`fixed:MS`, `uniform:MIN:MAX`, `exp:MEAN`); messages of one topic stay in order, so a delay
  also holds back the messages behind it. `T` and `ts` keep their build times and the ledger's
  `sent_ms` is the delivery time: trades reach the client after their candle's boundary.
- malformed: after a fraction `malformed_rate` of trade messages, an extra broken frame (cut
  JSON); no trade is lost by it.
- subscribe: a fraction of subscribe requests is refused (`Params Error`) or stalled (no
  answer, no data).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.errors import ConfigError
from simulator.protocol import SubscribeFault


@dataclass(frozen=True)
class DelaySpec:
    kind: str
    a_ms: float
    b_ms: float = 0.0

    @classmethod
    def parse(cls, text: str) -> DelaySpec:
        parts = text.split(":")
        try:
            values = [float(p) for p in parts[1:]]
        except ValueError:
            values = []
        shapes = {"fixed": 1, "uniform": 2, "exp": 1}
        if parts[0] not in shapes or len(values) != shapes[parts[0]] or min(values) < 0:
            raise ConfigError(
                f"--delay {text!r} is not valid; allowed: fixed:MS, uniform:MIN:MAX, exp:MEAN"
            )
        return cls(parts[0], *values)

    def sample(self, rng: random.Random) -> int:
        if self.kind == "fixed":
            return int(self.a_ms)
        if self.kind == "uniform":
            return int(rng.uniform(self.a_ms, self.b_ms))
        return int(rng.expovariate(1.0 / self.a_ms)) if self.a_ms else 0


@dataclass(frozen=True)
class FaultConfig:
    drop_every_s: float = 0.0
    delay: DelaySpec | None = None
    delay_rate: float = 1.0
    malformed_rate: float = 0.0
    refuse_subscribe: float = 0.0
    stall_subscribe: float = 0.0


class Faults:
    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(f"faults-{seed}")
        self._sub_rng = random.Random(f"subscribe-faults-{seed}")

    def delay_ms(self) -> int:
        spec = self.config.delay
        if spec is None or self._rng.random() >= self.config.delay_rate:
            return 0
        return spec.sample(self._rng)

    def malformed(self) -> bool:
        rate = self.config.malformed_rate
        return rate > 0 and self._rng.random() < rate

    def subscribe_fault(self) -> SubscribeFault:
        refuse, stall = self.config.refuse_subscribe, self.config.stall_subscribe
        if refuse <= 0 and stall <= 0:
            return SubscribeFault.NONE
        draw = self._sub_rng.random()
        if draw < refuse:
            return SubscribeFault.REFUSE
        if draw < refuse + stall:
            return SubscribeFault.STALL
        return SubscribeFault.NONE


def malformed_frame(text: str) -> str:
    """A cut copy of a real frame: starts like one, is not JSON."""
    return text[: max(1, len(text) // 2)]
