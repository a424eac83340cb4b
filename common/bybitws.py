"""Bybit's public WebSocket as the server speaks it: ops in, acks, errors and pongs out, and
`kline` frames. Pure. Shared by the simulator (which plays Bybit) and publish's
Bybit-compatible path (`/v5/public/<category>`), so both answer exactly alike.

Shapes (Bybit's, as recorded): linear/inverse acks carry `ret_msg:""` and always a `req_id` (`""`
when none was sent); spot acks carry `ret_msg:"subscribe"` (or the op) and `req_id` only when
sent. Errors name one topic each; a request with several topics gets one error frame per bad
topic, then one success ack for the good ones (if any). The 21,000-character limit has no
recorded error text; this module answers `args length >21000` (modelled on spot's
`args size >10`) and rejects the whole request.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

import msgspec

from common.wire import Category

MAX_TOPIC_CHARS = 21_000
SPOT_MAX_ARGS = 10


class SubscribeFault(Enum):
    """What the simulator's fault injection makes of a subscribe (publish never sets one)."""

    NONE = "none"
    REFUSE = "refuse"  # success:false, ret_msg "Params Error" (an older recorded variant)
    STALL = "stall"  # no answer at all, and no data


class Request(msgspec.Struct):
    op: object = None
    args: object = None
    req_id: object = None


_decoder = msgspec.json.Decoder(Request)
_encoder = msgspec.json.Encoder()


def encode(obj: object) -> str:
    return _encoder.encode(obj).decode()


class KlineItem(msgspec.Struct, gc=False):
    """One candle of a `kline` frame, fields in the order Bybit sends them. Prices and sizes
    are decimal strings; `end` is the last millisecond of the candle (start + length - 1);
    `timestamp` is the time the frame was built (Bybit: of the last trade; its examples show
    it equal to the frame's `ts`)."""

    start: int
    end: int
    interval: str
    open: str
    close: str
    high: str
    low: str
    volume: str
    turnover: str
    confirm: bool
    timestamp: int


def kline_frame(category: Category, topic: str, items: list[KlineItem], ts_ms: int) -> bytes:
    """A `kline` push; spot orders the envelope's keys differently (recorded 2026-08)."""
    data = _encoder.encode(items)
    if category is Category.SPOT:
        return b'{"type":"snapshot","topic":"%s","data":%s,"ts":%d}' % (topic.encode(), data, ts_ms)
    return b'{"topic":"%s","data":%s,"ts":%d,"type":"snapshot"}' % (topic.encode(), data, ts_ms)


@dataclass
class Outcome:
    replies: list[str] = field(default_factory=list)
    subscribed: list[str] = field(default_factory=list)
    unsubscribed: list[str] = field(default_factory=list)
    pinged: bool = False


class Session:
    """Subscriptions of one connection; `known(topic)` says whether the exchange has it."""

    def __init__(
        self,
        category: Category,
        conn_id: str,
        known: Callable[[str], bool],
        fault: Callable[[], SubscribeFault] = lambda: SubscribeFault.NONE,
    ) -> None:
        self.category = category
        self.conn_id = conn_id
        self._known = known
        self._fault = fault
        self.topics: set[str] = set()
        self.chars = 0

    def handle(self, text: str) -> Outcome:
        try:
            request = _decoder.decode(text)
        except msgspec.DecodeError:
            return Outcome([self._decode_error(text)])
        req_id = request.req_id if isinstance(request.req_id, str) else None
        if request.op == "ping":
            return Outcome([self._pong(req_id)], pinged=True)
        if request.op not in ("subscribe", "unsubscribe"):
            op = request.op if isinstance(request.op, str) else ""
            return Outcome([self._reply(False, "error:invalid op", req_id, op)])
        args = request.args if isinstance(request.args, list) else []
        topics = [a for a in args if isinstance(a, str)]
        if request.op == "unsubscribe":
            return self._unsubscribe(topics, req_id)
        return self._subscribe(topics, req_id)

    def _subscribe(self, topics: list[str], req_id: str | None) -> Outcome:
        if self.category is Category.SPOT and len(topics) > SPOT_MAX_ARGS:
            reply = {"success": False, "ret_msg": "args size >10", "conn_id": self.conn_id}
            return Outcome([encode({**reply, "op": "subscribe"})])
        fault = self._fault()
        if fault is SubscribeFault.STALL:
            return Outcome()
        if fault is SubscribeFault.REFUSE:
            return Outcome([self._reply(False, "Params Error", req_id, "subscribe")])
        fresh = [t for t in dict.fromkeys(topics) if t not in self.topics]
        if self.chars + sum(len(t) for t in fresh) > MAX_TOPIC_CHARS:
            ret = f"args length >{MAX_TOPIC_CHARS}"
            return Outcome([self._reply(False, ret, req_id, "subscribe")])
        out = Outcome()
        good: list[str] = []
        for topic in topics:
            if topic in self.topics or topic in good:
                out.replies.append(self._refuse(f"error:already subscribed,topic:{topic}", req_id))
            elif not self._known(topic):
                out.replies.append(self._refuse(f"error:handler not found,topic:{topic}", req_id))
            else:
                good.append(topic)
        if good or not topics:
            self.topics.update(good)
            self.chars += sum(len(t) for t in good)
            out.replies.append(self._ack(req_id, "subscribe"))
            out.subscribed = good
        return out

    def _unsubscribe(self, topics: list[str], req_id: str | None) -> Outcome:
        gone = [t for t in dict.fromkeys(topics) if t in self.topics]
        for topic in gone:
            self.topics.discard(topic)
            self.chars -= len(topic)
        return Outcome([self._ack(req_id, "unsubscribe")], unsubscribed=gone)

    def _ack(self, req_id: str | None, op: str) -> str:
        ret_msg = op if self.category is Category.SPOT else ""
        return self._reply(True, ret_msg, req_id, op)

    def _refuse(self, ret_msg: str, req_id: str | None) -> str:
        return self._reply(False, ret_msg, req_id, "subscribe")

    def _pong(self, req_id: str | None) -> str:
        return self._reply(True, "pong", req_id, "ping")

    def _reply(self, success: bool, ret_msg: str, req_id: str | None, op: str) -> str:
        reply: dict[str, object] = {"success": success, "ret_msg": ret_msg, "conn_id": self.conn_id}
        if req_id is not None or self.category is not Category.SPOT:
            reply["req_id"] = req_id or ""
        reply["op"] = op
        return encode(reply)

    def _decode_error(self, text: str) -> str:
        head = text[:10]
        ret_msg = (
            "Failed to decode incoming data:readObjectStart: expect { or n, but found "
            f"{head[:1]}, error found in #1 byte of ...|{head}|..., "
            f"bigger context ...|{text[:50]}|..."
        )
        return self._reply(False, ret_msg, None, "")
