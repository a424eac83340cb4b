"""Bybit V5 REST answers, as the simulator serves them and publish's `/v5/market/kline` does.

The envelope `{retCode, retMsg, result, retExtInfo: {}, time}`, always HTTP 200, also for a bad
parameter (`retCode` 10001 and a message, docs/protocol.md "History over HTTP"); the query
parameters read the way Bybit reads them; and the kline answer: rows of 7 strings
`[startTime, open, high, low, close, volume, turnover]`, newest first.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from urllib.parse import parse_qsl

import msgspec

PARAMS_ERROR = 10001
KLINE_LIMIT_DEFAULT = 200
KLINE_LIMIT_MAX = 1000
Json = dict[str, object]

_json = msgspec.json.Encoder()


class ParamError(Exception):
    """A bad request parameter: answered HTTP 200, retCode 10001, this message and `result`."""

    def __init__(self, message: str, result: Json | None = None) -> None:
        super().__init__(message)
        self.result = result if result is not None else {}


def envelope(code: int, message: str, result: Json, ext: Json | None = None) -> bytes:
    body = {"retCode": code, "retMsg": message, "result": result, "retExtInfo": ext or {}}
    return _json.encode({**body, "time": int(time.time() * 1000)})


def split_target(target: str) -> tuple[str, dict[str, str]]:
    """A request target (`/path?a=1`) as its path and its decoded query (last value wins)."""
    path, _, raw_query = target.partition("?")
    return path, dict(parse_qsl(raw_query, keep_blank_values=True))


def limit_param(query: dict[str, str], default: int, top: int) -> int:
    text = query.get("limit")
    if text is None or text == "":
        return default
    if not text.isdigit() or not 1 <= int(text) <= top:
        raise ParamError("params error: limit invalid")
    return int(text)


def int_param(query: dict[str, str], name: str) -> int | None:
    text = query.get(name)
    if text is None or text == "":
        return None
    if not text.isdigit():
        raise ParamError(f"params error: {name} invalid")
    return int(text)


def kline_result(symbol: str, category: str, rows: Sequence[Sequence[str]] | msgspec.Raw) -> Json:
    """`result` of `/v5/market/kline`: rows newest first (or their JSON text, ready made)."""
    return {"symbol": symbol, "category": category, "list": rows}
