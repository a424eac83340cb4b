"""Prometheus metrics and a health endpoint, served on STREAMER_METRICS_PORT.

The exposition is prometheus-client's (exact integers, escaped label values, histograms, the
standard `process_*` metrics); the small asyncio HTTP server is ours, so the endpoint lives on the
process' own event loop. `GET /metrics`, and `GET /health`: 200 while the process reports itself
healthy, 503 otherwise (the body says why when the process gives a reason).

The call API predates prometheus-client and is kept (every stage and plugin uses it):
`REGISTRY.counter(name, help, labels)` / `.gauge(...)` / `.histogram(...)` return a metric whose
`inc(amount, *labels)`, `set(value, *labels)`, `observe(value, *labels)` and `get(*labels)` take
the label values positionally. Asking again for a name returns the metric registered first.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)

log = logging.getLogger(__name__)

# `<name>_created` samples double every counter's series for a value no dashboard here uses.
disable_created_metrics()  # type: ignore[no-untyped-call]

Labels = tuple[str, ...]

DELAY_BUCKETS_S = (0.025, 0.05, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
"""Candle delay buckets: a healthy pipeline writes a candle some 80-200 ms after its end."""

Health = Callable[[], "bool | tuple[bool, str]"]
"""True/False, or (ok, reason) so that /health can say what is wrong."""


class Metric:
    """One prometheus-client metric behind the positional-labels API; label children are
    bound once per label tuple (a dict lookup per call, not `labels()`'s argument checks)."""

    def __init__(self, registry: Registry, name: str, inner: Counter | Gauge | Histogram) -> None:
        self._registry = registry
        self.name = name
        self._inner = inner
        self.label_names: Labels = tuple(inner._labelnames)
        self._children: dict[Labels, Any] = {}

    def _child(self, labels: Labels) -> Any:
        child = self._children.get(labels)
        if child is None:
            child = self._inner.labels(*labels) if labels else self._inner
            self._children[labels] = child
        return child

    def inc(self, amount: float = 1.0, *labels: str) -> None:
        self._child(labels).inc(amount)

    def set(self, value: float, *labels: str) -> None:
        self._child(labels).set(value)

    def set_function(self, read: Callable[[], float]) -> None:
        """An unlabelled gauge read at scrape time (no cost in the hot path)."""
        assert isinstance(self._inner, Gauge) and not self.label_names
        self._inner.set_function(read)

    def observe(self, value: float, *labels: str) -> None:
        self._child(labels).observe(value)

    def observe_counts(self, counts: Mapping[float, int], *labels: str) -> None:
        """Observations given as value -> how many times: each bucket and the sum added to once.
        prometheus-client's `observe` takes a lock and walks the buckets per value (3-4 µs): 0.4
        ms for the ~120 candles one shard writes at a boundary, on the aggregator's way to its
        next shard, where these share a handful of values. Adds to the histogram's own bucket and
        sum values where it has them (prometheus-client 0.26 does; a test compares the result
        with `observe`), else calls `observe` value by value."""
        if not counts:
            return
        child = self._child(labels)
        try:
            bounds, buckets, total = child._upper_bounds, child._buckets, child._sum
        except AttributeError:  # another prometheus-client inside: the public way, value by value
            for value, count in counts.items():
                for _ in range(count):
                    child.observe(value)
            return
        for value, count in counts.items():
            # bounds ascend and end with +Inf: bisect_left is `observe`'s `value <= bound`
            buckets[bisect.bisect_left(bounds, value)].inc(count)
            total.inc(value * count)

    def get(self, *labels: str) -> float:
        """The current value (for tests and tools; it reads the registry, not a hot path)."""
        sample = self.name + ("_total" if isinstance(self._inner, Counter) else "")
        if isinstance(self._inner, Histogram):
            sample = self.name + "_count"
        value = self._registry.collector.get_sample_value(
            sample, dict(zip(self.label_names, labels, strict=True))
        )
        return 0.0 if value is None else value


class Registry:
    """A prometheus-client registry whose metric names all start with `<prefix>_`."""

    def __init__(self, prefix: str = "streamer", *, process_metrics: bool = False) -> None:
        self._prefix = prefix
        self.collector = CollectorRegistry()
        self._metrics: dict[str, Metric] = {}
        if process_metrics:
            ProcessCollector(registry=self.collector)

    def counter(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Metric:
        return self._add(name, lambda full: Counter(full, help_text or name, labels, registry=None))

    def gauge(self, name: str, help_text: str, labels: Sequence[str] = ()) -> Metric:
        return self._add(name, lambda full: Gauge(full, help_text or name, labels, registry=None))

    def histogram(
        self,
        name: str,
        help_text: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DELAY_BUCKETS_S,
    ) -> Metric:
        return self._add(
            name,
            lambda full: Histogram(
                full, help_text or name, labels, registry=None, buckets=tuple(buckets)
            ),
        )

    def _add(self, name: str, make: Callable[[str], Counter | Gauge | Histogram]) -> Metric:
        full = f"{self._prefix}_{name}"
        metric = self._metrics.get(full)
        if metric is None:
            inner = make(full)
            self.collector.register(inner)
            # prometheus-client keeps a counter's name without "_total" and adds it to samples
            metric = self._metrics[full] = Metric(self, inner._name, inner)
        return metric

    def render(self) -> bytes:
        return generate_latest(self.collector)


REGISTRY = Registry(process_metrics=True)

CANDLE_DELAY = REGISTRY.histogram(
    "candle_delay_seconds",
    "Wall-clock time a closed candle was written minus the candle's end (first emission)",
    ("interval",),
)


def _health(healthy: Health) -> tuple[bool, str]:
    answer = healthy()
    if isinstance(answer, tuple):
        return answer
    return answer, "ok" if answer else "unhealthy"


async def serve_metrics(
    host: str, port: int, healthy: Health, registry: Registry = REGISTRY
) -> asyncio.Server:
    """Start the HTTP endpoint; the caller closes the returned server on shutdown."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
            path = request.split(b" ", 2)[1] if request.count(b" ") >= 2 else b"/"
            if path.startswith(b"/metrics"):
                status, body, ctype = "200 OK", registry.render(), CONTENT_TYPE_LATEST
            elif path.startswith(b"/health"):
                ok, reason = _health(healthy)
                status = "200 OK" if ok else "503 Service Unavailable"
                body, ctype = f"{reason}\n".encode(), "text/plain"
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
