"""Every example in examples/ runs against the real pipeline (simulator → ingest → aggregate →
publish with the websocket and redis consumers) for a few seconds, as a user starts it, and
what it prints is checked against the candle streams (XRANGE, the exact decimals): the stream
reader (also stopped and started again: it goes on where it stopped), the pub/sub subscriber,
the WebSocket client with resume, and the pybit script (`/v5/market/kline` and `kline.1s`).
"""

from __future__ import annotations

import re
import signal
import subprocess
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from common.wire import STREAM_FIELD, CandleView, candle_view_decoder
from tests.support import replies
from tests.support.pipeline import PASSWORD, USER, Pipeline, start_pipeline, wait_for_ws
from tests.support.procs import Proc, python_module
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

pytest.importorskip("pybit.unified_trading")

Version = tuple[str, str, int, int]  # symbol, interval label, open time, revision


def streams(pipe: Pipeline) -> dict[int, list[CandleView]]:
    """Every shard's candle stream, in order."""
    client = pipe.client()
    try:
        return {
            shard: [
                candle_view_decoder.decode(fields[STREAM_FIELD])
                for _, fields in replies.entries(client.xrange(pipe.keys.klines(shard)))
            ]
            for shard in range(pipe.shards)
        }
    finally:
        client.close()


def versions(pipe: Pipeline) -> dict[Version, CandleView]:
    return {
        (c.symbol, c.interval_label, c.timestamp, c.revision): c
        for shard in streams(pipe).values()
        for c in shard
    }


def example(pipe: Pipeline, name: str, *args: str, run: int = 1) -> Proc:
    log_path = pipe.tmp / f"{name}-{run}.log"
    return python_module(f"examples.{name}", *args, env={}, log_path=log_path)


def lines(proc: Proc, pattern: re.Pattern[str]) -> list[re.Match[str]]:
    return [m for line in proc.output().splitlines() if (m := pattern.fullmatch(line))]


def interrupt(proc: Proc) -> None:
    """Ctrl-C, as a user stops it; it must exit 0."""
    proc.signal(signal.SIGINT)
    try:
        code = proc.popen.wait(20)
    except subprocess.TimeoutExpired:
        proc.popen.kill()
        raise AssertionError(f"{proc.args} still running 20 s after Ctrl-C: "
                             f"{proc.output()[-2000:]}") from None  # fmt: skip
    assert code == 0, f"{proc.args}: {proc.output()[-2000:]}"


READER_LINE = re.compile(
    r"(\S+) (\S+) (\d+) o=(\S+) h=(\S+) l=(\S+) c=(\S+) v=(\S+) rev=(\d+)( replaces)?"
)
PUBSUB_LINE = re.compile(r"(\S+) (\S+) (\d+) c=(\S+) v=(\S+) rev=(\d+)")
WS_LINE = re.compile(r"(\S+) (\S+) (\d+) close=(\S+)(?: \(revision (\d+)\))?")
HISTORY_LINE = re.compile(r"history 1s (\d+) o=(\S+) h=(\S+) l=(\S+) c=(\S+) v=(\S+) t=(\S+)")
TOPIC_LINE = re.compile(r"kline\.1s\.(\S+) (\d+) c=(\S+) v=(\S+) (closed|open)")


def check_stream_reader(pipe: Pipeline, runs: list[Proc]) -> int:
    """Each printed candle is a stream entry with its values; over both runs, each shard's
    printed entries are one stretch of its stream: nothing missed, nothing twice."""
    by_version = versions(pipe)
    order = {
        (c.symbol, c.interval_label, c.timestamp, c.revision): (shard, i)
        for shard, entries in streams(pipe).items()
        for i, c in enumerate(entries)
    }
    printed: dict[int, list[int]] = defaultdict(list)
    for proc in runs:
        for m in lines(proc, READER_LINE):
            version = (m[1], m[2], int(m[3]), int(m[9]))
            c = by_version[version]
            assert [c.open, c.high, c.low, c.close, c.volume] == [
                Decimal(m[i]) for i in range(4, 9)
            ]
            assert (m[10] is not None) == (c.revision > 0)  # no candle came twice
            shard, index = order[version]
            printed[shard].append(index)
    for shard, indexes in printed.items():
        assert indexes == list(range(indexes[0], indexes[0] + len(indexes))), shard
    return sum(len(i) for i in printed.values())


