"""One port: WebSocket at /v5/public/<category>, REST at /v5/market/... (plain GETs answered by
websockets' `process_request` hook), and the loop that steps the market and delivers messages.

Times written to the ledger (`sent_ms`, drop windows) are market time, the clock trades are
stamped with (wall clock + `--clock-offset-ms`, or the replay clock).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http import HTTPStatus

from websockets.asyncio.server import ServerConnection, broadcast, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from common.bybitws import Outcome, Session
from common.lifecycle import TaskSet, until_stopped
from simulator.faults import Faults, malformed_frame
from simulator.frames import Encoded
from simulator.ledger import Ledger
from simulator.market import KlineMessage, Market
from simulator.rest import Rest
from simulator.script import Script

log = logging.getLogger(__name__)
MAX_BUFFER = 256 * 2**20  # bytes queued for one client before it is dropped
CLOSE_WAIT_S = 10.0  # at stop, how long a client gets to read what it was sent


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8765
    ack_delay_ms: float = 5.0
    idle_timeout_s: float = 600.0
    loop_ms: int = 10
    clock_offset_ms: int = 0
    speed: float = 1.0


@dataclass(eq=False)
class Client:
    ws: ServerConnection
    session: Session
    last_ping_s: float = field(default_factory=time.monotonic)
    live: set[str] = field(default_factory=set)


class Simulator:
    def __init__(
        self,
        config: ServerConfig,
        market: Market,
        faults: Faults,
        ledger: Ledger,
        kline_ledger: Ledger,
        script: Script | None = None,
    ) -> None:
        self.config = config
        self.script = script
        self.market = market
        self.rest = Rest(market, faults.rest_failure)
        self.faults = faults
        self.ledger = ledger
        self.kline_ledger = kline_ledger
        self.clients: dict[ServerConnection, Client] = {}
        self.subscribers: dict[str, set[ServerConnection]] = {}
        self.kline_topics: set[str] = set()
        self._held: dict[str, deque[tuple[int, Encoded]]] = {}
        self._last_delivery_s: dict[str, float] = {}
        self._drop_from_ms: int | None = None
        # Trade topics that had subscribers and have none now (a drop, an unsubscribe, a client
        # gone), until one subscribes again: their trades meanwhile are ledgered as missed,
        # what a gap repair can fetch back from recent-trade.
        self._unheard: set[str] = set()
        self._wall0_ms = time.time() * 1000
        self._clock0_ms = market.now_ms
        self.port = config.port

    def now_ms(self) -> int:
        elapsed = time.time() * 1000 - self._wall0_ms
        return int(self._clock0_ms + elapsed * self.config.speed)

    async def run(self, stop: asyncio.Event) -> None:
        category = self.market.category.value
        async with serve(
            self._handle,
            self.config.host,
            self.config.port,
            process_request=self._process_request,
            compression=None,
            ping_interval=None,
            max_size=2**20,
            close_timeout=1.0,  # a plain HTTP client that keeps its socket must not hold us up
        ) as server:
            self.port = server.sockets[0].getsockname()[1]
            host = self.config.host
            print(
                f"simulator ready ws://{host}:{self.port}/v5/public/{category} "
                f"http://{host}:{self.port}",
                flush=True,
            )
            tasks = TaskSet()
            if self.script is not None:
                tasks.spawn(self._play_loop(self.script), "script")
            else:
                tasks.spawn(self._market_loop(), "market")
            tasks.spawn(self._idle_loop(), "idle")
            if self.faults.config.drop_every_s > 0:
                tasks.spawn(self._drop_loop(), "drop")
            try:
                await until_stopped(stop, tasks)
            finally:
                await tasks.cancel_all()
                await self._close_clients()
                self._close_drop_window()
                self.ledger.close()
                self.kline_ledger.close()

    # --- HTTP / REST -------------------------------------------------------------------------

    def _process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.headers.get("Upgrade", "").lower() == "websocket":
            path = request.path.partition("?")[0]
            if path != f"/v5/public/{self.market.category.value}":
                return connection.respond(HTTPStatus.NOT_FOUND, "404 page not found\n")
            return None
        status, body = self.rest.handle(request.path)
        data = body.encode()
        headers = Headers(
            [
                ("Date", email.utils.formatdate(usegmt=True)),
                ("Content-Type", "application/json" if status == 200 else "text/plain"),
                ("Content-Length", str(len(data))),
                ("Connection", "close"),
            ]
        )
        return Response(status, HTTPStatus(status).phrase, headers, data)

    # --- WebSocket ---------------------------------------------------------------------------

    async def _handle(self, ws: ServerConnection) -> None:
        session = Session(
            self.market.category, str(uuid.uuid4()), self.market.known_topic,
            self.faults.subscribe_fault,
        )  # fmt: skip
        client = Client(ws, session)
        self.clients[ws] = client
        loop = asyncio.get_running_loop()
        try:
            async for message in ws:
                text = message if isinstance(message, str) else message.decode(errors="replace")
                outcome = session.handle(text)
                if outcome.pinged:
                    client.last_ping_s = time.monotonic()
                    log.debug("op ping on %s", session.conn_id)
                for topic in outcome.unsubscribed:
                    self._unsubscribe(client, topic)
                loop.call_later(self.config.ack_delay_ms / 1000, self._answer, client, outcome)
        except ConnectionClosed:
            pass
        finally:
            for topic in list(client.live):
                self._unsubscribe(client, topic)
            self.clients.pop(ws, None)

    def _answer(self, client: Client, outcome: Outcome) -> None:
        """Acks come after a few ms (pybit stores its req_id only after sending); a topic goes
        live with its ack, so no data precedes the ack."""
        if client.ws not in self.clients:
            return
        for topic in outcome.subscribed:
            self._unheard.discard(topic)
            client.live.add(topic)
            self.subscribers.setdefault(topic, set()).add(client.ws)
            if topic.startswith("kline."):
                self.kline_topics.add(topic)
        if outcome.subscribed:
            self._close_drop_window()
        for reply in outcome.replies:
            broadcast([client.ws], reply)

    def _unsubscribe(self, client: Client, topic: str) -> None:
        client.live.discard(topic)
        conns = self.subscribers.get(topic)
        if conns is not None:
            conns.discard(client.ws)
            if not conns:
                del self.subscribers[topic]
                self.kline_topics.discard(topic)
                if topic.startswith("publicTrade."):
                    self._unheard.add(topic)

    # --- the market loop ---------------------------------------------------------------------

    async def _market_loop(self) -> None:
        period_s = self.config.loop_ms / 1000
        next_s = time.monotonic()
        while True:
            now_ms = self.now_ms()
            for message in self.market.step(now_ms, self.kline_topics):
                if isinstance(message, KlineMessage):
                    self._send_kline(message, now_ms)
                else:
                    self._send_trades(message, now_ms)
            self._release_held(now_ms)
            self._drop_slow_consumers()
            self.ledger.flush()
            self.kline_ledger.flush()
            next_s += period_s
            await asyncio.sleep(max(0.0, next_s - time.monotonic()))
            if time.monotonic() - next_s > 1.0:  # far behind: do not try to catch up
                next_s = time.monotonic()

    async def _play_loop(self, script: Script) -> None:
        """Each pre-built frame at its time, written to its subscribers' sockets as it is."""
        sends = script.sends
        now_ms = self.now_ms()
        i = next((i for i, send in enumerate(sends) if send.at_ms >= now_ms), len(sends))
        if i:
            log.warning("script: %d messages were due before the simulator was ready", i)
        while i < len(sends):
            now_ms = self.now_ms()
            while i < len(sends) and sends[i].at_ms <= now_ms:
                send = sends[i]
                for ws in self.subscribers.get(send.topic, ()):
                    if ws.protocol.state is State.OPEN:
                        ws.transport.write(send.frame)
                i += 1
            self._drop_slow_consumers()
            if i < len(sends):
                await asyncio.sleep((sends[i].at_ms - self.now_ms()) / 1000)
        log.info("script: all %d trades sent", script.trades)

    def _drop_slow_consumers(self) -> None:
        """A client that cannot keep up is disconnected (as exchanges do) instead of letting
        its queued frames grow without bound."""
        for ws in [ws for ws in self.clients if ws.transport.get_write_buffer_size() > MAX_BUFFER]:
            log.warning("closing slow consumer %s", self.clients[ws].session.conn_id)
            self._abort(ws)

    def _send_trades(self, message: Encoded, now_ms: int) -> None:
        held = self._held.get(message.topic)
        delay = self.faults.delay_ms()
        if held or delay > 0:
            due = now_ms + delay
            if held:
                due = max(due, held[-1][0])
            self._held.setdefault(message.topic, deque()).append((due, message))
            return
        self._deliver(message, now_ms)

    def _release_held(self, now_ms: int) -> None:
        for topic in list(self._held):
            held = self._held[topic]
            while held and held[0][0] <= now_ms:
                self._deliver(held.popleft()[1], now_ms)
            if not held:
                del self._held[topic]

    def _deliver(self, message: Encoded, now_ms: int) -> None:
        conns = self.subscribers.get(message.topic)
        if not conns:
            if message.topic in self._unheard:
                self.ledger.write(message.missed_text())
            return
        broadcast(conns, message.text)
        self._last_delivery_s[message.topic] = time.monotonic()
        self.ledger.write(message.ledger_text(now_ms))
        if self.faults.malformed():
            broadcast(conns, malformed_frame(message.text))

    def _send_kline(self, message: KlineMessage, now_ms: int) -> None:
        conns = self.subscribers.get(message.topic)
        if not conns:
            return
        broadcast(conns, message.text)
        self._last_delivery_s[message.topic] = time.monotonic()
        if self.kline_ledger.enabled:
            sk = self.market.klines[self.market.index[message.symbol]]
            for candle in message.confirms:
                row = sk.digits.as_row(candle)
                self.kline_ledger.record(
                    {"symbol": message.symbol, "interval": message.code, "start": candle.start_ms,
                     "open": row[1], "high": row[2], "low": row[3], "close": row[4],
                     "volume": row[5], "turnover": row[6], "sent_ms": now_ms}
                )  # fmt: skip

    # --- idle connections and drops ----------------------------------------------------------

    async def _idle_loop(self) -> None:
        timeout_s = self.config.idle_timeout_s
        period_s = min(30.0, max(0.05, timeout_s / 4))
        while True:
            await asyncio.sleep(period_s)
            now_s = time.monotonic()
            for client in list(self.clients.values()):
                last = max(
                    [client.last_ping_s, *(self._last_delivery_s.get(t, 0.0) for t in client.live)]
                )
                if now_s - last > timeout_s:
                    log.info("closing idle connection %s", client.session.conn_id)
                    self._abort(client.ws)

    async def _drop_loop(self) -> None:
        while True:
            await asyncio.sleep(self.faults.config.drop_every_s)
            if not self.clients:
                continue
            log.info("fault: dropping %d connections", len(self.clients))
            if self._drop_from_ms is None:
                self._drop_from_ms = self.now_ms()
            for ws in list(self.clients):
                self._abort(ws)

    def _close_drop_window(self) -> None:
        if self._drop_from_ms is not None:
            self.ledger.drop(self._drop_from_ms, self.now_ms())
            self._drop_from_ms = None
            self.ledger.flush()

    async def _close_clients(self) -> None:
        """At stop, after the last trade: close each client's connection with a close frame,
        behind everything sent to it, and wait for its answer. A client that answers has read
        every trade the ledger says it was sent; one busy elsewhere gets CLOSE_WAIT_S, as the
        ledger is a test's truth (cut sooner, the frames still queued were lost)."""
        conns = {ws: client.session.conn_id for ws, client in self.clients.items()}
        for ws in conns:
            ws.close_timeout = CLOSE_WAIT_S
        await asyncio.gather(*(ws.close(1001, "simulator stopping") for ws in conns))
        unread = [conn_id for ws, conn_id in conns.items() if ws.protocol.close_rcvd is None]
        if unread:
            log.warning(
                "stopping: %d clients did not read their last frames within %.0f s (%s); "
                "the ledger's last trades for them may not have arrived",
                len(unread), CLOSE_WAIT_S, ", ".join(unread),
            )  # fmt: skip

    def _abort(self, ws: ServerConnection) -> None:
        """Close the TCP connection without a close frame (the client sees 1006, as on Bybit);
        what was already written is still flushed, so the ledger stays true."""
        client = self.clients.pop(ws, None)
        if client is not None:
            for topic in list(client.live):
                self._unsubscribe(client, topic)
        ws.transport.close()
