"""Pure parts of ingest: classify, dedup, symbol selection, replay sources."""

from __future__ import annotations

import gzip
import ssl
from pathlib import Path

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosedError, InvalidStatus, InvalidURI
from websockets.http11 import Response

from common.errors import ConfigError, FatalError, RetryableError
from common.settings import IngestSettings
from common.wire import Category, Side, Trade
from ingest.bybit.instruments import Instrument
from ingest.classify import Verdict, classify
from ingest.connection import DeadConnectionError
from ingest.dedup import Deduper, RecentIds
from ingest.replay_sources import merged, read_any, read_capture, read_csv, seconds_text_to_ms
from ingest.symbols import refreshed_symbols, select_symbols
from tests.support.procs import TESTDATA


def _status(code: int) -> InvalidStatus:
    return InvalidStatus(Response(code, "x", Headers()))


@pytest.mark.parametrize(
    ("exc", "verdict"),
    [
        (ConnectionClosedError(None, None), Verdict.RETRY),
        (ConnectionRefusedError(), Verdict.RETRY),
        (TimeoutError(), Verdict.RETRY),
        (DeadConnectionError("quiet"), Verdict.RETRY),
        (RetryableError("x"), Verdict.RETRY),
        (_status(429), Verdict.RETRY),
        (_status(503), Verdict.RETRY),
        (_status(403), Verdict.FATAL),
        (_status(404), Verdict.FATAL),
        (InvalidURI("nope", "bad"), Verdict.FATAL),
        (FatalError("x"), Verdict.FATAL),
        (ssl.SSLCertVerificationError(), Verdict.FATAL),
        (ValueError("bug"), Verdict.FATAL),
    ],
)
def test_classify(exc: BaseException, verdict: Verdict) -> None:
    assert classify(exc) is verdict


def test_recent_ids_remember_at_least_the_last_size_ids_and_at_most_twice() -> None:
    recent = RecentIds(3)
    assert [recent.add(x) for x in "abca"] == [True, True, True, False]
    assert recent.add("d") is True
    assert all(x in recent for x in "abcd")  # two generations: a b c (old) and d (young)
    for x in "ef":
        assert recent.add(x) is True
    assert "a" not in recent  # a, b, c are forgotten together
    assert all(x in recent for x in "def")
    assert len(recent) == 3


def _t(trade_id: str) -> Trade:
    return Trade(1, "1", "1", Side.BUY, trade_id)


def test_deduper_drops_repeats_and_keeps_order() -> None:
    dedup = Deduper(per_symbol=100)
    first = [_t("1"), _t("2")]
    assert dedup.fresh("A", first) is first
    assert dedup.fresh("A", [_t("2"), _t("3"), _t("1"), _t("4")]) == [_t("3"), _t("4")]
    assert dedup.fresh("B", [_t("1")]) == [_t("1")]  # per symbol
    dedup.seed("C", ["9"])
    assert dedup.fresh("C", [_t("9")]) == []
    assert dedup.dropped == 3


INSTRUMENTS = [Instrument(s, "Trading") for s in ("ETHUSDT", "BTCUSDT", "SOLUSDT")] + [
    Instrument("OLDUSDT", "Closed")
]


def _settings(**env: object) -> IngestSettings:
    return IngestSettings(_env_file=None, **env)  # type: ignore[call-arg]


def test_load_all_symbols_is_alphabetical_and_capped() -> None:
    settings = _settings(bybit_load_all_symbols=True, bybit_symbols_limit=2)
    assert select_symbols(settings, INSTRUMENTS) == ["BTCUSDT", "ETHUSDT"]


def test_unknown_symbols_are_one_config_error_line() -> None:
    settings = _settings(bybit_symbols="BTCUSDT,BTCUSD,OLDUSDT")
    with pytest.raises(ConfigError) as info:
        select_symbols(settings, INSTRUMENTS)
    assert str(info.value) == (
        "STREAMER_BYBIT_SYMBOLS: not trading on linear: BTCUSD: unknown (did you mean BTCUSDT?); "
        "OLDUSDT: status Closed, not Trading"
    )


def test_refresh_drops_delisted_symbols_without_failing() -> None:
    settings = _settings(bybit_symbols="BTCUSDT,SOLUSDT")
    assert refreshed_symbols(settings, INSTRUMENTS[:2]) == ["BTCUSDT"]


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1585180700.0647", 1585180700064),
        ("1585180700.02", 1585180700020),
        ("1585180700", 1585180700000),
        ("1585180268.7285", 1585180268728),
        ("1585180700.0009999", 1585180700000),
        ("1585180700.999", 1585180700999),
    ],
)
def test_seconds_text_to_ms_is_exact(text: str, ms: int) -> None:
    assert seconds_text_to_ms(text) == ms


CSV_HEAD = "timestamp,symbol,side,size,price,tickDirection,trdMatchID,grossValue\n"


def test_csv_newest_first_and_oldest_first_give_the_same_records(tmp_path: Path) -> None:
    rows = [
        "1585180700.0647,BTCUSDT,Buy,0.042,6698.5,PlusTick,c,1\n",
        "1585180700.0641,BTCUSDT,Sell,0.010,6698.0,PlusTick,b,1\n",
        "1585180699.5,BTCUSDT,Buy,0.072,6698.0,PlusTick,a,1\n",
    ]
    newest = tmp_path / "n.csv"
    newest.write_text(CSV_HEAD + "".join(rows))
    oldest = tmp_path / "o.csv.gz"
    with gzip.open(oldest, "wt") as handle:
        handle.write(CSV_HEAD + "".join(reversed(rows)))
    for path in (newest, oldest):
        records = read_any(path, Category.LINEAR)
        assert [(r.time_ms, [t.trade_id for t in r.trades]) for r in records] == [
            (1585180699500, ["a"]),
            (1585180700064, ["b", "c"]),  # one ms, one symbol: one entry, in trade order
        ]
        assert records[1].trades[1] == Trade(1585180700064, "6698.5", "0.042", Side.BUY, "c")


def test_csv_with_wrong_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a Bybit trading-archive CSV"):
        read_csv(path)


def test_recorded_archive_and_capture() -> None:
    archive = TESTDATA / "liquidity-migration__bybit-trades.csv"
    capture = TESTDATA / "cryptofeed__BYBIT.jsonl.zst"
    if not archive.exists():
        pytest.skip(f"{TESTDATA} is absent (real Bybit captures are not in the repo)")
    records = read_csv(archive)
    assert sum(len(r.trades) for r in records) == 64
    assert records[0].time_ms == 1585174319860
    assert records[-1].trades[-1].trade_id == "08ff9568-cb50-55d6-b497-13727eec09dc"
    times = [r.time_ms for r in records]
    assert times == sorted(times)
    linear = read_capture(capture, Category.LINEAR)
    spot = read_capture(capture, Category.SPOT)
    assert sum(len(r.trades) for r in linear) == 327
    assert sum(len(r.trades) for r in spot) == 20
    assert {r.symbol for r in linear} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"}
    both = list(merged([linear, records]))
    assert [r.time_ms for r in both] == sorted(r.time_ms for r in both)
