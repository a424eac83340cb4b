"""One WebSocket connection to Bybit's public stream, kept alive and subscribed.

It owns a desired set of symbols; whenever it is (re)connected it subscribes them in chunks and
checks every ack. Liveness is Bybit's JSON ping: a connection with no frame at all (data or pong)
for `dead_after_s` is closed and reconnected with backoff. After a reconnect it reports the window
in which its symbols' trades may have been missed (last frame before, resubscribed after).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import re
import time
from collections.abc import Callable

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from common.backoff import backoff
from common.errors import BadMessageError, RetryableError
from common.lifecycle import sleep_or_stop
from common.logs import RateLimitedLog
from common.wire import Category
from ingest import metrics
from ingest.bybit.messages import (
    OpReply,
    TradeMessage,
    parse_frame,
    request,
    symbol_of_topic,
    trade_topic,
)
from ingest.bybit.subscriptions import chunk_requests
from ingest.classify import Verdict, classify
from ingest.writer import now_ms

log = logging.getLogger(__name__)
_rate_log = RateLimitedLog(log)
_REFUSED_TOPIC = re.compile(r"topic:(\S+)")

OnTrades = Callable[[TradeMessage, int], None]
OnGap = Callable[[list[str], int, int], None]
TopicsOf = Callable[[str], list[str]]
OnFrame = Callable[[bytes, int], bool]
"""Sees every frame first (klines mode); True means it took the frame."""


MAX_LAG_MS = 5000


class DeadConnectionError(RetryableError):
    """No data and no pong within the dead-after time."""


class Connection:
    def __init__(
        self,
        name: str,
        url: str,
        category: Category,
        *,
        ping_interval_s: float,
        dead_after_s: float,
        on_trades: OnTrades,
        on_gap: OnGap,
        topics_of: TopicsOf | None = None,
        on_frame: OnFrame | None = None,
    ) -> None:
        self.name = name
        self._topics_of = topics_of or (lambda symbol: [trade_topic(symbol)])
        self._on_frame = on_frame
        self._url = url
        self._category = category
        self._ping_interval_s = ping_interval_s
        self._dead_after_s = dead_after_s
        self._on_trades = on_trades
        self._on_gap = on_gap
        self.desired: set[str] = set()
        self.subscribed: set[str] = set()
        self._pending: dict[str, tuple[float, list[str]]] = {}  # req_id -> (sent at, topics)
        self._ids = itertools.count(1)
        self._ws: ClientConnection | None = None
        self._last_rx = 0.0
        self.last_rx_ms = 0
        self._gap_from_ms: int | None = None
        self.settled = asyncio.Event()
        self._session_ok = False
        self._lag_ms = 0
        # The longest delay (receive − trade time) of a message's oldest trade, over this second
        # and the one before (received time // 1000): where a disconnect's gap starts.
        self._delay_second = 0
        self._delay_now = 0
        self._delay_before = 0
        self._acks: dict[str, asyncio.Future[None]] = {}

    @property
    def lag_ms(self) -> int:
        """Receive time minus Bybit's `ts` of the newest trade message (network and exchange)."""
        return self._lag_ms

    @property
    def connected(self) -> bool:
        return self._ws is not None

    # -- subscriptions ---------------------------------------------------------------------------

    async def add(self, symbols: list[str]) -> None:
        new = [s for s in symbols if s not in self.desired]
        self.desired.update(new)
        if self._ws is not None and new:
            await self._send_ops(self._ws, "subscribe", new)

    async def remove(self, symbols: list[str], ack_timeout_s: float = 5.0) -> None:
        """Unsubscribe; return once Bybit acked (no trade of them follows) or the timeout."""
        gone = [s for s in symbols if s in self.desired]
        self.desired.difference_update(gone)
        self.subscribed.difference_update(gone)
        if self._ws is None or not gone:
            return
        loop = asyncio.get_running_loop()
        waits = await self._send_ops(self._ws, "unsubscribe", gone, loop)
        if waits:
            await asyncio.wait(waits, timeout=ack_timeout_s)

    async def _send_ops(
        self,
        ws: ClientConnection,
        op: str,
        symbols: list[str],
        loop: asyncio.AbstractEventLoop | None = None,
    ) -> list[asyncio.Future[None]]:
        """Send `op` in chunks; with `loop`, return a future per request for its ack."""
        topics = [t for s in sorted(symbols) for t in self._topics_of(s)]
        acks: list[asyncio.Future[None]] = []
        with contextlib.suppress(ConnectionClosed):
            for chunk in chunk_requests(topics, self._category):
                req_id = f"{op[:5]}-{next(self._ids)}"
                if op == "subscribe":
                    self._pending[req_id] = (time.monotonic(), chunk)
                    self.settled.clear()
                if loop is not None:
                    acks.append(self._acks.setdefault(req_id, loop.create_future()))
                await ws.send(request(op, chunk, req_id).decode())
        return acks

    def _on_reply(self, reply: OpReply) -> None:
        ack = self._acks.pop(reply.req_id, None)
        if ack is not None and not ack.done():
            ack.set_result(None)
        if reply.is_pong or reply.op != "subscribe":
            return
        req_id = reply.req_id
        if req_id not in self._pending and not req_id and self._pending:
            req_id = next(iter(self._pending))  # no req_id echoed: acks come in request order
        entry = self._pending.get(req_id)
        if entry is None:
            if not reply.success:
                log.warning("%s: subscribe refused: %s", self.name, reply.ret_msg)
            return
        sent, topics = entry
        if reply.success:
            del self._pending[req_id]
            self._mark_subscribed(topics)
        else:
            left = self._refused(topics, reply.ret_msg)
            if left:
                # Bybit sends one error per bad topic, then one ack for the good ones.
                self._pending[req_id] = (sent, left)
            else:
                del self._pending[req_id]
        if not self._pending:
            self._settle()

    def _mark_subscribed(self, topics: list[str]) -> None:
        self.subscribed.update(
            symbol_of_topic(t) for t in topics if symbol_of_topic(t) in self.desired
        )

    def _refused(self, topics: list[str], ret_msg: str) -> list[str]:
        """Log what Bybit refused; return the request's topics still waiting for their ack."""
        match = _REFUSED_TOPIC.search(ret_msg)
        named = match.group(1).rstrip(",") if match else None
        if named not in topics:
            metrics.REFUSED.inc(len(topics))
            log.warning("%s: Bybit refused %s: %s", self.name, ", ".join(topics), ret_msg)
            return []
        if "already subscribed" in ret_msg:
            self._mark_subscribed([named])
        else:
            metrics.REFUSED.inc()
            log.warning("%s: Bybit refused %s: %s", self.name, named, ret_msg)
        return [t for t in topics if t != named]

    def _expire_unacked(self, now: float) -> None:
        """A subscribe never answered (seen from Bybit under load) must not hold back the gap
        report and the shard's clock forever: after `dead_after_s` it counts as refused."""
        late = [r for r, (sent, _) in self._pending.items() if now - sent > self._dead_after_s]
        for req_id in late:
            _, topics = self._pending.pop(req_id)
            metrics.REFUSED.inc(len(topics))
            log.warning(
                "%s: no answer to subscribe %s within %.0fs: %s",
                self.name,
                req_id,
                self._dead_after_s,
                ", ".join(topics),
            )
        if late and not self._pending:
            self._settle()

    def _settle(self) -> None:
        self._session_ok = True
        self.settled.set()
        self._report_gap()

    def _report_gap(self) -> None:
        if self._gap_from_ms is None:
            return
        symbols = sorted(self.desired)
        if symbols:
            self._on_gap(symbols, self._gap_from_ms, now_ms())
        self._gap_from_ms = None

    @property
    def gap_from_ms(self) -> int | None:
        """Since when this connection may have missed trades that no gap reports yet: it is
        down or resubscribing. None: nothing open."""
        return self._gap_from_ms

    # -- the connection loop ---------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        delays = backoff(base_s=0.2, cap_s=30.0)
        while not stop.is_set():
            try:
                async with connect(
                    self._url, ping_interval=None, max_size=2**24, open_timeout=10, close_timeout=1
                ) as ws:
                    await self._session(ws, stop)
                    if stop.is_set():
                        return
            except Exception as exc:
                if classify(exc) is Verdict.FATAL:
                    log.error("%s: %s: giving up: %r", self.name, self._url, exc)
                    raise
                _rate_log.warning(f"down-{self.name}", "%s: connection lost: %r", self.name, exc)
            finally:
                if self._session_ok:  # reset the backoff only after a session that worked
                    delays = backoff(base_s=0.2, cap_s=30.0)
                    self._session_ok = False
                self._disconnected()
            metrics.RECONNECTS.inc()
            await sleep_or_stop(stop, next(delays))

    def _disconnected(self) -> None:
        if self._ws is not None:
            metrics.CONNECTIONS.inc(-1)
            if self._gap_from_ms is None and self.last_rx_ms:
                # A message lost in the drop may hold trades as old as the oldest of those sent
                # with the last ones received (Bybit's messages of one moment span its batching
                # time, across symbols): the gap starts the longest such delay seen in the last
                # second or two before the last receive, in trade time. From the last push's own
                # `ts`, a lost message's older trades fell before the gap, unflagged.
                lag_ms = min(max(self._delay_now, self._delay_before, 0), MAX_LAG_MS)
                self._gap_from_ms = self.last_rx_ms - lag_ms
        self._ws = None
        self.subscribed.clear()
        self._pending.clear()
        for ack in self._acks.values():  # nothing more comes on a closed connection
            if not ack.done():
                ack.set_result(None)
        self._acks.clear()
        self.settled.clear()

    async def _session(self, ws: ClientConnection, stop: asyncio.Event) -> None:
        self._ws = ws
        self._session_ok = False
        metrics.CONNECTIONS.inc()
        self._last_rx = time.monotonic()
        log.info(
            "%s: connected to %s, subscribing %d symbols", self.name, self._url, len(self.desired)
        )
        if self.desired:
            await self._send_ops(ws, "subscribe", list(self.desired))
        else:
            self._settle()
        reader = asyncio.ensure_future(self._read(ws))
        keeper = asyncio.ensure_future(self._keep_alive(ws))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {reader, keeper, stopper}, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for task in (reader, keeper, stopper):
                task.cancel()
            await asyncio.gather(reader, keeper, stopper, return_exceptions=True)
        for task in (reader, keeper):
            if task in done and task.exception() is not None:
                raise task.exception()  # type: ignore[misc]

    async def _read(self, ws: ClientConnection) -> None:
        on_trades = self._on_trades
        while True:
            raw = await ws.recv(decode=False)
            self._last_rx = time.monotonic()
            received_ms = self.last_rx_ms = now_ms()
            if self._on_frame is not None and self._on_frame(raw, received_ms):
                continue
            try:
                message = parse_frame(raw)
            except BadMessageError as exc:
                metrics.MALFORMED.inc()
                _rate_log.warning(
                    "malformed", "%s: malformed frame: %s: %.200r", self.name, exc, raw
                )
                continue
            if message is None:
                continue
            if isinstance(message, TradeMessage):
                self._lag_ms = received_ms - message.exchange_ms
                trades = message.trades
                if trades:
                    self._note_delay(received_ms, trades[0].time_ms, trades[-1].time_ms)
                    on_trades(message, received_ms)
            else:
                self._on_reply(message)

    def _note_delay(self, received_ms: int, first_ms: int, last_ms: int) -> None:
        second = received_ms // 1000
        if second != self._delay_second:
            recent = second == self._delay_second + 1
            self._delay_before = self._delay_now if recent else 0
            self._delay_now = 0
            self._delay_second = second
        self._delay_now = max(self._delay_now, received_ms - min(first_ms, last_ms))

    async def _keep_alive(self, ws: ClientConnection) -> None:
        tick_s = min(1.0, self._dead_after_s / 4, self._ping_interval_s)
        last_ping = time.monotonic()
        while True:
            await asyncio.sleep(tick_s)
            now = time.monotonic()
            if now - self._last_rx > self._dead_after_s:
                raise DeadConnectionError(f"no data and no pong for {now - self._last_rx:.1f}s")
            self._expire_unacked(now)
            if now - last_ping >= self._ping_interval_s:
                last_ping = now
                await ws.send(request("ping", [], f"ping-{next(self._ids)}").decode())
