"""The hot standby's buffer and coverage rules, alone (see ingest.standby)."""

from __future__ import annotations

from ingest.bybit.messages import TradeMessage
from ingest.standby import Standby


def _msg(symbol: str, t: int) -> TradeMessage:
    return TradeMessage(symbol, t, [])


def test_takes_what_it_holds_when_it_reaches_back_far_enough() -> None:
    standby = Standby(window_ms=1000)
    standby.watch(0, since_ms=100)
    for t in (150, 400, 900):
        standby.keep(0, _msg("A", t), t)
    taken = standby.take(0, from_ms=120)
    assert taken is not None
    messages, missed = taken
    assert [received for received, _ in messages] == [150, 400, 900]
    assert missed == []
    assert standby.take(0, from_ms=120) is None  # taken once: the shard is owned now


def test_refuses_when_the_previous_owner_wrote_before_it_started_watching() -> None:
    standby = Standby(window_ms=1000)
    standby.watch(1, since_ms=500)
    standby.keep(1, _msg("A", 600), 600)
    assert standby.take(1, from_ms=450) is None


def test_the_window_trims_old_messages_and_moves_coverage_on() -> None:
    standby = Standby(window_ms=1000)
    standby.watch(2, since_ms=0)
    standby.keep(2, _msg("A", 100), 100)
    standby.keep(2, _msg("A", 1500), 1500)  # 100 is now older than the window
    assert standby.take(2, from_ms=200) is None  # 200..500 is no longer held
    standby.watch(2, since_ms=0)
    standby.keep(2, _msg("A", 100), 100)
    standby.keep(2, _msg("A", 1500), 1500)
    taken = standby.take(2, from_ms=700)
    assert taken is not None and [r for r, _ in taken[0]] == [1500]


def test_own_reconnect_windows_come_back_as_gaps_and_cold_starts_take_all() -> None:
    standby = Standby(window_ms=10_000)
    standby.watch(3, since_ms=100)
    standby.keep(3, _msg("A", 200), 200)
    standby.missed(3, ["A", "B"], 250, 400)
    standby.keep(3, _msg("A", 450), 450)
    standby.missed(3, ["C"], 260, 280)  # ended before the stream's newest entry: still ours
    taken = standby.take(3, from_ms=300)
    assert taken is not None
    assert taken[1] == [(["A", "B"], 250, 400), (["C"], 260, 280)]
    standby.watch(4, since_ms=5000)
    standby.keep(4, _msg("B", 5100), 5100)
    cold = standby.take(4, from_ms=0)
    assert cold is not None and len(cold[0]) == 1
