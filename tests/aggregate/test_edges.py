"""State that must not outlive its shard or its symbol, and trade entries trimmed away unread:
`python -m aggregate` against a real redis-server, on streams written here.

Every stream is written on a 100 ms grid from START_MS: trades of a few symbols, then a clock
entry, so stream time is known at each entry without asking the aggregator.
"""

from __future__ import annotations

import urllib.request
from pathlib import Path

import pytest
import redis

from aggregate import checkpoint
from common.keys import Keys
from common.sharding import shard_of
from common.wire import (
    STREAM_FIELD,
    ClockEntry,
    Side,
    Trade,
    TradesEntry,
    candle_view_decoder,
    entry_encoder,
)
from tests.support import replies
from tests.support.procs import Proc, python_module
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.redis, pytest.mark.e2e]

START_MS = 1_786_310_000_000  # a whole minute
STAY, MOVE = "BAUSDT", "AAUSDT"  # with 2 shards both in shard 0; with 4, MOVE is in shard 2


def _stretch(symbols: list[str], from_ms: int, to_ms: int, tag: str) -> list[bytes]:
    """Trades of `symbols` every 100 ms in [from_ms, to_ms), each step closed by a clock."""
    out = []
    for t in range(from_ms, to_ms, 100):
        for i, symbol in enumerate(symbols):
            trade = Trade(t, f"{100 + i}.{t // 100 % 10}", "0.5", Side.BUY, f"{tag}-{symbol}-{t}")
            out.append(entry_encoder.encode(TradesEntry(symbol, [trade], t, t)))
        out.append(entry_encoder.encode(ClockEntry(t)))
    return out


def _clock(t: int) -> bytes:
    return entry_encoder.encode(ClockEntry(t))


def _fill(client: redis.Redis, stream: str, entries: list[bytes]) -> str:
    pipe = client.pipeline(transaction=False)
    for data in entries:
        pipe.xadd(stream, {STREAM_FIELD: data})
    return str(pipe.execute()[-1].decode())


def _env(redis_url: str, prefix: str, shards: int, ids: str) -> dict[str, str]:
    return {
        "STREAMER_REDIS_URL": redis_url,
        "STREAMER_REDIS_PREFIX": prefix,
        "STREAMER_SHARDS": str(shards),
        "STREAMER_SHARD_IDS": ids,
        "STREAMER_KLINE_INTERVALS": "1s",
    }


def _head(client: redis.Redis, keys: Keys, shard: int, proc: Proc) -> str:
    if proc.popen.poll() is not None:
        raise AssertionError(f"aggregate exited {proc.popen.returncode}:\n{proc.output()}")
    raw = client.hget(keys.state(shard), checkpoint.HEAD)
    return "" if raw is None else checkpoint.head_decoder.decode(raw).last_id


def _run_until(
    client: redis.Redis, keys: Keys, env: dict[str, str], heads: dict[int, str], log: Path
) -> str:
    """Run the aggregator until each shard's head is at the given id; stop it; its output."""
    proc = python_module("aggregate", env=env, log_path=log)
    for shard, last in heads.items():
        wait_until(
            lambda shard=shard, last=last: _head(client, keys, shard, proc) == last,  # type: ignore[misc]  # default-bound lambda: waiting.py
            90,
            f"shard {shard} read up to {last}",
        )
    assert proc.stop() == 0
    return proc.output()


def _candles(client: redis.Redis, keys: Keys, shard: int) -> list[tuple[str, int, int, bool]]:
    """(symbol, timestamp, revision, gap) of every candle written to the shard."""
    out = []
    for _, fields in replies.entries(client.xrange(keys.klines(shard))):
        c = candle_view_decoder.decode(fields[STREAM_FIELD])
        out.append((c.symbol, c.timestamp, c.revision, c.gap))
    return out


