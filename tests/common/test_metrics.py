from __future__ import annotations

import asyncio
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

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
