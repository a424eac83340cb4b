"""Candle JSON -> COPY text rows, pure: exact digits, the highest revision of a row, escaping."""

from __future__ import annotations

from publish.postgres.rows import Rows
from tests.publish.postgres.helpers import candle


def _fields(rows: Rows) -> list[list[bytes]]:
    return [line.split(b"\t") for line in rows.copy_text().splitlines()]


def test_numbers_keep_their_exact_digits_and_the_open_time_its_milliseconds() -> None:
    rows = Rows().extend([candle("BTCUSDT", 1_786_310_820_000, close="65114.30")])
    rows.extend([candle("ETHUSDT", -1), candle("XRPUSDT", 1_786_310_820_999)])
    assert [f[3] for f in _fields(rows)[1:]] == [
        b"1969-12-31 23:59:59.999+00",
        b"2026-08-09 21:27:00.999+00",
    ]
    assert _fields(rows)[:1] == [[
        b"linear", b"BTCUSDT", b"1m", b"2026-08-09 21:27:00.000+00", b"60000", b"65114.2",
        b"65114.30", b"0.00000001", b"65114.30", b"7.035", b"458078.35880000001", b"3.1", b"3.935",
        b"55", b"0", b"f", b"trades",
    ]]  # fmt: skip


def test_the_highest_revision_of_a_row_is_kept_whatever_the_order() -> None:
    newer, older = candle(revision=2, close="2"), candle(revision=1, close="1")
    for order in ([newer, older], [older, newer]):
        rows = Rows().extend(order)
        assert len(rows) == 1
        assert _fields(rows)[0][8:9] == [b"2"]
    merged = Rows().extend([newer])
    merged.merge(Rows().extend([older, candle("ETHUSDT")]))
    assert sorted(f[1] + b":" + f[14] for f in _fields(merged)) == [b"BTCUSDT:2", b"ETHUSDT:0"]


def test_not_a_candle_is_counted_and_skipped_and_an_open_candle_ignored() -> None:
    still_open = candle().replace(b'"closed":true', b'"closed":false')
    rows = Rows().extend([b"{not json", b'{"symbol": "X"}', still_open, candle("ETHUSDT")])
    assert rows.bad == 2
    assert [f[1] for f in _fields(rows)] == [b"ETHUSDT"]


def test_text_fields_are_escaped_for_copy() -> None:
    rows = Rows().extend([candle("BTC\tUSDT\\n")])
    assert _fields(rows)[0][1] == b"BTC\\tUSDT\\\\n"
