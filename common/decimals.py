"""Exact decimals as scaled integers.

Prices and sizes arrive as decimal strings. They are parsed once into integers scaled by
10**SCALE_DIGITS, so sums and products stay exact without Decimal in the hot path; a product of
a price and a size carries 2 * SCALE_DIGITS digits. Formatting gives the shortest exact text,
which is the exchange's own digits without trailing zeros.
"""

from __future__ import annotations

# 13: the finest step Bybit lists (spot BABYDOGEUSDT's tickSize 0.0000000000001 in the real
# capture's instruments-info; lots go to 6 decimals). A price below 922,337.2 is
# then still a 64-bit integer, the fast path of aggregate/_speedups.c.
SCALE_DIGITS = 13
SCALE = 10**SCALE_DIGITS
PRODUCT_DIGITS = 2 * SCALE_DIGITS
_PAD = tuple("0" * (SCALE_DIGITS - n) for n in range(SCALE_DIGITS + 1))
_DIGITS = frozenset("0123456789")


def parse_scaled(text: str) -> int:
    """'65114.20' -> 65114200000000000. Raises ValueError on anything but a plain decimal."""
    whole, _, frac = text.partition(".")
    digits = whole[1:] if whole[:1] == "-" else whole
    if not digits or not _DIGITS.issuperset(digits) or not _DIGITS.issuperset(frac):
        raise ValueError(f"not a plain decimal number: {text!r}")
    if len(frac) > SCALE_DIGITS:
        raise ValueError(f"more than {SCALE_DIGITS} decimal places: {text!r}")
    return int(whole + frac + _PAD[len(frac)])


def format_scaled(value: int, digits: int = SCALE_DIGITS) -> str:
    """The shortest exact decimal text of value / 10**digits ('7.035', '345445', '-0.5')."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), 10**digits)
    if frac == 0:
        return f"{sign}{whole}"
    return f"{sign}{whole}.{str(frac).rjust(digits, '0').rstrip('0')}"
