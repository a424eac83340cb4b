"""`websocket`: the candle feed on STREAMER_WEBSOCKET_HOST:PORT, path `/` (docs/protocol.md
"WebSocket server (contract)").

- Every connection authenticates with HTTP Basic auth on the upgrade request, or, for clients
  that cannot set a header (Bybit's SDKs, a browser), `?auth=<user>:<key>` (URL-encoded); both
  compared in constant time, never logged. Otherwise HTTP 401 with `WWW-Authenticate`, and no
  upgrade. `/health` answers 200.
- `/v5/public/<STREAMER_BYBIT_CATEGORY>` is the Bybit-compatible feed (bybit_feed.py).
- Frames are JSON arrays of up to STREAMER_WEBSOCKET_MAX_FRAME_CANDLES candles, joined from the
  candles' raw JSON. Ops: `{"op": "subscribe"|"unsubscribe", "args": [...]}` (see topics.py),
  `{"op": "ping"}`; each answered `{"op", "success", "ret_msg", "args"}`. A subscribe is followed
  by the latest closed candle of each newly matching series (the snapshot), then the live feed;
  with `"since": <ms>` or `"history": N`, by those series' stored history instead (resume.py).
- Fan-out builds each frame once per distinct subscription and hands it to every client's
  outbox (outbox.py): no client ever waits for a slow one.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from http import HTTPStatus
from typing import Any

import msgspec
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from common.errors import ConfigError
from common.keys import Keys
from common.metrics import REGISTRY
from common.redisconn import connect
from common.rediserrors import REDIS_DOWN
from publish import history
from publish.auth import Credentials
from publish.batch import CandleBatch, json_array
from publish.consumers import http
from publish.consumers.base import BaseConsumer
from publish.consumers.bybit_feed import BybitFeed
from publish.consumers.outbox import Outbox
from publish.consumers.resume import HistoryLoader, Offer, Resumption, Seam, check_request
from publish.consumers.topics import ClientFilter, SeriesKey, Topic, series_decoder
from publish.routes import HttpRoutes

log = logging.getLogger(__name__)

MAX_CLIENT_MESSAGE_BYTES = 64 * 1024
WRITE_LIMIT_BYTES = 256 * 1024

CLIENTS = REGISTRY.gauge("publish_ws_clients", "Connected WebSocket clients")
REFUSED = REGISTRY.counter("publish_ws_refused_total", "Upgrade requests refused", ("reason",))


class Op(msgspec.Struct):
    op: str
    args: list[str] = []
    since: int | None = None
    history: int | None = None


class Reply(msgspec.Struct):
    op: str | None
    success: bool
    ret_msg: str
    args: list[str] = []


_op_decoder = msgspec.json.Decoder(Op)
_encoder = msgspec.json.Encoder()


class _Client:
    __slots__ = ("filter", "outbox", "resume")

    def __init__(self, outbox: Outbox) -> None:
        self.outbox = outbox
        self.filter = ClientFilter()
        self.resume: Resumption | None = None


class WebSocketConsumer(BaseConsumer):
    history_candles = 10_000  # per shard: snapshots right after a restart

    def __init__(self, name: str = "websocket") -> None:
        super().__init__(name)
        self._clients: set[_Client] = set()
        self._latest: dict[SeriesKey, tuple[int, bytes]] = {}
        self._server: Server | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._credentials: Credentials | None = None
        self.history: history.HistoryReader | None = None  # the store, from setup() on
        self._routes: HttpRoutes | None = None
        self._bybit: BybitFeed | None = None
        self._history: HistoryLoader | None = None
        self._archive: history.Archive | None = None  # older candles (PostgreSQL), if set

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
            self._credentials = Credentials(s.wss_auth_user.encode(), s.wss_auth_key.encode())
        self._bybit = BybitFeed(s, self._tasks)
        self._archive = history.archive_of(s)
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
        redis, keys = connect(s), Keys(s.redis_prefix)
        self.history = history.HistoryReader(
            redis, keys, s.kline_intervals, s.shards,
            archive=self._archive, depth=s.history_candles,
        )  # fmt: skip
        # a closed candle may be revised by a late trade, or by a gap repair later still
        revisable_ms = int(max(s.kline_revision_window_s, s.kline_repair_window_s) * 1000)
        self._routes = HttpRoutes(
            self.history, s.bybit_category.value, self._credentials, revisable_ms
        )
        # more than a series ever holds (common/history.py: depth + 15, sub-second ones 16 s more)
        most = 2 * s.history_candles + 1000
        self._history = HistoryLoader(self.history, redis, keys, s.shards, most)
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
        if self.history is not None:
            await self.history.aclose()

    # --- connections -----------------------------------------------------------------------

    def _authorized(self, header: str | None, target: str) -> bool:
        return self._credentials is None or self._credentials.allows(header, target)

    async def _process_request(self, conn: ServerConnection, request: Request) -> Response | None:
        assert self._bybit is not None
        path = request.path.split("?", 1)[0]
        if path == "/health":
            return conn.respond(HTTPStatus.OK, "ok\n")
        if self._routes is not None and path in HttpRoutes.PATHS:
            return await http.answer(self._routes, request)
        if path not in ("/", self._bybit.path):
            REFUSED.inc(1, "path")
            where = f"the candle feed is at /, the Bybit-compatible one at {self._bybit.path}"
            return conn.respond(HTTPStatus.NOT_FOUND, f"not found; {where}\n")
        if not self._authorized(request.headers.get("Authorization"), request.path):
            REFUSED.inc(1, "auth")
            response = conn.respond(HTTPStatus.UNAUTHORIZED, "credentials required\n")
            response.headers["WWW-Authenticate"] = 'Basic realm="klines", charset="UTF-8"'
            return response
        assert self.settings is not None
        if self._client_count() >= self.settings.websocket_max_clients:
            REFUSED.inc(1, "full")
            return conn.respond(HTTPStatus.SERVICE_UNAVAILABLE, "too many clients\n")
        return None

    def _client_count(self) -> int:
        assert self._bybit is not None
        return len(self._clients) + len(self._bybit.clients)

    async def _handle(self, conn: ServerConnection) -> None:
        assert self.settings is not None and self._bybit is not None
        if self._client_count() >= self.settings.websocket_max_clients:
            await conn.close(1013, "too many clients")
            return
        if conn.request is not None and conn.request.path.startswith(self._bybit.path):
            CLIENTS.set(self._client_count() + 1)
            try:
                await self._bybit.handle(conn)
            finally:
                CLIENTS.set(self._client_count())
            return
        client = _Client(Outbox(conn, self.settings.websocket_client_buffer, self._tasks))
        self._clients.add(client)
        CLIENTS.set(self._client_count())
        try:
            async for message in conn:
                await self._on_message(client, message)
        except ConnectionClosed:
            pass
        finally:
            self._clients.discard(client)
            CLIENTS.set(self._client_count())
            client.outbox.discard()

    async def _on_message(self, client: _Client, message: str | bytes) -> None:
        if isinstance(message, bytes):
            self._reply(client, Reply(None, False, "binary frames are not accepted; send JSON"))
            return
        try:
            op = _op_decoder.decode(message)
        except msgspec.DecodeError as exc:
            self._reply(client, Reply(None, False, f"bad request: {exc}"))
            return
        try:
            if op.op == "subscribe" and (op.since is not None or op.history is not None):
                await self._resume(client, op)
            elif op.op == "subscribe":
                new = client.filter.subscribe(op.args)
                self._reply(client, Reply(op.op, True, "subscribed", [t.text for t in new]))
                client.outbox.send(self._snapshot(new))
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

    async def _resume(self, client: _Client, op: Op) -> None:
        """Subscribe, hold the client's live candles back, send the history, then the live
        feed past the seam (resume.py). Ops of one client are handled one at a time."""
        assert self.settings is not None and self._history is not None
        problem = check_request(op.since, op.history)
        if problem is not None:
            raise ValueError(problem)
        old = list(client.filter.topics.values())
        new = client.filter.subscribe(op.args)
        per_frame = self.settings.websocket_max_frame_candles
        resume = client.resume  # the seam of an earlier resume may still be open
        if resume is None:
            resume = Resumption(self.settings.websocket_client_buffer * per_frame)
            client.resume = resume
        resume.pending = []
        try:
            series = await self._history.series(new, old)
            loaded = await self._history.load(series, op.since, op.history)
        except REDIS_DOWN as exc:
            if new:
                client.filter.unsubscribe([t.text for t in new])
            client.outbox.send(_frames(resume.finish(Seam(), client.filter.wants), per_frame))
            raise ValueError(f"history unavailable, nothing subscribed: {exc}") from None
        what = loaded.reply(len(series))
        self._reply(client, Reply(op.op, True, what, [t.text for t in new]))
        await client.outbox.send_paced(_frames(loaded.raws, per_frame))
        client.outbox.send(_frames(resume.finish(loaded.seam, client.filter.wants), per_frame))
        if resume.done and client.resume is resume:
            client.resume = None

    def _reply(self, client: _Client, reply: Reply) -> None:
        client.outbox.send([_encoder.encode(reply)])

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
        self._fan_out(batch.raws, self._remember(batch.raws), batch.last_ids())

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
        self._fan_out(raws, keys, {}, updates=True)

    def _fan_out(
        self,
        raws: list[bytes],
        keys: list[SeriesKey],
        last_ids: dict[int, bytes],
        updates: bool = False,
    ) -> None:
        """Frames built once per distinct subscription, then written to every client."""
        assert self.settings is not None and self._bybit is not None
        self._bybit.fan_out(raws, keys)
        per_frame = self.settings.websocket_max_frame_candles
        groups: dict[frozenset[Any] | None, list[_Client]] = {}
        for client in self._clients:
            groups.setdefault(client.filter.key, []).append(client)
        for group_key, clients in groups.items():
            picked, picked_keys = raws, keys
            if group_key is not None:
                wants = clients[0].filter.wants
                chosen = [(raw, key) for raw, key in zip(raws, keys, strict=True) if wants(key)]
                picked, picked_keys = [r for r, _ in chosen], [k for _, k in chosen]
            frames: list[bytes] | None = None
            for client in clients:
                if client.resume is not None:
                    self._offer(client, client.resume, (picked, picked_keys, last_ids, updates))
                    continue
                if frames is None:
                    frames = _frames(picked, per_frame)
                client.outbox.send(frames)

    def _offer(self, client: _Client, resume: Resumption, offer: Offer) -> None:
        """Live candles for a client in the middle of a resume (resume.py)."""
        assert self.settings is not None
        kept = resume.offer(offer)
        if kept is None:
            client.resume = None
            client.outbox.close_slow()
            return
        client.outbox.send(_frames(kept, self.settings.websocket_max_frame_candles))
        if resume.done:
            client.resume = None

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


def _frames(raws: list[bytes], per_frame: int) -> list[bytes]:
    return [json_array(raws[i : i + per_frame]) for i in range(0, len(raws), per_frame)]