def test_a_shard_count_change_moves_symbols_out_of_the_old_shards_state(
    redis_url: str, tmp_path: Path
) -> None:
    """Checkpoint made under 2 shards, resumed under 4: MOVE now belongs to shard 2. The old
    shard must not go on writing (empty) candles for it next to the real ones of shard 2."""
    assert (shard_of(STAY, 2), shard_of(MOVE, 2), shard_of(STAY, 4), shard_of(MOVE, 4)) == (
        0,
        0,
        0,
        2,
    )
    client = redis.Redis.from_url(redis_url)
    keys = Keys("reshard")
    last = _fill(client, keys.trades(0), _stretch([STAY, MOVE], START_MS, START_MS + 5000, "a"))
    _run_until(client, keys, _env(redis_url, "reshard", 2, "0"), {0: last}, tmp_path / "two.log")
    # Ingest restarted with 4 shards (here without its `symbols` entries: the checkpoint alone
    # must say it): STAY goes on in shard 0, MOVE in shard 2.
    end = START_MS + 15_000
    heads = {
        0: _fill(client, keys.trades(0), _stretch([STAY], START_MS + 5000, end, "b")),
        2: _fill(client, keys.trades(2), _stretch([MOVE], START_MS + 5000, end, "b")),
    }
    log = _run_until(
        client, keys, _env(redis_url, "reshard", 4, "0,2"), heads, tmp_path / "four.log"
    )
    written = _candles(client, keys, 0) + _candles(client, keys, 2)
    firsts = [(s, t) for s, t, revision, _ in written if revision == 0]
    assert len(firsts) == len(set(firsts)), "two revision-0 candles for one series and time"
    moved_in_0 = [t for s, t, _, _ in _candles(client, keys, 0) if s == MOVE]
    assert moved_in_0 and max(moved_in_0) < START_MS + 5000
    moved_in_2 = [t for s, t, _, _ in _candles(client, keys, 2) if s == MOVE]
    assert len(moved_in_2) >= 8  # the new shard writes MOVE's candles (after a partial first)
    stay = sorted(t for s, t, _, _ in _candles(client, keys, 0) if s == STAY)
    # resumed, not restarted (the first candle after a cold start is partial, not written)
    assert stay == list(range(START_MS + 1000, stay[-1] + 1, 1000))
    assert stay[-1] >= end - 2000
    assert (
        "shard 0: checkpoint made with STREAMER_SHARDS=2, now 4: 1 symbols moved to other "
        f"shards, their series end here ({MOVE}); 1 resume"
    ) in log


