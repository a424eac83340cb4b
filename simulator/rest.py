"""REST `/v5/market/...`: (path, query) -> (HTTP status, JSON body). No sockets.

Business errors are HTTP 200 with `retCode` 10001 (as Bybit's); an unknown path is a 404.
Cursors are plain alphanumeric (`n500`), so it does not matter whether a client re-encodes them.
"""

from __future__ import annotations

from collections.abc import Callable

from common.bybit_rest import (
    KLINE_LIMIT_DEFAULT,
    KLINE_LIMIT_MAX,
    PARAMS_ERROR,
    Json,
    ParamError,
    envelope,
    int_param,
    kline_result,
    limit_param,
    split_target,
)
from common.wire import Category
from simulator.faults import REST_TOO_MANY_VISITS, REST_UNAVAILABLE
from simulator.instruments import Instrument
from simulator.klines import INTERVALS
from simulator.market import Market

STATUSES = ("PreLaunch", "Trading", "Delivering", "Closed")
CATEGORIES = ("spot", "linear", "inverse", "option")


RECENT_TRADE = "/v5/market/recent-trade"


def _no_failure() -> int:
    return 0


class Rest:
    def __init__(self, market: Market, failure: Callable[[], int] = _no_failure) -> None:
        """`failure`: asked before each recent-trade answer (simulator.faults.rest_failure)."""
        self.market = market
        self._failure = failure
        self._routes: dict[str, Callable[[dict[str, str]], Json]] = {
            "/v5/market/instruments-info": self.instruments_info,
            RECENT_TRADE: self.recent_trade,
            "/v5/market/kline": self.kline,
        }

    def handle(self, target: str) -> tuple[int, str]:
        path, query = split_target(target)
        route = self._routes.get(path)
        if route is None:
            return 404, "404 page not found"
        if path == RECENT_TRADE:
            failure = self._failure()
            if failure == REST_UNAVAILABLE:
                return REST_UNAVAILABLE, "503 service unavailable"
            if failure == REST_TOO_MANY_VISITS:
                return 200, envelope(REST_TOO_MANY_VISITS, "Too many visits!", {}).decode()
        try:
            return 200, envelope(0, "OK", route(query)).decode()
        except ParamError as exc:
            return 200, envelope(PARAMS_ERROR, str(exc), exc.result).decode()

    def _category(self, query: dict[str, str], default: str | None = None) -> str:
        category = query.get("category") or default
        if category not in CATEGORIES:
            raise ParamError("Illegal category")
        return category

    def _symbol(self, query: dict[str, str], category: str) -> Instrument:
        symbol = query.get("symbol", "")
        i = self.market.index.get(symbol)
        if category != self.market.category.value or i is None:
            raise ParamError("params error: symbol invalid", {"category": "", "list": []})
        return self.market.instruments[i]

    def instruments_info(self, query: dict[str, str]) -> Json:
        category = self._category(query)
        status = query.get("status") or "Trading"
        if status not in STATUSES:
            raise ParamError("params error: status invalid")
        limit = limit_param(query, 500, 1000)
        ours = category == self.market.category.value
        chosen = [i for i in self.market.instruments if ours and i.status == status]
        chosen.sort(key=lambda i: i.symbol)
        spot = category == Category.SPOT.value
        if "symbol" in query:
            chosen = [i for i in chosen if i.symbol == query["symbol"]]
            if not chosen and not spot:
                raise ParamError(
                    "params error: symbol invalid",
                    {"category": "", "list": [], "nextPageCursor": ""},
                )
        items = [self._instrument(i) for i in chosen]
        if spot:  # spot does not paginate and has no cursor key
            return {"category": category, "list": items}
        offset = self._cursor(query.get("cursor", ""), len(items))
        page = items[offset : offset + limit]
        more = offset + limit < len(items)
        cursor = f"n{offset + limit}" if more else ""
        return {"category": category, "list": page, "nextPageCursor": cursor}

    @staticmethod
    def _cursor(text: str, total: int) -> int:
        if not text:
            return 0
        if text[:1] != "n" or not text[1:].isdigit() or int(text[1:]) > total:
            raise ParamError("params error: cursor invalid")
        return int(text[1:])

    def _instrument(self, inst: Instrument) -> Json:
        category = self.market.category
        if category is Category.SPOT:
            return {
                "symbolId": inst.symbol_id, "symbol": inst.symbol, "baseCoin": inst.base,
                "quoteCoin": inst.quote, "innovation": "0", "status": inst.status,
                "marginTrading": "utaOnly", "stTag": "0",
                "lotSizeFilter": {
                    "basePrecision": inst.lot_text, "quotePrecision": "0.0000001",
                    "minOrderQty": inst.lot_text, "maxOrderQty": "100000", "minOrderAmt": "5",
                    "maxOrderAmt": "8000000", "maxLimitOrderQty": "100000",
                    "maxMarketOrderQty": "50000", "postOnlyMaxLimitOrderSize": "500000",
                },
                "priceFilter": {"tickSize": inst.tick_text},
                "riskParameters": {"priceLimitRatioX": "0.005", "priceLimitRatioY": "0.01"},
                "symbolType": "", "xstockMultiplier": "1",
            }  # fmt: skip
        inverse = category is Category.INVERSE
        return {
            "symbol": inst.symbol,
            "contractType": "InversePerpetual" if inverse else "LinearPerpetual",
            "status": inst.status, "baseCoin": inst.base, "quoteCoin": inst.quote,
            "launchTime": "1585526400000", "deliveryTime": "0", "deliveryFeeRate": "",
            "priceScale": str(inst.price_digits),
            "leverageFilter": {"minLeverage": "1", "maxLeverage": "100.00", "leverageStep": "0.01"},
            "priceFilter": {
                "minPrice": inst.tick_text, "maxPrice": "1999999.80", "tickSize": inst.tick_text,
            },
            "lotSizeFilter": {
                "maxOrderQty": "1000000", "minOrderQty": inst.lot_text, "qtyStep": inst.lot_text,
                "postOnlyMaxOrderQty": "1000000", "maxMktOrderQty": "500000",
                "minNotionalValue": "5",
            },
            "unifiedMarginTrade": True, "fundingInterval": 480, "settleCoin": inst.quote,
            "copyTrading": "both", "upperFundingRate": "0.005", "lowerFundingRate": "-0.005",
            "isPreListing": inst.status == "PreLaunch", "preListingInfo": None,
            "riskParameters": {"priceLimitRatioX": "0.01", "priceLimitRatioY": "0.02"},
            "displayName": "", "symbolType": "", "forbidUplWithdrawal": False,
            "symbolId": inst.symbol_id,
        }  # fmt: skip

    def recent_trade(self, query: dict[str, str]) -> Json:
        category = self._category(query)
        spot = category == Category.SPOT.value
        inst = self._symbol(query, category)
        limit = limit_param(query, 60 if spot else 500, 60 if spot else 1000)
        trades = list(self.market.recent[self.market.index[inst.symbol]])[-limit:]
        items = [
            {
                "execId": t.trade_id,
                "symbol": inst.symbol,
                "price": inst.price_text(t.price),
                "size": inst.size_text(t.size),
                "side": "Buy" if t.buy else "Sell",
                "time": str(t.time_ms),
                "isBlockTrade": False,
                "isRPITrade": t.rpi,
                "seq": str(t.seq),
            }
            for t in reversed(trades)
        ]
        return {"category": category, "list": items}

    def kline(self, query: dict[str, str]) -> Json:
        category = self._category(query, default="linear")
        inst = self._symbol(query, category)
        code = query.get("interval", "")
        if code not in INTERVALS:
            raise ParamError("Invalid period!")
        limit = limit_param(query, KLINE_LIMIT_DEFAULT, KLINE_LIMIT_MAX)
        start, end = int_param(query, "start"), int_param(query, "end")
        sk = self.market.klines[self.market.index[inst.symbol]]
        candles = sk.buckets(code, self.market.now_ms)
        chosen = [
            c
            for c in candles
            if (start is None or c.start_ms >= start) and (end is None or c.start_ms <= end)
        ]
        rows = [sk.digits.as_row(c) for c in reversed(chosen[-limit:])]
        return kline_result(inst.symbol, category, rows)
