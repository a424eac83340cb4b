from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.decimals import PRODUCT_DIGITS, SCALE, format_scaled, parse_scaled


def test_parse_and_format_keep_the_exchange_digits() -> None:
    assert parse_scaled("65114.20") == 65114 * SCALE + SCALE // 5
    assert format_scaled(parse_scaled("65114.20")) == "65114.2"
    assert format_scaled(parse_scaled("345445")) == "345445"
    assert format_scaled(parse_scaled("0.07053")) == "0.07053"
    assert format_scaled(parse_scaled("-0.5")) == "-0.5"
    assert format_scaled(0) == "0"


def test_sums_are_exact_where_floats_are_not() -> None:
    total = parse_scaled("0.1") + parse_scaled("0.2")
    assert format_scaled(total) == "0.3"
    turnover = parse_scaled("0.004") * parse_scaled("65114.2")
    assert format_scaled(turnover, PRODUCT_DIGITS) == "260.4568"


@pytest.mark.parametrize("text", ["", ".", "1e5", "1_0", " 1", "1.2.3", "abc", "1.00000000000001"])
def test_rejects_anything_but_plain_decimals(text: str) -> None:
    with pytest.raises(ValueError):
        parse_scaled(text)


@given(st.decimals(min_value=-(10**9), max_value=10**9, places=8, allow_nan=False))
def test_round_trip_matches_decimal(value: Decimal) -> None:
    text = f"{value:f}"
    assert Decimal(format_scaled(parse_scaled(text))) == Decimal(text)
