"""Pure parts of ingest: classify, dedup, symbol selection, replay sources."""

from __future__ import annotations

import gzip
import io
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from ingest.replay_sources import (
    Item,
    Record,
    merged,
    read_any,
    read_capture,
    read_csv,
    seconds_text_to_ms,
)
from ingest.symbols import refreshed_symbols, select_symbols
from tests.support.procs import TESTDATA, need_testdata


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
    dedup.unsee("A", ["1", "3"])  # dropped unwritten (ingest.writer's on_dropped)
    assert dedup.fresh("A", [_t("1"), _t("2"), _t("3")]) == [_t("1"), _t("3")]
    dedup.unsee("Z", ["1"])  # a symbol it never saw: nothing to do


INSTRUMENTS = [Instrument(s, "Trading") for s in ("ETHUSDT", "BTCUSDT", "SOLUSDT")] + [
    Instrument("OLDUSDT", "Closed")
]


def _settings(**env: Any) -> IngestSettings:
    return IngestSettings(_env_file=None, **env)


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
        records = _records(read_any(path, Category.LINEAR))
        assert [(r.time_ms, [t.trade_id for t in r.trades]) for r in records] == [
            (1585180699500, ["a"]),
            (1585180700064, ["b", "c"]),  # one ms, one symbol: one entry, in trade order
        ]
        assert records[1].trades[1] == Trade(1585180700064, "6698.5", "0.042", Side.BUY, "c")


def _records(items: Iterator[Item]) -> list[Record]:
    """The items of an archive: records only (seeds come from a capture's klines)."""
    out = []
    for item in items:
        assert isinstance(item, Record), item
        out.append(item)
    return out


def test_csv_with_wrong_columns_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "x.csv"
    path.write_text("a,b\n1,2\n")
    with pytest.raises(ConfigError, match="not a Bybit trading-archive CSV"):
        read_csv(path)


def test_recorded_archive_and_capture() -> None:
    archive = TESTDATA / "liquidity-migration__bybit-trades.csv"
    capture = TESTDATA / "cryptofeed__BYBIT.jsonl.zst"
    need_testdata(archive.name, capture.name)
    records = list(read_csv(archive))
    assert sum(len(r.trades) for r in records) == 64
    assert records[0].time_ms == 1585174319860
    assert records[-1].trades[-1].trade_id == "08ff9568-cb50-55d6-b497-13727eec09dc"
    times = [r.time_ms for r in records]
    assert times == sorted(times)
    linear = list(read_capture(capture, Category.LINEAR))
    spot = list(read_capture(capture, Category.SPOT))
    # a capture's confirmed klines give seeds too (ingest/replay_sources.py): trades are in records
    assert sum(len(r.trades) for r in linear if isinstance(r, Record)) == 327
    assert sum(len(r.trades) for r in spot if isinstance(r, Record)) == 20
    assert {r.symbol for r in linear} == {"BTCUSDT", "ETHUSDT", "SOLUSDT", "DOGEUSDT"}
    both = list(merged([iter(linear), iter(records)]))
    assert [r.time_ms for r in both] == sorted(r.time_ms for r in both)


def test_newest_first_archive_is_reversed_a_chunk_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Many chunks through the temporary file give the records a whole-file reverse gives."""
    rows = [
        f"1585180{700 - i // 3}.{(999 - i) % 1000:03d},BTCUSDT,Buy,0.{i + 1:03d},6698.5,"
        f"PlusTick,id{i},1\n"
        for i in range(100)
    ]  # newest first, three rows a second
    path = tmp_path / "n.csv"
    path.write_text(CSV_HEAD + "".join(rows))
    expected = list(read_csv(path))
    monkeypatch.setattr("ingest.replay_sources.REVERSE_CHUNK_ROWS", 7)
    chunked = list(read_csv(path))
    assert chunked == expected
    times = [r.time_ms for r in chunked]
    assert times == sorted(times) and len(times) > 50
    assert [t.trade_id for r in chunked for t in r.trades] == [
        f"id{i}" for i in reversed(range(100))
    ]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_replay_progress_is_a_bar_on_a_terminal_and_log_lines_elsewhere(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from ingest.replay import Progress

    terminal = _Terminal()
    bar = Progress(1000, terminal)
    bar.update(1234, 500, final=True)
    shown = terminal.getvalue()
    assert "replay" in shown and "50%" in shown and "1,234 trades" in shown and "trades/s" in shown
    piped = io.StringIO()
    with caplog.at_level("INFO", logger="ingest.replay"):
        Progress(1000, piped).update(1234, 1000, final=True)
    assert piped.getvalue() == ""
    assert "replay: 1,234 trades" in caplog.text and "100.0% of the input read" in caplog.text
