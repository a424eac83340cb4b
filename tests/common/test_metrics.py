from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from aggregate.service import delay_observer
from aggregate.state import CoreCandle
from common.intervals import parse_intervals
from common.metrics import REGISTRY, Registry, serve_metrics


async def _get(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    await writer.drain()
    data = await reader.read()
    writer.close()
    return data


async def test_metrics_and_health_endpoints() -> None:
    registry = Registry("t")
    trades = registry.counter("trades_total", "trades in", ("shard",))
    trades.inc(3, "0")
    trades.inc(2, "0")
    healthy = [True]
    server = await serve_metrics("127.0.0.1", 0, lambda: healthy[0], registry)
    port = server.sockets[0].getsockname()[1]  # bound to port 0: no free_port() race
    body = await _get(port, "/metrics")
    assert b't_trades_total{shard="0"} 5' in body
    assert b"# TYPE t_trades_total counter" in body
    assert (await _get(port, "/health")).startswith(b"HTTP/1.1 200")
    healthy[0] = False
    assert (await _get(port, "/health")).startswith(b"HTTP/1.1 503")
    server.close()
    await server.wait_closed()


def _families(text: str) -> dict[str, Any]:
    return {family.name: family for family in text_string_to_metric_families(text)}


def test_exposition_is_exact_and_escaped_for_prometheus_parser() -> None:
    registry = Registry("t")
    trades = registry.counter("trades_total", "trades in", ("shard",))
    awkward = 'a "quoted" back\\slash\nnewline'
    trades.inc(1_234_567, awkward)
    trades.inc(2**40 + 1, "big")
    gauge = registry.gauge("lag_seconds", "lag", ("consumer",))
    gauge.set(0.125, "console")
    families = _families(registry.render().decode())
    samples = {tuple(s.labels.values()): s.value for s in families["t_trades"].samples}
    # exact integers (the old `:g` exposition printed 1.23457e+06) and labels that round-trip
    assert samples[(awkward,)] == 1_234_567
    assert samples[("big",)] == 2**40 + 1
    assert families["t_trades"].type == "counter"
    assert families["t_lag_seconds"].samples[0].value == 0.125
    assert trades.get(awkward) == 1_234_567


def test_histogram_buckets_count_and_sum() -> None:
    registry = Registry("t")
    delay = registry.histogram("delay_seconds", "delay", ("interval",), buckets=(0.1, 1.0))
    for value in (0.05, 0.2, 0.3, 5.0):
        delay.observe(value, "1m")
    family = _families(registry.render().decode())["t_delay_seconds"]
    assert family.type == "histogram"
    by_name = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert by_name[("t_delay_seconds_bucket", "0.1")] == 1
    assert by_name[("t_delay_seconds_bucket", "1.0")] == 3
    assert by_name[("t_delay_seconds_bucket", "+Inf")] == 4
    assert by_name[("t_delay_seconds_count", None)] == 4
    assert by_name[("t_delay_seconds_sum", None)] == 0.05 + 0.2 + 0.3 + 5.0
    assert delay.get("1m") == 4


def _samples(registry: Registry, family: str) -> dict[tuple[str, str | None], float]:
    found = _families(registry.render().decode())[family]
    return {(s.name, s.labels.get("le")): s.value for s in found.samples}


def test_observe_counts_equals_observing_each_value() -> None:
    one_by_one, counted = Registry("t"), Registry("t")
    buckets = (0.1, 0.25, 1.0)
    each = one_by_one.histogram("delay_seconds", "delay", ("interval",), buckets=buckets)
    many = counted.histogram("delay_seconds", "delay", ("interval",), buckets=buckets)
    counts = {0.05: 3, 0.1: 2, 0.25: 1, 0.5: 4, 7.0: 2}  # on a bound, between, beyond the last
    for value, count in counts.items():
        for _ in range(count):
            each.observe(value, "1s")
    many.observe_counts(counts, "1s")
    many.observe_counts({}, "1s")
    expected = _samples(one_by_one, "t_delay_seconds")
    assert _samples(counted, "t_delay_seconds") == expected
    assert expected[("t_delay_seconds_bucket", "0.1")] == 5  # le is inclusive
    assert expected[("t_delay_seconds_bucket", "1.0")] == 10
    assert expected[("t_delay_seconds_count", None)] == 12


def test_observe_counts_falls_back_to_observe_without_the_histograms_values() -> None:
    """A prometheus-client whose histogram keeps its buckets elsewhere: the public `observe`."""

    class Child:
        def __init__(self) -> None:
            self.seen: list[float] = []

        def observe(self, value: float) -> None:
            self.seen.append(value)

    delay = Registry("t").histogram("delay_seconds", "delay", ("interval",))
    child = Child()
    delay._children[("1s",)] = child
    delay.observe_counts({0.09: 2, 1.5: 1}, "1s")
    assert sorted(child.seen) == [0.09, 0.09, 1.5]


def test_delay_observer_counts_first_emissions_by_interval() -> None:
    intervals = parse_intervals("1s,1m")
    observe = delay_observer(intervals)
    before = {label: _delay_samples(label) for label in ("1s", "1m")}
    second = 1_700_000_040_000  # a second of 1s candles ending at +1000, 1m at 1_700_000_100_000
    candles = [
        CoreCandle("A", 0, second, 1, 1, 1, 1, 1, 1, 1, 1),
        CoreCandle("B", 0, second, 1, 1, 1, 1, 1, 1, 1, 1),
        CoreCandle("C", 0, second - 1000, 1, 1, 1, 1, 1, 1, 1, 1),
        CoreCandle("A", 0, second - 1000, 1, 1, 1, 1, 1, 1, 1, 1, revision=1),  # not counted
        CoreCandle("A", 1, 1_700_000_040_000, 1, 1, 1, 1, 1, 1, 1, 1),
    ]
    observe(candles, 1_700_000_041_090.0, 0)  # written 90 ms after the second's end
    after = {label: _delay_samples(label) for label in ("1s", "1m")}
    delta = {
        label: {k: after[label][k] - before[label].get(k, 0.0) for k in after[label]}
        for label in after
    }
    assert delta["1s"][("streamer_candle_delay_seconds_bucket", "0.05")] == 0
    assert delta["1s"][("streamer_candle_delay_seconds_bucket", "0.1")] == 2  # A and B: 0.09 s
    assert delta["1s"][("streamer_candle_delay_seconds_bucket", "1.0")] == 2
    assert delta["1s"][("streamer_candle_delay_seconds_bucket", "2.5")] == 3  # C: 1.09 s
    assert delta["1s"][("streamer_candle_delay_seconds_count", None)] == 3
    assert abs(delta["1s"][("streamer_candle_delay_seconds_sum", None)] - 1.27) < 1e-9
    # the 1m candle ends 58.91 s after the write: a negative delay, below every bucket
    assert delta["1m"][("streamer_candle_delay_seconds_bucket", "0.025")] == 1
    assert abs(delta["1m"][("streamer_candle_delay_seconds_sum", None)] + 58.91) < 1e-9


def _delay_samples(label: str) -> dict[tuple[str, str | None], float]:
    found = _families(REGISTRY.render().decode()).get("streamer_candle_delay_seconds")
    if found is None:
        return {}
    return {
        (s.name, s.labels.get("le")): s.value
        for s in found.samples
        if s.labels.get("interval") == label
    }


def test_process_registry_has_process_metrics_and_candle_delay() -> None:
    families = _families(REGISTRY.render().decode())
    assert "process_resident_memory_bytes" in families
    assert "process_cpu_seconds" in families
    assert families["streamer_candle_delay_seconds"].type == "histogram"


def test_same_name_returns_the_first_metric() -> None:
    registry = Registry("t")
    first = registry.counter("x_total", "x", ("a",))
    assert registry.counter("x_total", "") is first


async def test_health_gives_its_reason() -> None:
    state: list[tuple[bool, str]] = [(False, "console: stopped after 5 failures")]
    server = await serve_metrics("127.0.0.1", 0, lambda: state[0], Registry("t"))
    port = server.sockets[0].getsockname()[1]
    answer = await _get(port, "/health")
    assert answer.startswith(b"HTTP/1.1 503")
    assert answer.endswith(b"console: stopped after 5 failures\n")
    server.close()
    await server.wait_closed()
