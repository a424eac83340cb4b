"""`websocket`: the candle feed of DESIGN §6 on STREAMER_WEBSOCKET_HOST:PORT, path `/`.

- Every connection authenticates with HTTP Basic auth on the upgrade request (constant-time
  compare); otherwise HTTP 401 with `WWW-Authenticate`, and no upgrade. `/health` answers 200.
- Frames are JSON arrays of up to STREAMER_WEBSOCKET_MAX_FRAME_CANDLES candles, joined from the
  candles' raw JSON. Ops: `{"op": "subscribe"|"unsubscribe", "args": [...]}` (see topics.py),
  `{"op": "ping"}`; each answered `{"op", "success", "ret_msg", "args"}`. A subscribe is followed
  by the latest closed candle of each newly matching series (the snapshot), then the live feed.
- Fan-out writes each frame straight into every client's transport, as websockets' broadcast()
  does. A client whose socket is full gets a backlog of frames instead; once it holds more than
  STREAMER_WEBSOCKET_CLIENT_BUFFER frames the client is closed with 1008 "client too slow", and
  no other client ever waits for it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import ssl
from collections import deque
from http import HTTPStatus
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response
from websockets.protocol import State

from common.errors import ConfigError
from common.logs import RateLimitedLog
from common.metrics import REGISTRY
from publish.batch import CandleBatch, json_array
from publish.consumers.base import BaseConsumer
from publish.consumers.topics import ClientFilter, SeriesKey, Topic, series_decoder

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
WRITE_LIMIT_BYTES = 256 * 1024

CLIENTS = REGISTRY.gauge("publish_ws_clients", "Connected WebSocket clients")
SLOW_CLOSED = REGISTRY.counter("publish_ws_slow_closed_total", "Clients closed for being slow")
REFUSED = REGISTRY.counter("publish_ws_refused_total", "Upgrade requests refused", ("reason",))


class Op(msgspec.Struct):
    op: str
    args: list[str] = []


class Reply(msgspec.Struct):
    op: str | None
    success: bool
    ret_msg: str
    args: list[str] = []


_op_decoder = msgspec.json.Decoder(Op)
_encoder = msgspec.json.Encoder()


class _Client:
    __slots__ = ("backlog", "closing", "conn", "filter", "flusher")

    def __init__(self, conn: ServerConnection) -> None:
        self.conn = conn
        self.filter = ClientFilter()
        self.backlog: deque[bytes] = deque()
        self.closing = False
        self.flusher: asyncio.Task[None] | None = None


class WebSocketConsumer(BaseConsumer):
    history_candles = 10_000  # per shard: snapshots right after a restart

    def __init__(self, name: str = "websocket") -> None:
        super().__init__(name)
        self._clients: set[_Client] = set()
        self._latest: dict[SeriesKey, tuple[int, bytes]] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._credentials: tuple[bytes, bytes] | None = None

    # --- lifecycle -------------------------------------------------------------------------

    def validate(self) -> None:
        s = self.settings
        if s is None:
            raise ValueError("no settings given")
        if not s.wss_auth_disabled:
            if not (s.wss_auth_user and s.wss_auth_key):
                raise ValueError(
                    "STREAMER_WSS_AUTH_USER and STREAMER_WSS_AUTH_KEY must both be set "
                    "(or STREAMER_WSS_AUTH_DISABLED=true to serve without credentials, on purpose)"
                )
            self._credentials = (s.wss_auth_user.encode(), s.wss_auth_key.encode())
        for path in (s.websocket_tls_cert, s.websocket_tls_key):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file {str(path)!r} does not exist")

    def _ssl_context(self) -> ssl.SSLContext | None:
        s = self.settings
        assert s is not None
        if s.websocket_tls_cert is None or s.websocket_tls_key is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            context.load_cert_chain(s.websocket_tls_cert, s.websocket_tls_key)
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"STREAMER_WEBSOCKET_TLS_CERT/_KEY: cannot load the certificate and key: {exc}"
            ) from None
        return context

    async def setup(self) -> None:
        s = self.settings
        assert s is not None
        context = self._ssl_context()
        try:
            self._server = await serve(
                self._handle,
                s.websocket_host,
                s.websocket_port,
                process_request=self._process_request,
                ssl=context,
                compression="deflate" if s.websocket_compression else None,
                max_size=MAX_CLIENT_MESSAGE_BYTES,
                ping_interval=s.websocket_ping_interval_s,
                ping_timeout=s.websocket_ping_interval_s,
                close_timeout=2,
                write_limit=WRITE_LIMIT_BYTES,
            )
        except OSError as exc:
            raise ConfigError(
                f"STREAMER_WEBSOCKET_HOST/PORT: cannot listen on {s.websocket_host}:"
                f"{s.websocket_port}: {exc.strerror or exc} (is the port in use?)"
            ) from None
        scheme = "wss" if context else "ws"
        log.info(
            "WebSocket feed on %s://%s:%d/%s",
            scheme,
            s.websocket_host,
            s.websocket_port,
            " (auth DISABLED)" if s.wss_auth_disabled else "",
        )
        if s.websocket_url:
            log.info("clients connect at %s (STREAMER_WEBSOCKET_URL)", s.websocket_url)

    async def stop(self) -> None:
        await super().stop()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for task in list(self._tasks):
            task.cancel()

    # --- connections -----------------------------------------------------------------------

    def _authorized(self, header: str | None) -> bool:
        if self._credentials is None:
            return True
        if header is None or not header.startswith("Basic "):
            return False
        try:
            user, _, key = base64.b64decode(header[6:], validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        want_user, want_key = self._credentials
        # Both compared, always: no early exit that would time which part was wrong.
        return hmac.compare_digest(user, want_user) & hmac.compare_digest(key, want_key)

    def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if path != "/":
            REFUSED.inc(1, "path")
            return conn.respond(HTTPStatus.NOT_FOUND, "not found; the candle feed is at /\n")
        if not self._authorized(request.headers.get("Authorization")):
            REFUSED.inc(1, "auth")
            response = conn.respond(HTTPStatus.UNAUTHORIZED, "credentials required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="klines", charset="UTF-8"'
            return response
        assert self.settings is not None
        if len(self._clients) >= self.settings.websocket_max_clients:
            REFUSED.inc(1, "full")
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
        return None

    async def _handle(self, conn: ServerConnection) -> None:
        assert self.settings is not None
        if len(self._clients) >= self.settings.websocket_max_clients:
            await conn.close(1013, "too many clients")
            return
        client = _Client(conn)
        self._clients.add(client)
        CLIENTS.set(len(self._clients))
        try:
            async for message in conn:
                self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            CLIENTS.set(len(self._clients))
            if client.flusher is not None:
                client.flusher.cancel()

    def _on_message(self, client: _Client, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._reply(client, Reply(None, False, "binary frames are not accepted; send JSON"))
            return
        try:
            op = _op_decoder.decode(message)
        except msgspec.DecodeError as exc:
            self._reply(client, Reply(None, False, f"bad request: {exc}"))
            return
        try:
            if op.op == "subscribe":
                new = client.filter.subscribe(op.args)
                self._reply(client, Reply(op.op, True, "subscribed", [t.text for t in new]))
                self._send(client, self._snapshot(new))
            elif op.op == "unsubscribe":
                gone = client.filter.unsubscribe(op.args)
                self._reply(client, Reply(op.op, True, "unsubscribed", [t.text for t in gone]))
            elif op.op == "ping":
                self._reply(client, Reply(op.op, True, "pong"))
            else:
                self._reply(
                    client, Reply(op.op, False, "unknown op; allowed: subscribe, unsubscribe, ping")
                )
        except ValueError as exc:
            self._reply(client, Reply(op.op, False, str(exc), op.args))

    def _reply(self, client: _Client, reply: Reply) -> None:
        self._send(client, [_encoder.encode(reply)])

    def _snapshot(self, topics: list[Topic]) -> list[bytes]:
        assert self.settings is not None
        raws = [
            raw for key, (_, raw) in self._latest.items() if any(t.matches(key) for t in topics)
        ]
        return _frames(raws, self.settings.websocket_max_frame_candles)

    # --- fan-out ---------------------------------------------------------------------------

    async def consume(self, data: list[dict[str, Any]]) -> None:
        await self.consume_batch(CandleBatch([msgspec.json.encode(c) for c in data], {}))

    async def consume_batch(self, batch: CandleBatch) -> None:
        if not self._is_running or not batch.raws:
            return
        self._fan_out(batch.raws, self._remember(batch.raws))

    def wants_updates(self) -> bool:
        return self.settings is not None and self.settings.websocket_updates

    async def consume_updates(self, batch: CandleBatch) -> None:
        """In-progress candles; one whose candle already closed here is late and dropped."""
        if not self._is_running or not batch.raws:
            return
        raws: list[bytes] = []
        keys: list[SeriesKey] = []
        for raw in batch.raws:
            fields = series_decoder.decode(raw)
            key = fields.key
            held = self._latest.get(key)
            if held is None or held[0] < fields.timestamp:
                raws.append(raw)
                keys.append(key)
        self._fan_out(raws, keys)

    def _fan_out(self, raws: list[bytes], keys: list[SeriesKey]) -> None:
        """Frames built once per distinct subscription, then written to every client."""
        assert self.settings is not None
        per_frame = self.settings.websocket_max_frame_candles
        groups: dict[frozenset[Any] | None, list[_Client]] = {}
        for client in self._clients:
            groups.setdefault(client.filter.key, []).append(client)
        for group_key, clients in groups.items():
            if group_key is None:
                frames = _frames(raws, per_frame)
            else:
                wants = clients[0].filter.wants
                picked = [raw for raw, key in zip(raws, keys, strict=True) if wants(key)]
                frames = _frames(picked, per_frame)
            for client in clients:
                self._send(client, frames)

    def prime(self, raws: list[bytes]) -> None:
        self._remember(raws)

    def _remember(self, raws: list[bytes]) -> list[SeriesKey]:
        """The series of each candle; the latest closed candle of each series, for snapshots."""
        keys: list[SeriesKey] = []
        latest = self._latest
        for raw in raws:
            fields = series_decoder.decode(raw)
            key = fields.key
            keys.append(key)
            if fields.closed:
                held = latest.get(key)
                if held is None or held[0] <= fields.timestamp:
                    latest[key] = (fields.timestamp, raw)
        return keys

    def _send(self, client: _Client, frames: list[bytes]) -> None:
        if client.closing or not frames:
            return
        conn = client.conn
        if client.backlog or conn.paused:
            client.backlog.extend(frames)
            self._after_backlog(client)
            return
        protocol = conn.protocol
        if protocol.state is not State.OPEN:
            return
        for index, frame in enumerate(frames):
            protocol.send_text(frame)
            conn.send_data()
            if conn.paused and index + 1 < len(frames):
                client.backlog.extend(frames[index + 1 :])
                self._after_backlog(client)
                return

    def _after_backlog(self, client: _Client) -> None:
        assert self.settings is not None
        if len(client.backlog) > self.settings.websocket_client_buffer:
            self._close_slow(client)
        elif client.flusher is None:
            client.flusher = asyncio.create_task(self._flush(client))

    def _close_slow(self, client: _Client) -> None:
        assert self.settings is not None
        client.closing = True
        client.backlog.clear()
        SLOW_CLOSED.inc()
        limited.warning(
            "slow", "closing a slow client %s: more than %d frames queued",
            client.conn.remote_address, self.settings.websocket_client_buffer,
        )  # fmt: skip
        reason = f"client too slow: more than {self.settings.websocket_client_buffer} frames queued"
        task = asyncio.create_task(client.conn.close(1008, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self, client: _Client) -> None:
        conn, protocol = client.conn, client.conn.protocol
        try:
            while client.backlog and not client.closing:
                await conn.drain()
                if protocol.state is not State.OPEN:
                    break
                while client.backlog and not conn.paused:
                    protocol.send_text(client.backlog.popleft())
                    conn.send_data()
        except (ConnectionError, OSError):
            pass
        finally:
            client.flusher = None


def _frames(raws: list[bytes], per_frame: int) -> list[bytes]:
    return [json_array(raws[i : i + per_frame]) for i in range(0, len(raws), per_frame)]
