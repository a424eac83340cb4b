"""pybit 5.17 (Bybit's official SDK), unchanged but for the address, against the simulator.

pybit hard-codes `wss://...`; the only change is its module constant `PUBLIC_WSS` pointed at
ws://127.0.0.1, and the HTTP manager's `endpoint` attribute.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest

pybit_ut = pytest.importorskip("pybit.unified_trading")

from tests.simulator.conftest import Sim  # noqa: E402
from tests.support.waiting import wait_until  # noqa: E402

pytestmark = pytest.mark.e2e


@pytest.fixture
def pointed_at(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    def point(sim: Sim) -> None:
        base = sim.ws_url.rsplit("/", 1)[0]
        monkeypatch.setattr(pybit_ut, "PUBLIC_WSS", base + "/{CHANNEL_TYPE}")

    yield point


def test_pybit_websocket_trades_klines_and_pings(sim_factory: Any, pointed_at: Any) -> None:
    sim: Sim = sim_factory(
        "--symbols", "4", "--rate", "200", "--quiet-fraction", "0", "--kline-push-ms", "300",
        "--idle-timeout-s", "2", "--log-level", "DEBUG",
    )  # fmt: skip
    pointed_at(sim)
    trades: list[dict[str, Any]] = []
    klines: list[dict[str, Any]] = []
    lock = threading.Lock()

    def on_trade(message: dict[str, Any]) -> None:
        with lock:
            trades.append(message)

    def on_kline(message: dict[str, Any]) -> None:
        with lock:
            klines.append(message)

    ws = pybit_ut.WebSocket(testnet=False, channel_type="linear", ping_interval=1, ping_timeout=0.5)
    # a second socket with no subscriptions: only pybit's pings keep it past the idle timeout
    quiet = pybit_ut.WebSocket(testnet=False, channel_type="linear", ping_interval=1,
                               ping_timeout=0.5)  # fmt: skip
    try:
        ws.trade_stream(symbol=["BTCUSDT", "ETHUSDT"], callback=on_trade)
        ws.kline_stream(interval=1, symbol="BTCUSDT", callback=on_kline)
        wait_until(lambda: len(trades) > 20 and len(klines) > 3, 15, "pybit callbacks")
        assert ws.endpoint == sim.ws_url
        with lock:
            assert {m["topic"] for m in trades} == {"publicTrade.BTCUSDT", "publicTrade.ETHUSDT"}
            assert all(m["data"] for m in trades)
            item = klines[-1]["data"][0]
            assert klines[-1]["topic"] == "kline.1.BTCUSDT" and item["interval"] == "1"
            assert item["end"] == item["start"] + 59_999
        # each socket pings about once a second; 8 pings span well over the 2 s idle timeout
        wait_until(lambda: sim.proc.output().count("op ping on") >= 8, 15, "pybit's pings")
        assert ws.is_connected() and quiet.is_connected()
        ws.unsubscribe("publicTrade.BTCUSDT")  # pybit re-sends its whole request as unsubscribe
        seen = len(klines)
        wait_until(lambda: len(klines) > seen + 2, 5, "klines after the unsubscribe")
        assert ws.is_connected()
    finally:
        ws.exit()
        quiet.exit()
    assert "closing idle connection" not in sim.proc.output()


def test_pybit_http(sim_factory: Any) -> None:
    sim: Sim = sim_factory("--symbols", "1200", "--non-trading", "2", "--rate", "500")
    session = pybit_ut.HTTP(testnet=False)
    session.endpoint = sim.http_url
    page = session.get_instruments_info(category="linear", limit=1000)
    assert page["retCode"] == 0 and len(page["result"]["list"]) == 1000
    cursor = page["result"]["nextPageCursor"]
    rest = session.get_instruments_info(category="linear", limit=1000, cursor=cursor)
    assert len(rest["result"]["list"]) == 200 and rest["result"]["nextPageCursor"] == ""
    wait_until(
        lambda: session.get_public_trade_history(category="linear", symbol="BTCUSDT")["result"][
            "list"
        ],
        5,
        "recent trades",
    )
    klines = session.get_kline(category="linear", symbol="BTCUSDT", interval="1", limit=1000)
    assert klines["result"]["list"] and len(klines["result"]["list"][0]) == 7
    with pytest.raises(Exception, match="params error: symbol invalid"):
        session.get_kline(category="linear", symbol="NOPE", interval="1")


def test_pybit_reconnects_through_drop_faults(sim_factory: Any, pointed_at: Any) -> None:
    """pybit re-sends its stored subscribe frames (same req_id) after a drop; every trade the
    ledger says was sent reaches it, and the drop windows are in the ledger."""
    sim: Sim = sim_factory("--symbols", "3", "--rate", "150", "--quiet-fraction", "0",
                           "--drop-every-s", "1")  # fmt: skip
    pointed_at(sim)
    ids: list[str] = []
    lock = threading.Lock()

    def on_trade(message: dict[str, Any]) -> None:
        with lock:
            ids.extend(t["i"] for t in message["data"])

    ws = pybit_ut.WebSocket(testnet=False, channel_type="linear", retries=0)
    try:
        ws.trade_stream(symbol=["BTCUSDT", "ETHUSDT"], callback=on_trade)
        wait_until(lambda: sum("drop" in x for x in sim.ledger_lines()) >= 2, 10, "two drops")
        sent = [x["i"] for x in sim.ledger_lines() if "drop" not in x]
        assert len(sent) > 50

        def received_all_sent() -> bool:
            with lock:
                return ids[: len(sent)] == sent

        wait_until(received_all_sent, 5, "pybit to receive every trade in the ledger")
    finally:
        ws.exit()
    assert sim.proc.output().count("fault: dropping") >= 2
