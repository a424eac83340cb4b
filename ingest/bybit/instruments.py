"""`GET /v5/market/instruments-info`: the wire shape, and checking configured symbols against it."""

from __future__ import annotations

import difflib

import msgspec

from common.errors import BadMessageError

TRADING = "Trading"
PAGE_LIMIT = 1000


class Instrument(msgspec.Struct, gc=False):
    symbol: str
    status: str = ""


class InstrumentsResult(msgspec.Struct, gc=False):
    instruments: list[Instrument] = msgspec.field(default_factory=list, name="list")
    next_cursor: str = msgspec.field(default="", name="nextPageCursor")


class InstrumentsResponse(msgspec.Struct, gc=False):
    ret_code: int = msgspec.field(name="retCode")
    ret_msg: str = msgspec.field(default="", name="retMsg")
    result: InstrumentsResult | None = None


_decoder = msgspec.json.Decoder(InstrumentsResponse)


def parse_page(body: bytes) -> InstrumentsResult:
    """One page; BadMessageError for a non-zero retCode or a body of another shape."""
    try:
        response = _decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise BadMessageError(f"instruments-info answer is not Bybit's shape: {exc}") from None
    if response.ret_code != 0 or response.result is None:
        raise BadMessageError(
            f"instruments-info refused: retCode {response.ret_code} {response.ret_msg!r}"
        )
    return response.result


def trading_symbols(instruments: list[Instrument]) -> list[str]:
    return sorted({i.symbol for i in instruments if i.status == TRADING})


def check_symbols(wanted: list[str], instruments: list[Instrument]) -> list[str]:
    """One problem line per symbol that is unknown or not trading, with close matches."""
    status = {i.symbol: i.status for i in instruments}
    trading = [s for s, st in status.items() if st == TRADING]
    problems = []
    for symbol in wanted:
        if symbol not in status:
            close = difflib.get_close_matches(symbol, trading, n=3, cutoff=0.75)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            problems.append(f"{symbol}: unknown{hint}")
        elif status[symbol] != TRADING:
            problems.append(f"{symbol}: status {status[symbol]}, not {TRADING}")
    return problems
