"""The Bybit-compatible feed: `/v5/public/<category>` on the candle feed's port (docs/protocol.md
"Bybit-compatible path").

Bybit's ops and replies come from `common/bybitws.py` (the simulator answers with the same
code), so pybit and other Bybit clients work with only the URL changed. A topic goes live with
its ack, a few milliseconds after the request: pybit stores a request's `req_id` and callback only
after sending it, and an ack or a frame that overtakes that (easy on loopback) makes pybit raise.
There is no snapshot on subscribe (Bybit sends none of closed candles); each closed candle (and
each revision) is pushed with `confirm: true`, in-progress ones with `false` when updates are on.
Linear/inverse put a series' candles of one batch in one frame, as Bybit puts a confirm and the
next candle together; spot sends one frame per candle, as Bybit's spot does.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from common.bybitws import Outcome, Session, kline_frame
from common.settings import PublishSettings
from common.wire import Category
from publish.consumers.bybit import BybitTopic, TopicParser, kline_fields_decoder
from publish.consumers.outbox import Outbox
from publish.consumers.topics import SeriesKey

ACK_DELAY_S = 0.02


class BybitClient:
    __slots__ = ("live", "outbox", "session")

    def __init__(self, outbox: Outbox, session: Session) -> None:
        self.outbox = outbox
        self.session = session
        self.live: dict[str, BybitTopic] = {}


class BybitFeed:
    def __init__(self, settings: PublishSettings, tasks: set[asyncio.Task[Any]]) -> None:
        self.category: Category = settings.bybit_category
        self.path = f"/v5/public/{self.category.value}"
        self.clients: set[BybitClient] = set()
        self._parser = TopicParser(settings.kline_intervals)
        self._buffer = settings.websocket_client_buffer
        self._tasks = tasks
        # series -> topic text -> (topic, its live clients): frames are built once per topic
        self._subscribers: dict[SeriesKey, dict[str, tuple[BybitTopic, set[BybitClient]]]] = {}

    def known(self, topic: str) -> bool:
        return self._parser.parse(topic) is not None

    async def handle(self, conn: ServerConnection) -> None:
        session = Session(self.category, str(uuid.uuid4()), self.known)
        client = BybitClient(Outbox(conn, self._buffer, self._tasks), session)
        self.clients.add(client)
        loop = asyncio.get_running_loop()
        try:
            async for message in conn:
                text = message if isinstance(message, str) else message.decode(errors="replace")
                outcome = session.handle(text)
                for topic in outcome.unsubscribed:
                    self._drop(client, topic)
                loop.call_later(ACK_DELAY_S, self._answer, client, outcome)
        except ConnectionClosed:
            pass
        finally:
            self.clients.discard(client)
            for topic in list(client.live):
                self._drop(client, topic)
            client.outbox.discard()

    def _answer(self, client: BybitClient, outcome: Outcome) -> None:
        if client not in self.clients:
            return
        for text in outcome.subscribed:
            topic = self._parser.parse(text)
            if topic is None or text not in client.session.topics:
                continue  # unsubscribed again before its ack
            client.live[text] = topic
            by_topic = self._subscribers.setdefault(topic.key, {})
            by_topic.setdefault(text, (topic, set()))[1].add(client)
        client.outbox.send([reply.encode() for reply in outcome.replies])

    def _drop(self, client: BybitClient, text: str) -> None:
        topic = client.live.pop(text, None)
        if topic is None:
            return
        by_topic = self._subscribers.get(topic.key, {})
        entry = by_topic.get(text)
        if entry is not None:
            entry[1].discard(client)
            if not entry[1]:
                del by_topic[text]
        if not by_topic:
            self._subscribers.pop(topic.key, None)

    def fan_out(self, raws: list[bytes], keys: list[SeriesKey]) -> None:
        """Candles in stream order, with the series of each."""
        subscribers = self._subscribers
        if not subscribers:
            return
        wanted: dict[SeriesKey, list[bytes]] = {}
        for raw, key in zip(raws, keys, strict=True):
            if key in subscribers:
                wanted.setdefault(key, []).append(raw)
        now_ms = int(time.time() * 1000)
        spot = self.category is Category.SPOT
        for key, series_raws in wanted.items():
            fields = [kline_fields_decoder.decode(raw) for raw in series_raws]
            for text, (topic, clients) in subscribers[key].items():
                items = [topic.item(f, now_ms) for f in fields]
                if spot:
                    frames = [kline_frame(self.category, text, [i], now_ms) for i in items]
                else:
                    frames = [kline_frame(self.category, text, items, now_ms)]
                for client in clients:
                    client.outbox.send(frames)
