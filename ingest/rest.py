"""Bybit REST: every page of `instruments-info`, with stdlib urllib in a worker thread."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.parse
import urllib.request

from common.errors import BadMessageError, RetryableError
from common.wire import Category
from ingest.bybit.instruments import PAGE_LIMIT, Instrument, parse_page

MAX_PAGES = 100


def _get(url: str, timeout_s: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": "bybit-klines-pipeline"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            body: bytes = response.read()
            return body
    except urllib.error.HTTPError as exc:
        raise RetryableError(f"GET {url}: HTTP {exc.code} {exc.reason}") from None
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
