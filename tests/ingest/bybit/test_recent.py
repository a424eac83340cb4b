"""recent-trade answers become the same trades as the WebSocket's pushes of them, field for
field (side, size, price text, trade id, seq), on trades the simulator made in every category;
and what is not that answer is refused with a reason."""

from __future__ import annotations

import msgspec
import pytest

from common.errors import BadMessageError
from common.wire import Category, Side, Trade
from ingest.bybit.messages import TradeMessage, parse_frame
from ingest.bybit.recent import Recent, RefusedError, limit_of, parse_recent
from simulator.frames import Encoded
from simulator.generator import Generator, GeneratorConfig
from simulator.instruments import build_universe
from simulator.market import Market
from simulator.rest import Rest
from simulator.sources import GeneratedSource

START_MS = 1_786_310_700_000


def _pushed_and_rest(category: Category) -> tuple[dict[str, list[Trade]], Rest]:
    """Every trade the simulator pushed over 3 s (parsed as ingest parses pushes), per symbol,
    and its REST side."""
    instruments = build_universe(category, 8, None, 3, 0)
    config = GeneratorConfig(rate=600, seed=3, quiet_fraction=0)
    source = GeneratedSource(Generator(instruments, category, config), 10, START_MS)
    market = Market(category, instruments, source, START_MS)
    pushed: dict[str, list[Trade]] = {}
    for step in range(1, 31):
        for message in market.step(START_MS + step * 100, set()):
            assert isinstance(message, Encoded)
            parsed = parse_frame(message.text)
            assert isinstance(parsed, TradeMessage)
            pushed.setdefault(parsed.symbol, []).extend(parsed.trades)
    return pushed, Rest(market)


@pytest.mark.parametrize("category", list(Category))
def test_rest_trades_equal_the_pushed_ones(category: Category) -> None:
    pushed, rest = _pushed_and_rest(category)
    limit = limit_of(category)
    compared = 0
    for symbol, trades in pushed.items():
        status, body = rest.handle(
            f"/v5/market/recent-trade?category={category.value}&symbol={symbol}&limit={limit}"
        )
        assert status == 200
        answer = parse_recent(body.encode(), symbol, limit)
        assert answer.trades == trades[-limit:], symbol
        assert answer.exchange_ms > 0
        compared += len(answer.trades)
    assert compared > (300 if category is Category.SPOT else 1500)
    # every field carried, not only some: sides both ways, seq where Bybit gives it
    sample = [t for ts in pushed.values() for t in ts]
    assert {t.side for t in sample} == {Side.BUY, Side.SELL}
    assert all(t.seq > 0 for t in sample)


def _body(items: list[dict[str, object]], code: int = 0, message: str = "OK") -> bytes:
    result = {"category": "linear", "list": items}
    return msgspec.json.encode(
        {"retCode": code, "retMsg": message, "result": result, "retExtInfo": {}, "time": 5}
    )


ITEM = {"execId": "b", "symbol": "BTCUSDT", "price": "100.5", "size": "0.010", "side": "Sell",
        "time": "1000", "isBlockTrade": False, "isRPITrade": False, "seq": "7"}  # fmt: skip


def test_order_missing_seq_and_refusals() -> None:
    older = {k: v for k, v in {**ITEM, "execId": "a", "time": "999"}.items() if k != "seq"}
    tied = {**ITEM, "execId": "c", "side": "Buy"}
    # newest first as Bybit sends them; a tie of time and seq keeps Bybit's order reversed
    answer = parse_recent(_body([tied, ITEM, older]), "BTCUSDT", 3)
    assert [(t.trade_id, t.seq) for t in answer.trades] == [("a", 0), ("b", 7), ("c", 7)]
    assert answer.trades[1] == Trade(1000, "100.5", "0.010", Side.SELL, "b", 7)
    # complete back to a time: the oldest trade is older, or Bybit had fewer than asked for
    assert answer.reaches_back(1000) and not answer.reaches_back(999)
    assert Recent(answer.trades, 5, 4).reaches_back(999) and Recent([], 5, 4).reaches_back(0)
    with pytest.raises(RefusedError) as limited:
        parse_recent(_body([], 10006, "Too many visits!"), "X", 1000)
    assert limited.value.rate_limited and not limited.value.final
    invalid = _body([], 10001, "params error: symbol invalid")
    with pytest.raises(RefusedError) as refused:
        parse_recent(invalid, "X", 1000)
    assert refused.value.final and "symbol invalid" in str(refused.value)
    for bad in (b"<html>", _body([{**ITEM, "time": "soon"}]), _body([{**ITEM, "seq": "x"}])):
        with pytest.raises(BadMessageError):
            parse_recent(bad, "BTCUSDT", 1000)
    with pytest.raises(BadMessageError, match="another symbol"):
        parse_recent(_body([ITEM]), "ETHUSDT", 1000)
