"""Prometheus metrics and a health endpoint, served on STREAMER_METRICS_PORT.

A deliberately small registry (counters and gauges with fixed label names) in the Prometheus
text format, so no extra dependency is needed. `GET /metrics` and `GET /health` (200 while the
process reports itself healthy, 503 otherwise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

log = logging.getLogger(__name__)

Labels = tuple[str, ...]


class Metric:
    def __init__(self, name: str, help_text: str, kind: str, labels: Labels = ()) -> None:
        self.name = name
        self.help_text = help_text
        self.kind = kind
        self.label_names = labels
        self.values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self.values[labels] = self.values.get(labels, 0.0) + amount

    def set(self, value: float, *labels: str) -> None:
        self.values[labels] = value

    def get(self, *labels: str) -> float:
        return self.values.get(labels, 0.0)

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help_text}", f"# TYPE {self.name} {self.kind}"]
        if not self.values and not self.label_names:
            lines.append(f"{self.name} 0")
        for labels, value in sorted(self.values.items()):
            if labels:
                pairs = ",".join(
                    f'{n}="{v}"' for n, v in zip(self.label_names, labels, strict=True)
                )
                lines.append(f"{self.name}{{{pairs}}} {value:g}")
            else:
                lines.append(f"{self.name} {value:g}")
        return lines


class Registry:
    def __init__(self, prefix: str = "streamer") -> None:
        self._prefix = prefix
        self._metrics: dict[str, Metric] = {}

    def counter(self, name: str, help_text: str, labels: Labels = ()) -> Metric:
        return self._add(name, help_text, "counter", labels)

    def gauge(self, name: str, help_text: str, labels: Labels = ()) -> Metric:
        return self._add(name, help_text, "gauge", labels)

    def _add(self, name: str, help_text: str, kind: str, labels: Labels) -> Metric:
        full = f"{self._prefix}_{name}"
        if full not in self._metrics:
            self._metrics[full] = Metric(full, help_text, kind, labels)
        return self._metrics[full]

    def render(self) -> str:
        lines: list[str] = []
        for metric in self._metrics.values():
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


REGISTRY = Registry()


async def serve_metrics(
    host: str, port: int, healthy: Callable[[], bool], registry: Registry = REGISTRY
) -> asyncio.Server:
    """Start the HTTP endpoint; the caller closes the returned server on shutdown."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/metrics"):
                status, body = "200 OK", registry.render().encode()
                ctype = "text/plain; version=0.0.4"
            elif path.startswith(b"/health"):
                ok = healthy()
                status, body = ("200 OK", b"ok\n") if ok else ("503 Service Unavailable", b"no\n")
                ctype = "text/plain"
            else:
                status, body, ctype = "404 Not Found", b"not found\n", "text/plain"
            head = (
                f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            )
            writer.write(head.encode() + body)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, host, port)
    log.info("metrics on http://%s:%d/metrics", host, port)
    return server
