"""Bybit's subscription limits, as pure planning functions.

Per connection the summed length of the subscribed topic strings must stay under 21,000
characters (every category); spot takes at most 10 args per request (docs/pipeline.md "Ingest").
"""

from __future__ import annotations

from common.wire import Category
from ingest.bybit.messages import trade_topic

MAX_TOPIC_CHARS_PER_CONNECTION = 21_000
SPOT_ARGS_PER_REQUEST = 10
ARGS_PER_REQUEST = 200
"""Linear/inverse have no documented count limit; 200 keeps one request frame small."""


def args_per_request(category: Category) -> int:
    return SPOT_ARGS_PER_REQUEST if category is Category.SPOT else ARGS_PER_REQUEST


def topic_chars(symbols: list[str] | set[str]) -> int:
    return sum(len(trade_topic(s)) for s in symbols)


def chunk_requests(topics: list[str], category: Category) -> list[list[str]]:
    """Split topics into subscribe requests within the category's per-request limit."""
    size = args_per_request(category)
    return [topics[i : i + size] for i in range(0, len(topics), size)]


def assign(
    symbols: list[str],
    loads: list[int],
    limit_chars: int = MAX_TOPIC_CHARS_PER_CONNECTION,
) -> tuple[list[list[str]], int]:
    """Place new symbols on connections with the least topic characters.

    `loads` are the current topic characters per connection. Returns the symbols to add per
    connection (indexes past the current ones are new connections, needed when every one would
    pass the limit) and how many new connections that takes.
    """
    start = len(loads)
    loads = list(loads)
    placed: list[list[str]] = [[] for _ in loads]
    for symbol in sorted(symbols):
        cost = len(trade_topic(symbol))
        candidates = [i for i, load in enumerate(loads) if load + cost < limit_chars]
        if candidates:
            index = min(candidates, key=lambda i: (loads[i], i))
        else:
            loads.append(0)
            placed.append([])
            index = len(loads) - 1
        loads[index] += cost
        placed[index].append(symbol)
    return placed, len(loads) - start
