"""`GET /v5/market/kline`: the confirmed candles missed while away, with retries.

Reuses ingest's urllib GET (worker thread). An HTTP error, a `retCode` other than 0, or a body
that is not a kline answer are all `RetryableError`s here; after the last attempt the caller
records a gap instead of crashing.
"""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from dataclasses import dataclass

from common.backoff import backoff
from common.errors import BadMessageError, RetryableError
from common.intervals import Interval
from common.wire import Candle, Category
from ingest.klines.frames import decode_rest, rest_rows
from ingest.rest import _get as http_get

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
"""Bybit's largest `limit` for klines."""


@dataclass(frozen=True, slots=True)
class KlineRest:
    rest_url: str
    category: Category
    timeout_s: float
    attempts: int = 4
    base_delay_s: float = 0.5

    async def fetch(
        self, interval: Interval, symbol: str, first_ms: int, last_ms: int
    ) -> list[Candle]:
        """Candles with `first_ms <= start <= last_ms` that have ended, oldest first.

        Pages forward in chunks of `PAGE_LIMIT` candles; raises RetryableError once every
        attempt of a page failed.
        """
        out: list[Candle] = []
        page_first = first_ms
        while page_first <= last_ms:
            page_last = _page_last(interval, page_first, last_ms)
            rows = await self._page_with_retries(interval, symbol, page_first, page_last)
            out.extend(c for c in rows if page_first <= c.timestamp <= page_last)
            page_first = interval.next_open(page_last)
        return out

    async def _page_with_retries(
        self, interval: Interval, symbol: str, first_ms: int, last_ms: int
    ) -> list[Candle]:
        delays = backoff(self.base_delay_s, cap_s=8.0)
        for attempt in range(1, self.attempts + 1):
            try:
                return await asyncio.to_thread(self._page, interval, symbol, first_ms, last_ms)
            except (RetryableError, BadMessageError) as exc:
                log.warning(
                    "kline backfill %s %s attempt %d/%d failed: %s",
                    symbol,
                    interval,
                    attempt,
                    self.attempts,
                    exc,
                )
                if attempt == self.attempts:
                    raise RetryableError(f"kline backfill {symbol} {interval}: {exc}") from None
                await asyncio.sleep(next(delays))
        raise AssertionError("unreachable")

    def _page(self, interval: Interval, symbol: str, first_ms: int, last_ms: int) -> list[Candle]:
        query = {
            "category": self.category.value,
            "symbol": symbol,
            "interval": interval.bybit_code or "",
            "start": str(first_ms),
            "end": str(last_ms),
            "limit": str(PAGE_LIMIT),
        }
        url = f"{self.rest_url}/v5/market/kline?{urllib.parse.urlencode(query)}"
        response = decode_rest(http_get(url, self.timeout_s))
        if response.ret_code != 0:
            raise RetryableError(f"retCode {response.ret_code} {response.ret_msg!r}")
        # Callers ask only for candles that have ended (older than a live confirm, or settled
        # by the exchange's clock), so the still-open newest row is outside the range anyway;
        # Bybit's `time` is not used, as a simulator on a shifted clock may not set it alike.
        return rest_rows(response, interval, symbol, self.category, interval.next_open(last_ms))


def _page_last(interval: Interval, first_ms: int, last_ms: int) -> int:
    start = first_ms
    for _ in range(PAGE_LIMIT - 1):
        following = interval.next_open(start)
        if following > last_ms:
            break
        start = following
    return start
