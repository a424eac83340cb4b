from __future__ import annotations

import collections
import itertools
import json
from decimal import Decimal
from typing import Any

from common.wire import Category
from simulator.faults import FaultConfig, Faults
from simulator.generator import Generator, GeneratorConfig
from simulator.instruments import build_universe
from simulator.market import Market
from simulator.rest import Rest
from simulator.sources import GeneratedSource

START_MS = 1_786_310_700_000


def _rest(category: Category = Category.LINEAR, symbols: int = 20, **kw: int) -> Rest:
    instruments = build_universe(category, symbols, None, 1, kw.get("non_trading", 0))
    config = GeneratorConfig(rate=2_000, seed=1, quiet_fraction=0)
    source = GeneratedSource(Generator(instruments, category, config), 10, START_MS)
    market = Market(category, instruments, source, START_MS)
    now = START_MS
    for _ in range(kw.get("steps", 0)):
        now += 1_000
        market.step(now, set())
    return Rest(market)


def _get(rest: Rest, target: str) -> dict[str, Any]:
    status, body = rest.handle(target)
    assert status == 200
    parsed: dict[str, Any] = json.loads(body)
    assert set(parsed) == {"retCode", "retMsg", "result", "retExtInfo", "time"}
    assert parsed["retExtInfo"] == {}
    return parsed


def test_instruments_paging_with_plain_cursors() -> None:
    rest = _rest(symbols=1203, non_trading=6)
    first = _get(rest, "/v5/market/instruments-info?category=linear")
    result = first["result"]
    assert len(result["list"]) == 500 and result["nextPageCursor"] == "n500"
    names = [i["symbol"] for i in result["list"]]
    cursor = result["nextPageCursor"]
    while cursor:
        page = _get(rest, f"/v5/market/instruments-info?category=linear&limit=1000&cursor={cursor}")
        names += [i["symbol"] for i in page["result"]["list"]]
        cursor = page["result"]["nextPageCursor"]
    assert len(names) == 1203 == len(set(names)) and names == sorted(names)
    item = _get(rest, "/v5/market/instruments-info?category=linear&symbol=BTCUSDT")["result"]
    btc = item["list"][0]
    assert (btc["status"], btc["priceFilter"]["tickSize"], btc["lotSizeFilter"]["qtyStep"]) == (
        "Trading", "0.10", "0.001",
    )  # fmt: skip
    pre = _get(rest, "/v5/market/instruments-info?category=linear&status=PreLaunch")
    assert [i["symbol"] for i in pre["result"]["list"]] == ["PRE1USDT", "PRE3USDT", "PRE5USDT"]
    closed = _get(rest, "/v5/market/instruments-info?category=linear&status=Closed")
    assert len(closed["result"]["list"]) == 3


def test_instruments_errors() -> None:
    rest = _rest()
    cases = {
        "": "Illegal category",
        "category=futures": "Illegal category",
        "category=linear&limit=0": "params error: limit invalid",
        "category=linear&limit=1001": "params error: limit invalid",
        "category=linear&limit=x": "params error: limit invalid",
        "category=linear&status=Open": "params error: status invalid",
        "category=linear&cursor=%25%3D": "params error: cursor invalid",
        "category=linear&symbol=NOTASYMBOL": "params error: symbol invalid",
        "category=linear&symbol=btcusdt": "params error: symbol invalid",
    }
    for query, message in cases.items():
        reply = _get(rest, f"/v5/market/instruments-info?{query}")
        assert (reply["retCode"], reply["retMsg"]) == (10001, message), query
    assert rest.handle("/v5/market/orderbook?category=linear")[0] == 404


def test_spot_instruments_do_not_paginate() -> None:
    rest = _rest(Category.SPOT, symbols=700)
    result = _get(rest, "/v5/market/instruments-info?category=spot&limit=5")["result"]
    assert len(result["list"]) == 700 and "nextPageCursor" not in result
    eth = next(i for i in result["list"] if i["symbol"] == "ETHUSDT")
    assert eth["lotSizeFilter"]["basePrecision"] == "0.00001" and "contractType" not in eth
    unknown = _get(rest, "/v5/market/instruments-info?category=spot&symbol=NOPE")
    assert (unknown["retCode"], unknown["result"]) == (0, {"category": "spot", "list": []})


