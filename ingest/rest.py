"""Bybit REST with stdlib urllib in a worker thread: every page of `instruments-info`, and
`recent-trade` for gap repair (ingest.repair)."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

from common.errors import BadMessageError, RetryableError
from common.wire import Category
from ingest.bybit.instruments import PAGE_LIMIT, Instrument, parse_page
from ingest.bybit.recent import Recent, limit_of, parse_recent

MAX_PAGES = 100


class HttpStatusError(RetryableError):
    """An HTTP status other than 200 (Bybit answers 403 when an IP asks too often)."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _get(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "bybit-klines-pipeline"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        raise HttpStatusError(f"GET {url}: HTTP {exc.code} {exc.reason}", exc.code) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RetryableError(f"GET {url}: {reason}") from None


def fetch_instruments_sync(
    rest_url: str, category: Category, timeout_s: float, page_limit: int = PAGE_LIMIT
) -> list[Instrument]:
    """All instruments of the category, following `nextPageCursor` until it is empty."""
    out: list[Instrument] = []
    cursor = ""
    for _ in range(MAX_PAGES):
        query = {"category": category.value, "limit": str(page_limit)}
        if cursor:
            query["cursor"] = cursor
        url = f"{rest_url}/v5/market/instruments-info?{urllib.parse.urlencode(query)}"
        page = parse_page(_get(url, timeout_s))
        out.extend(page.instruments)
        if not page.next_cursor or page.next_cursor == cursor:
            return out
        cursor = page.next_cursor
    raise BadMessageError(f"instruments-info: more than {MAX_PAGES} pages, giving up")


async def fetch_instruments(
    rest_url: str, category: Category, timeout_s: float
) -> list[Instrument]:
    return await asyncio.to_thread(fetch_instruments_sync, rest_url, category, timeout_s)


def fetch_recent_sync(rest_url: str, category: Category, symbol: str, timeout_s: float) -> Recent:
    """The newest trades Bybit still holds for `symbol` (as many as one answer can hold).
    RetryableError: not reached; ingest.bybit.recent's errors: an answer, but not the trades."""
    limit = limit_of(category)
    query = {"category": category.value, "symbol": symbol, "limit": str(limit)}
    url = f"{rest_url}/v5/market/recent-trade?{urllib.parse.urlencode(query)}"
    return parse_recent(_get(url, timeout_s), symbol, limit)
