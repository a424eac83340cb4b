from __future__ import annotations

import json
import re
from typing import TypedDict, Unpack

from common.decimals import parse_scaled
from common.wire import Category
from simulator.frames import encode_trades
from simulator.generator import Batch, Generator, GeneratorConfig
from simulator.instruments import build_universe

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")


class Bursts(TypedDict, total=False):
    burst_every_s: float
    burst_ms: int
    burst_factor: float


def _slots(
    category: Category, seed: int, slots: int = 50, **kw: Unpack[Bursts]
) -> list[list[Batch]]:
    instruments = build_universe(category, 30, None, seed)
    config = GeneratorConfig(rate=20_000, seed=seed, **kw)
    generator = Generator(instruments, category, config)
    return [list(generator.next_slot(1_000_000 + k * 10)) for k in range(slots)]


def test_same_seed_same_trades_other_seed_others() -> None:
    assert _slots(Category.LINEAR, 3) == _slots(Category.LINEAR, 3)
    assert _slots(Category.LINEAR, 3) != _slots(Category.LINEAR, 4)


def test_rate_and_bursts() -> None:
    plain = sum(len(b.trades) for slot in _slots(Category.LINEAR, 1, 100) for b in slot)
    assert plain == 20_000  # 100 slots of 10 ms at 20,000/s, exactly (fractions carried)
    bursty = _slots(Category.LINEAR, 1, 100, burst_every_s=0.5, burst_ms=100, burst_factor=5.0)
    counts = [sum(len(b.trades) for b in slot) for slot in bursty]
    assert counts[0] == 1000 and counts[10] == 200 and counts[50] == 1000


def test_trades_on_tick_and_lot_ascending_and_batched() -> None:
    for category in Category:
        instruments = build_universe(category, 30, None, 5)
        config = GeneratorConfig(rate=50_000, seed=5, max_batch=7, quiet_fraction=0.2)
        generator = Generator(instruments, category, config)
        assert len(generator.quiet) == 6
        seen_ids: set[str] = set()
        for k in range(20):
            for batch in generator.next_slot(2_000_000 + 10 * k):
                inst = instruments[batch.idx]
                assert inst.symbol not in generator.quiet
                assert 1 <= len(batch.trades) <= 7
                frame = json.loads(
                    encode_trades(category, inst, batch.trades, 2_000_009 + 10 * k).text
                )
                assert frame["topic"] == f"publicTrade.{inst.symbol}"
                times = [t["T"] for t in frame["data"]]
                assert times == sorted(times) and frame["ts"] >= times[-1]
                for t in frame["data"]:
                    assert len(t["p"].partition(".")[2]) == inst.price_digits
                    assert len(t["v"].partition(".")[2]) == inst.size_digits
                    assert parse_scaled(t["p"]) % parse_scaled(inst.tick_text) == 0
                    assert parse_scaled(t["v"]) % parse_scaled(inst.lot_text) == 0
                    assert ("L" in t) is (category is not Category.SPOT)
                    assert isinstance(t["seq"], int) and isinstance(t["RPI"], bool)
                    if category is Category.SPOT:
                        assert t["i"].isdigit() and len(t["i"]) == 19
                    else:
                        assert UUID.match(t["i"]), t["i"]
                    assert t["i"] not in seen_ids
                    seen_ids.add(t["i"])


def test_key_order_per_category() -> None:
    instruments = build_universe(Category.SPOT, 1, None, 1)
    generator = Generator(instruments, Category.SPOT, GeneratorConfig(rate=1000, seed=1))
    batch = next(b for k in range(10) for b in generator.next_slot(10 * k))
    text = encode_trades(Category.SPOT, instruments[0], batch.trades, 100).text
    assert text.startswith(
        '{"topic":"publicTrade.BTCUSDT","ts":100,"type":"snapshot","data":[{"i":'
    )
    assert list(json.loads(text)["data"][0]) == ["i", "T", "p", "v", "S", "seq", "s", "BT", "RPI"]
    linear = build_universe(Category.LINEAR, 1, None, 1)
    generator = Generator(linear, Category.LINEAR, GeneratorConfig(rate=1000, seed=1))
    batch = next(b for k in range(10) for b in generator.next_slot(10 * k))
    item = json.loads(encode_trades(Category.LINEAR, linear[0], batch.trades, 100).text)["data"][0]
    assert list(item) == ["T", "s", "S", "v", "p", "L", "i", "BT", "RPI", "seq"]


def test_universe_names_statuses_and_sizes() -> None:
    universe = build_universe(Category.LINEAR, 600, None, 1, non_trading=4)
    names = [i.symbol for i in universe]
    assert names[:3] == ["BTCUSDT", "ETHUSDT", "SOLUSDT"] and len(set(names)) == 604
    assert [i.status for i in universe[-4:]] == ["PreLaunch", "Closed", "PreLaunch", "Closed"]
    btc = universe[0]
    assert (btc.tick_text, btc.lot_text, btc.price_text(6511420)) == ("0.10", "0.001", "65114.20")
    spot = build_universe(Category.SPOT, 2, ["ETHUSDT", "FOOUSDT"], 1)
    assert spot[0].lot_text == "0.00001" and spot[1].symbol == "FOOUSDT"