def test_kline_newest_first_with_the_open_candle() -> None:
    rest = _rest(steps=200)  # 200 s of trades: 4 minutes (3 closed + the open one)
    reply = _get(rest, "/v5/market/kline?category=linear&symbol=BTCUSDT&interval=1")
    rows = reply["result"]["list"]
    assert reply["result"]["symbol"] == "BTCUSDT"
    starts = [int(r[0]) for r in rows]
    assert starts == [START_MS + k * 60_000 for k in (3, 2, 1, 0)]
    assert all(len(r) == 7 and all(isinstance(x, str) for x in r) for r in rows)
    for newer, older in itertools.pairwise(rows):
        assert newer[1] == older[4]  # open = previous close
    limited = _get(rest, "/v5/market/kline?symbol=BTCUSDT&interval=1&limit=2")["result"]["list"]
    assert limited == rows[:2]
    ranged = _get(
        rest,
        f"/v5/market/kline?symbol=BTCUSDT&interval=1&start={START_MS + 60_000}"
        f"&end={START_MS + 120_000}",
    )["result"]["list"]
    assert ranged == rows[1:3]
    five = _get(rest, "/v5/market/kline?symbol=BTCUSDT&interval=5")["result"]["list"]
    assert len(five) == 1 and five[0][1] == rows[-1][1] and five[0][4] == rows[0][4]
    assert sum(Decimal(r[5]) for r in rows) == Decimal(five[0][5])
    for query, message in {
        "symbol=BTCUSDT&interval=1m": "Invalid period!",
        "symbol=BTCUSDT": "Invalid period!",
        "interval=1": "params error: symbol invalid",
        "symbol=BTCUSDT&interval=1&limit=1001": "params error: limit invalid",
        "symbol=BTCUSDT&interval=1&start=abc": "params error: start invalid",
    }.items():
        reply = _get(rest, f"/v5/market/kline?{query}")
        assert (reply["retCode"], reply["retMsg"]) == (10001, message), query


def test_recent_trade() -> None:
    rest = _rest(steps=5)
    trades = _get(rest, "/v5/market/recent-trade?category=linear&symbol=BTCUSDT&limit=1000")
    items = trades["result"]["list"]
    assert 0 < len(items) <= 1000
    times = [int(t["time"]) for t in items]
    assert times == sorted(times, reverse=True)
    assert set(items[0]) == {
        "execId", "symbol", "price", "size", "side", "time", "isBlockTrade", "isRPITrade", "seq",
    }  # fmt: skip
    assert isinstance(items[0]["seq"], str)
    default = _get(rest, "/v5/market/recent-trade?category=linear&symbol=BTCUSDT")
    assert len(default["result"]["list"]) == min(500, len(items))
    bad = _get(rest, "/v5/market/recent-trade?category=linear&symbol=NOPE")
    assert (bad["retCode"], bad["retMsg"]) == (10001, "params error: symbol invalid")
    spot = _rest(Category.SPOT, steps=5)
    over = _get(spot, "/v5/market/recent-trade?category=spot&symbol=BTCUSDT&limit=61")
    assert over["retCode"] == 10001
    assert (
        len(_get(spot, "/v5/market/recent-trade?category=spot&symbol=BTCUSDT")["result"]["list"])
        <= 60
    )


def test_prelaunch_symbols_can_be_subscribed_closed_ones_cannot() -> None:
    market = _rest(symbols=3, non_trading=2).market
    assert market.known_topic("publicTrade.PRE1USDT")  # accepted, never trades
    assert not market.known_topic("publicTrade.OLD2USDT")
    assert market.known_topic("kline.D.BTCUSDT") and market.known_topic("kline.M.ETHUSDT")
    assert not market.known_topic("kline.1m.BTCUSDT")
    assert not market.known_topic("tickers.BTCUSDT")


def test_rest_fail_rate_fails_recent_trade_only_both_ways() -> None:
    """`--rest-fail-rate`: that share of recent-trade requests fails, as an HTTP 503 or as
    Bybit's rate limit (retCode 10006); the other endpoints are never failed."""
    market = _rest(steps=2).market
    rest = Rest(market, Faults(FaultConfig(rest_fail_rate=0.5), seed=4).rest_failure)
    outcomes: collections.Counter[str] = collections.Counter()
    for _ in range(400):
        status, body = rest.handle("/v5/market/recent-trade?category=linear&symbol=BTCUSDT")
        if status == 503:
            outcomes["503"] += 1
            continue
        outcomes[str(json.loads(body)["retCode"])] += 1
    assert set(outcomes) == {"503", "10006", "0"}
    assert 150 < outcomes["0"] < 250 and outcomes["503"] > 50 and outcomes["10006"] > 50
    always = Rest(market, Faults(FaultConfig(rest_fail_rate=1), seed=4).rest_failure)
    assert _get(always, "/v5/market/instruments-info?category=linear")["retCode"] == 0
    assert _get(always, "/v5/market/kline?symbol=BTCUSDT&interval=1")["retCode"] == 0
    for _ in range(50):
        status, body = always.handle("/v5/market/recent-trade?category=linear&symbol=BTCUSDT")
        assert status == 503 or json.loads(body)["retCode"] == 10006