def test_a_symbol_ingest_no_longer_serves_gets_no_more_candles(
    redis_url: str, tmp_path: Path
) -> None:
    """A `symbols` entry without MOVE ends MOVE's series where it stands in the stream."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("dropped")
    entries = _stretch([STAY, MOVE], START_MS, START_MS + 5000, "a")
    # The public format (docs/formats.md, "Trade stream entries"); stream time is START + 4900 here.
    entries.append(b'{"type":"symbols","symbols":["%s"],"ts":1786310004950}' % STAY.encode())
    entries += _stretch([STAY], START_MS + 5000, START_MS + 15_000, "b")
    last = _fill(client, keys.trades(0), entries)
    log = _run_until(
        client, keys, _env(redis_url, "dropped", 1, "0"), {0: last}, tmp_path / "agg.log"
    )
    moved = sorted(t for s, t, _, _ in _candles(client, keys, 0) if s == MOVE)
    # Closed by stream time START + 4900 (1s candles, 80 ms waiter): up to START + 3000 (the
    # first one is partial); the candle open at the entry is dropped, and nothing after it.
    assert moved == list(range(START_MS + 1000, START_MS + 4000, 1000))
    stay = sorted(t for s, t, _, _ in _candles(client, keys, 0) if s == STAY)
    assert stay[-1] >= START_MS + 13_000
    assert f"shard 0: ingest no longer serves 1 symbols here, their series end: {MOVE}" in log


def _metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_entries_trimmed_under_a_stopped_aggregator_flag_their_candles(
    redis_url: str, tmp_path: Path
) -> None:
    """Stopped after part 1; part 2 written and trimmed away (with part 1) before it restarts;
    part 3 read. Every candle overlapping the lost stream time is flagged `gap: true`."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("trimmed")
    stream = keys.trades(0)
    a, b, c = "AAUSDT", "BAUSDT", "CCUSDT"
    last = _fill(client, stream, _stretch([a, b], START_MS, START_MS + 5000, "one"))
    env = _env(redis_url, "trimmed", 1, "0")
    _run_until(client, keys, env, {0: last}, tmp_path / "before.log")
    saved = checkpoint.decoder.decode(
        replies.value(client.hget(keys.state(0), checkpoint.CHECKPOINT))
    )
    assert saved.last_id == last  # stopped cleanly: the position is the end of part 1
    before = _candles(client, keys, 0)
    _fill(client, stream, _stretch([a, b], START_MS + 5000, START_MS + 9000, "lost"))
    first_kept = _fill(client, stream, [_clock(START_MS + 9000)])
    last = _fill(
        client,
        stream,
        [*_stretch([a, c], START_MS + 9000, START_MS + 15000, "three"), _clock(START_MS + 16000)],
    )
    client.xtrim(stream, minid=first_kept, approximate=False)  # what ingest's retention does
    assert replies.entries(client.xrange(stream, count=1))[0][0].decode() == first_kept

    port = free_port()
    proc = python_module(
        "aggregate", env={**env, "STREAMER_METRICS_PORT": str(port)}, log_path=tmp_path / "a.log"
    )
    wait_until(lambda: _head(client, keys, 0, proc) == last, 90, "the resumed run to finish")
    trimmed = _metric(port, "streamer_aggregate_trimmed_total")
    assert proc.stop() == 0

    # Independently: the lost window runs from stream time at the position (the last clock of
    # part 1) to the first entry left; the symbols known then get every candle overlapping it
    # flagged. CCUSDT starts after the loss (its first candle is partial, as any cold start).
    lost_from, lost_to = START_MS + 4900, START_MS + 9000
    after = _candles(client, keys, 0)[len(before) :]
    assert after
    for symbol, t, revision, gap in after:
        expected = symbol in (a, b) and lost_from < t + 1000 and lost_to >= t
        assert gap == expected, (symbol, t - START_MS, revision, gap)
    flagged = sorted((s, t - START_MS) for s, t, _, gap in after if gap)
    assert flagged == [(s, o) for s in (a, b) for o in range(4000, 10_000, 1000)]
    assert not any(gap for _, _, _, gap in before)
    assert trimmed == 1
    assert "were trimmed before being read" in proc.output()


def test_an_interval_spelled_differently_resumes_the_checkpoint(
    redis_url: str, tmp_path: Path
) -> None:
    """`60m` then `1h`: one interval, so the checkpoint is resumed (no cold start, no candle
    lost), and both runs write the same label."""
    client = redis.Redis.from_url(redis_url)
    keys = Keys("spelled")
    env = {**_env(redis_url, "spelled", 1, "0"), "STREAMER_KLINE_INTERVALS": "1s,60m"}
    last = _fill(client, keys.trades(0), _stretch([STAY], START_MS, START_MS + 3000, "a"))
    _run_until(client, keys, env, {0: last}, tmp_path / "60m.log")
    last = _fill(client, keys.trades(0), _stretch([STAY], START_MS + 3000, START_MS + 6000, "b"))
    env["STREAMER_KLINE_INTERVALS"] = "1h,1000ms"
    log = _run_until(client, keys, env, {0: last}, tmp_path / "1h.log")
    stay = sorted(t for s, t, _, _ in _candles(client, keys, 0) if s == STAY)
    assert stay == list(range(START_MS + 1000, START_MS + 5000, 1000))  # none lost
    assert "cold start" not in log
    assert "shard 0: resumed after" in log
