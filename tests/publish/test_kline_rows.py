"""`/v5/market/kline`'s rows built from stored members (publish/routes.py `_rows`): each row is
the member's open time and its six number texts, exactly, whichever path builds them. Expected
rows come from the standard json module reading the members (numbers kept as their text)."""

from __future__ import annotations

import json

from common.history import member_of
from common.wire import Candle, candle_encoder, raw_number
from publish.routes import _rows


def _member(open_ms: int, n: int) -> bytes:
    return member_of(
        candle_encoder.encode(
            Candle(
                symbol="BTCUSDT", interval=60_000, interval_label="1m", timestamp=open_ms,
                open=raw_number(f"{100 + n}.5"), high=raw_number(f"1{n}1.25"),
                low=raw_number("0.00000001"), close=raw_number(f"{n}E-3" if n % 5 == 0 else "7"),
                volume=raw_number("12.345"), turnover=raw_number(f"1543.2187{n}"),
                trade_count=n, buy_volume=raw_number("6.2"), sell_volume=raw_number("6.145"),
                revision=n % 3,
            )
        )
    )  # fmt: skip


def _expected(entries: list[tuple[int, bytes]]) -> list[list[str]]:
    rows = []
    for open_ms, member in entries:
        fields = json.loads(b"{" + member, parse_float=str, parse_int=str)
        names = ("open", "high", "low", "close", "volume", "turnover")
        rows.append([str(open_ms), *(fields[name] for name in names)])
    return rows


def test_rows_equal_the_members_numbers_exactly() -> None:
    entries = [(1_786_310_400_000 + n * 60_000, _member(1_786_310_400_000 + n * 60_000, n))
               for n in range(300)]  # fmt: skip
    got = json.loads(b"[" + _rows(entries) + b"]")
    assert got == _expected(entries)
    assert _rows([]) == b""


def test_a_member_of_another_shape_takes_the_decoding_path() -> None:
    entries = [(1_786_310_400_000 + n * 60_000, _member(1_786_310_400_000 + n * 60_000, n))
               for n in range(5)]  # fmt: skip
    # fields in another order, no trade_count: the fast path's replaces would garble it
    odd = b'"timestamp":1786310700000,"high":9,"open":8,"low":7,"close":7.5,' \
          b'"volume":1,"turnover":8.1,"closed":true}'  # fmt: skip
    entries.append((1_786_310_700_000, odd))
    got = json.loads(b"[" + _rows(entries) + b"]")
    assert got[-1] == ["1786310700000", "8", "9", "7", "7.5", "1", "8.1"]
    assert got[:-1] == _expected(entries[:-1])
