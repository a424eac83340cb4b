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
- rest: a fraction `rest_fail_rate` of `recent-trade` requests fails, half as HTTP 503, half as
  Bybit's rate limit (HTTP 200, `retCode` 10006 `Too many visits!`), so that gap repairs retry.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from common.bybitws import SubscribeFault
from common.errors import ConfigError


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
    rest_fail_rate: float = 0.0


REST_UNAVAILABLE = 503
REST_TOO_MANY_VISITS = 10006


class Faults:
    def __init__(self, config: FaultConfig, seed: int) -> None:
        self.config = config
        self._rng = random.Random(f"faults-{seed}")
        self._sub_rng = random.Random(f"subscribe-faults-{seed}")
        self._rest_rng = random.Random(f"rest-faults-{seed}")

    def delay_ms(self) -> int:
        spec = self.config.delay
        if spec is None or self._rng.random() >= self.config.delay_rate:
            return 0
        return spec.sample(self._rng)

    def malformed(self) -> bool:
        rate = self.config.malformed_rate
        return rate > 0 and self._rng.random() < rate

    def rest_failure(self) -> int:
        """0, or how a recent-trade request fails: REST_UNAVAILABLE (an HTTP status) or
        REST_TOO_MANY_VISITS (a retCode)."""
        rate = self.config.rest_fail_rate
        if rate <= 0 or self._rest_rng.random() >= rate:
            return 0
        return REST_UNAVAILABLE if self._rest_rng.random() < 0.5 else REST_TOO_MANY_VISITS

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
