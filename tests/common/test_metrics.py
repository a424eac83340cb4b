from __future__ import annotations

import asyncio

from common.metrics import Registry, serve_metrics
from tests.support.redisproc import free_port


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
    port = free_port()
    server = await serve_metrics("127.0.0.1", port, lambda: healthy[0], registry)
    body = await _get(port, "/metrics")
    assert b't_trades_total{shard="0"} 5' in body
    assert b"# TYPE t_trades_total counter" in body
    assert (await _get(port, "/health")).startswith(b"HTTP/1.1 200")
    healthy[0] = False
    assert (await _get(port, "/health")).startswith(b"HTTP/1.1 503")
    server.close()
    await server.wait_closed()
