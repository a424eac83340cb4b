"""Whether PostgreSQL answers: one log line when it stops, one a minute while it stays away, one
when it is back; the consumer's health is red in between (`/health` answers 503)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from common.metrics import REGISTRY

log = logging.getLogger("publish.consumers.postgres")

UP = REGISTRY.gauge("publish_postgres_up", "1 while the postgres consumer reaches PostgreSQL")
REPEAT_S = 60.0


class Outage:
    def __init__(
        self, repeat_s: float = REPEAT_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._clock = clock
        self.since: float | None = None
        self.failures = 0  # a connection opened before the latest failure is suspect
        self._repeat_s = repeat_s
        self._logged_at = 0.0

    @property
    def up(self) -> bool:
        return self.since is None

    def failed(self, exc: BaseException) -> None:
        now = self._clock()
        self.failures += 1
        UP.set(0)
        if self.since is None:
            self.since = self._logged_at = now
            log.warning(
                "PostgreSQL unavailable (%s): holding the position, nothing is skipped; retrying",
                _short(exc),
            )
        elif now - self._logged_at >= self._repeat_s:
            self._logged_at = now
            log.warning(
                "PostgreSQL still unavailable after %.0f s (%s)", now - self.since, _short(exc)
            )

    def ok(self) -> None:
        UP.set(1)
        if self.since is not None:
            log.info("PostgreSQL is back after %.1f s: catching up", self._clock() - self.since)
            self.since = None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"
