"""The core's C helper (aggregate/_speedups.c) against the builtins it replaces."""

from __future__ import annotations

from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aggregate.candles
from aggregate.candles import CoreConfig
from aggregate.speedups import SPEEDUPS, summarize, summarize_py
from common.intervals import parse_intervals
from tests.aggregate.streams import Event, run_core, streams

# Scaled prices and sizes (the fast path), the edges of 64 bits, and ints far past them.
NUMBERS = st.one_of(
    st.integers(0, 10**19),
    st.integers(-(2**63), 2**63 - 1),
    st.sampled_from([2**63 - 1, -(2**63), 2**63, -(2**63) - 1, 2**64, 0, -1, 1]),
    st.integers(-(10**40), 10**40),
)
BUYS = st.one_of(st.booleans(), st.integers(0, 2))


def test_the_c_helper_is_built() -> None:
    """`make install` builds it (a C compiler is on every machine the project supports)."""
    assert SPEEDUPS
    assert summarize is not summarize_py


@given(st.lists(st.tuples(NUMBERS, NUMBERS, BUYS), min_size=1, max_size=25), st.booleans())
@settings(max_examples=400, deadline=None)
def test_summarize_equals_the_builtins(
    trades: list[tuple[int, int, int | bool]], as_tuples: bool
) -> None:
    prices, sizes, buys = (
        (tuple(column) if as_tuples else list(column)) for column in zip(*trades, strict=True)
    )
    got = summarize(prices, sizes, buys)
    assert got == summarize_py(prices, sizes, buys)
    assert all(type(value) is int for value in got)


def test_summarize_overflowing_128_bits_stays_exact() -> None:
    big = 2**63 - 1
    prices = [big, big, big, -big]
    sizes = [big, big, big, 5]
    assert summarize(prices, sizes, [True] * 4) == (
        big,
        -big,
        3 * big + 5,
        3 * big * big - 5 * big,
        3 * big + 5,
    )


def test_summarize_refuses_what_has_no_answer() -> None:
    with pytest.raises(ValueError, match="no trades"):
        summarize([], [], [])
    with pytest.raises(ValueError, match="differ in length"):
        summarize([1, 2], [1], [True, False])
    with pytest.raises(TypeError, match="prices must be a sequence"):
        summarize(5, [1], [True])  # type: ignore[arg-type]  # wrong on purpose
    with pytest.raises(TypeError, match="takes 3 arguments"):
        summarize([1], [1])  # type: ignore[call-arg]  # wrong on purpose


@given(streams(1_786_310_000_000, 3_000, 8_000, 10_000))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_core_gives_the_same_candles_with_either(events: list[Event]) -> None:
    config = CoreConfig(parse_intervals("1s,1m,5m,15m,1h,4h"), 80, 10_000, True, False)
    with_c = run_core(config, events)
    with mock.patch.object(aggregate.candles, "summarize", summarize_py):
        with_py = run_core(config, events)
    assert with_c == with_py