def test_every_example_runs_against_the_pipeline(tmp_path: Path, redis_url: str) -> None:
    pipe = start_pipeline(
        tmp_path, redis_url, ("--symbols", "6", "--rate", "150", "--quiet-fraction", "0"),
        shards=2, intervals="1s,1m",
    )  # fmt: skip
    procs: list[Proc] = []
    try:
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        wait_until(lambda: sum(map(len, streams(pipe).values())) > 30, 60, "candles")
        symbol = streams(pipe)[0][-1].symbol
        host = f"127.0.0.1:{pipe.ws_port}"
        reader = example(pipe, "stream_reader", redis_url, "example-reader")
        pubsub = example(pipe, "pubsub_subscriber", redis_url, "--channel", "pipeline-klines")
        ws = example(pipe, "ws_resume", f"ws://{host}/", USER, PASSWORD, "1s.*")
        pybit = example(pipe, "pybit_klines", host, USER, PASSWORD, symbol, "1s")
        procs = [reader, pubsub, ws, pybit]
        for proc, pattern, count in ((reader, READER_LINE, 30), (pubsub, PUBSUB_LINE, 30),
                                     (ws, WS_LINE, 30), (pybit, TOPIC_LINE, 3)):  # fmt: skip
            wait_until(lambda p=proc, r=pattern, n=count: len(lines(p, r)) >= n, 60,  # type: ignore[misc]
                       f"{count} candles printed by {proc.args}")  # fmt: skip
        for proc in procs:
            interrupt(proc)
        again = example(pipe, "stream_reader", redis_url, "example-reader", run=2)
        procs.append(again)
        wait_until(lambda: len(lines(again, READER_LINE)) >= 20, 60, "the reader started again")
        interrupt(again)

        by_version = versions(pipe)
        assert check_stream_reader(pipe, [reader, again]) >= 50
        for m in lines(pubsub, PUBSUB_LINE):
            c = by_version[(m[1], m[2], int(m[3]), int(m[6]))]
            assert (c.close, c.volume) == (Decimal(m[4]), Decimal(m[5]))
        closes: dict[tuple[str, str, int], set[Decimal]] = defaultdict(set)
        for symbol_, label, ts, revision in by_version:
            closes[(symbol_, label, ts)].add(by_version[(symbol_, label, ts, revision)].close)
        ws_lines = lines(ws, WS_LINE)
        assert all(Decimal(m[4]) in closes[(m[1], m[2], int(m[3]))] for m in ws_lines)
        assert len({(m[1], m[2], m[3]) for m in ws_lines if m[5] is None}) == len(
            [m for m in ws_lines if m[5] is None]
        )  # each candle once, then only revisions
        history = lines(pybit, HISTORY_LINE)
        assert len(history) == 5
        for m in history:  # /v5/market/kline: the store's latest revision, Bybit's row shape
            latest = max(
                (v for k, v in by_version.items() if k[:3] == (symbol, "1s", int(m[1]))),
                key=lambda v: v.revision,
            )
            assert [Decimal(m[i]) for i in range(2, 8)] == [
                latest.open, latest.high, latest.low, latest.close, latest.volume, latest.turnover
            ]  # fmt: skip
        topics = lines(pybit, TOPIC_LINE)
        assert {m[5] for m in topics} == {"closed"} and {m[1] for m in topics} == {symbol}
        for m in topics:  # kline.1s: each push is a candle of the stream, confirm: true
            assert Decimal(m[3]) in closes[(symbol, "1s", int(m[2]))]
    finally:
        for proc in procs:
            if proc.popen.poll() is None:
                proc.popen.kill()
        pipe.stop_all()
