"""The simulated exchange's symbols, with Bybit's tick sizes and lot steps.

Prices and sizes are integers in units of 10**-digits of the symbol: a linear trade price has
`priceScale` digits ("65114.20"), a size has the digits of `qtyStep` ("1.30"); spot uses the
digits of `tickSize` and `basePrecision`. The well-known symbols carry the values recorded from
Bybit's instruments-info (2026-08); further symbols are generated deterministically.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from common.decimals import format_scaled
from common.wire import Category

# symbol: (priceScale, tickSize, linear qtyStep, spot tickSize, spot basePrecision, price)
_KNOWN: dict[str, tuple[int, str, str, str, str, str]] = {
    "BTCUSDT": (2, "0.10", "0.001", "0.1", "0.000001", "65114.20"),
    "ETHUSDT": (2, "0.01", "0.01", "0.01", "0.00001", "1922.48"),
    "SOLUSDT": (3, "0.010", "0.1", "0.01", "0.0001", "77.310"),
    "DOGEUSDT": (5, "0.00001", "1", "0.00001", "0.1", "0.07053"),
    "XRPUSDT": (4, "0.0001", "0.1", "0.0001", "0.01", "2.5010"),
    "BNBUSDT": (2, "0.10", "0.01", "0.1", "0.0001", "810.50"),
    "ADAUSDT": (4, "0.0001", "1", "0.0001", "0.01", "0.7420"),
    "LINKUSDT": (3, "0.001", "0.1", "0.001", "0.001", "17.250"),
    "LTCUSDT": (2, "0.01", "0.1", "0.01", "0.00001", "95.40"),
    "AVAXUSDT": (3, "0.001", "0.1", "0.001", "0.001", "22.120"),
    "DOTUSDT": (4, "0.0001", "0.1", "0.0001", "0.001", "3.8810"),
    "TRXUSDT": (5, "0.00001", "1", "0.0001", "0.01", "0.33150"),
}
# inverse: (priceScale, tickSize, qtyStep, price)
_KNOWN_INVERSE: dict[str, tuple[int, str, str, str]] = {
    "BTCUSD": (2, "0.50", "1", "65114.50"),
    "ETHUSD": (2, "0.05", "1", "1922.45"),
    "XRPUSD": (4, "0.0001", "1", "2.5010"),
    "SOLUSD": (3, "0.010", "1", "77.310"),
}
NON_TRADING_STATUSES = ("PreLaunch", "Closed")


@dataclass(frozen=True, slots=True)
class Instrument:
    symbol: str
    symbol_id: int
    base: str
    quote: str
    status: str
    price_digits: int
    tick_units: int
    tick_text: str
    size_digits: int
    lot_units: int
    lot_text: str
    seed_price_units: int

    @property
    def trading(self) -> bool:
        return self.status == "Trading"

    def price_text(self, units: int) -> str:
        """Trade-price text with the symbol's fixed digits ('65114.20')."""
        return _fixed(units, self.price_digits)

    def size_text(self, units: int) -> str:
        return _fixed(units, self.size_digits)


def _fixed(units: int, digits: int) -> str:
    if digits == 0:
        return str(units)
    whole, frac = divmod(units, 10**digits)
    return f"{whole}.{frac:0{digits}d}"


def _digits(text: str) -> int:
    return len(text.partition(".")[2])


def _units(text: str, digits: int) -> int:
    whole, _, frac = text.partition(".")
    return int(whole + frac[:digits].ljust(digits, "0"))


def _make(
    symbol: str, symbol_id: int, quote: str, scale: int, tick: str, lot: str, price: str
) -> Instrument:
    size_digits = _digits(lot)
    return Instrument(
        symbol=symbol,
        symbol_id=symbol_id,
        base=symbol.removesuffix(quote),
        quote=quote,
        status="Trading",
        price_digits=scale,
        tick_units=_units(tick, scale),
        tick_text=tick,
        size_digits=size_digits,
        lot_units=_units(lot, size_digits),
        lot_text=lot,
        seed_price_units=_units(price, scale),
    )


def known(category: Category, symbol: str, symbol_id: int) -> Instrument | None:
    if category is Category.INVERSE:
        if symbol not in _KNOWN_INVERSE:
            return None
        scale, tick, lot, price = _KNOWN_INVERSE[symbol]
        return _make(symbol, symbol_id, "USD", scale, tick, lot, price)
    if symbol not in _KNOWN:
        return None
    scale, tick, qty, spot_tick, spot_lot, price = _KNOWN[symbol]
    if category is Category.SPOT:
        scale = _digits(spot_tick)
        return _make(symbol, symbol_id, "USDT", scale, spot_tick, spot_lot, price)
    return _make(symbol, symbol_id, "USDT", scale, tick, qty, price)


def _generated(category: Category, n: int, symbol_id: int, rng: random.Random) -> Instrument:
    quote = "USD" if category is Category.INVERSE else "USDT"
    scale = rng.choice((2, 3, 4, 5, 6))
    price_units = rng.randint(10**scale // 2, 10**scale * 400)
    lot = rng.choice(("0.001", "0.01", "0.1", "1", "10"))
    if category is Category.INVERSE:
        lot = "1"
    tick = format_scaled(1, scale) if scale else "1"
    return _make(f"SIM{n}{quote}", symbol_id, quote, scale, tick, lot, _fixed(price_units, scale))


def build_universe(
    category: Category,
    count: int,
    symbol_list: list[str] | None,
    seed: int,
    non_trading: int = 0,
) -> list[Instrument]:
    """Trading symbols (named or `count` of them, well-known first), then `non_trading` more.

    The non-trading ones alternate PreLaunch and Closed, so instruments-info filters and ingest's
    validation can be tested; they never trade.
    """
    rng = random.Random(f"instruments-{seed}")
    names = _KNOWN_INVERSE if category is Category.INVERSE else _KNOWN
    out: list[Instrument] = []
    if symbol_list is not None:
        for i, symbol in enumerate(symbol_list, start=1):
            inst = known(category, symbol, i)
            if inst is None:
                inst = _generated(category, i, i, rng)
                inst = _rename(inst, symbol)
            out.append(inst)
    else:
        for i, symbol in enumerate(list(names)[:count], start=1):
            inst = known(category, symbol, i)
            assert inst is not None
            out.append(inst)
        for n in range(len(out) + 1, count + 1):
            out.append(_generated(category, n, n, rng))
    for k in range(non_trading):
        status = NON_TRADING_STATUSES[k % len(NON_TRADING_STATUSES)]
        prefix = "PRE" if status == "PreLaunch" else "OLD"
        inst = _generated(category, k + 1, len(out) + 1, rng)
        out.append(_rename(inst, f"{prefix}{k + 1}{inst.quote}", status))
    return out


def _rename(inst: Instrument, symbol: str, status: str = "Trading") -> Instrument:
    base = symbol.removesuffix(inst.quote) if symbol.endswith(inst.quote) else symbol
    return replace(inst, symbol=symbol, base=base, status=status)
