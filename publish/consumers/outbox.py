"""One WebSocket connection's outgoing frames, written so that a slow client slows no one else.

Frames go straight into the connection's transport, as websockets' broadcast() does. A client
whose socket is full gets a backlog of frames instead, drained by its own task; once it holds
more than `limit` frames the client is closed with 1008 "client too slow". Both feeds (`/` and
the Bybit-compatible path) send through this.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.protocol import State

from common.logs import RateLimitedLog
from common.metrics import REGISTRY

log = logging.getLogger(__name__)
limited = RateLimitedLog(log)

SLOW_CLOSED = REGISTRY.counter("publish_ws_slow_closed_total", "Clients closed for being slow")


class Outbox:
    __slots__ = ("_limit", "_tasks", "backlog", "closing", "conn", "flusher")

    def __init__(self, conn: ServerConnection, limit: int, tasks: set[asyncio.Task[Any]]) -> None:
        self.conn = conn
        self.backlog: deque[bytes] = deque()
        self.closing = False
        self.flusher: asyncio.Task[None] | None = None
        self._limit = limit
        self._tasks = tasks  # the server's: close tasks must outlive this connection's handler

    def send(self, frames: list[bytes]) -> None:
        if self.closing or not frames:
            return
        conn = self.conn
        if self.backlog or conn.paused:
            self.backlog.extend(frames)
            self._after_backlog()
            return
        protocol = conn.protocol
        if protocol.state is not State.OPEN:
            return
        for index, frame in enumerate(frames):
            protocol.send_text(frame)
            conn.send_data()
            if conn.paused and index + 1 < len(frames):
                self.backlog.extend(frames[index + 1 :])
                self._after_backlog()
                return

    async def send_paced(self, frames: list[bytes]) -> None:
        """Many frames (a history): each one once the socket has room, so a long history never
        counts against the backlog limit; a client too slow to drain gets no more."""
        conn = self.conn
        for frame in frames:
            while (self.backlog or conn.paused) and not self.closing:
                if conn.protocol.state is not State.OPEN:
                    return
                await conn.drain()
                await asyncio.sleep(0)  # the flusher's turn
            if self.closing:
                return
            self.send([frame])

    def discard(self) -> None:
        """The connection is gone: stop draining."""
        if self.flusher is not None:
            self.flusher.cancel()

    def _after_backlog(self) -> None:
        if len(self.backlog) > self._limit:
            self.close_slow()
        elif self.flusher is None:
            self.flusher = asyncio.create_task(self._flush())

    def close_slow(self) -> None:
        self.closing = True
        self.backlog.clear()
        SLOW_CLOSED.inc()
        limited.warning(
            "slow", "closing a slow client %s: more than %d frames queued",
            self.conn.remote_address, self._limit,
        )  # fmt: skip
        reason = f"client too slow: more than {self._limit} frames queued"
        task = asyncio.create_task(self.conn.close(1008, reason))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _flush(self) -> None:
        conn, protocol = self.conn, self.conn.protocol
        try:
            while self.backlog and not self.closing:
                await conn.drain()
                if protocol.state is not State.OPEN:
                    break
                while self.backlog and not conn.paused:
                    protocol.send_text(self.backlog.popleft())
                    conn.send_data()
        except (ConnectionError, OSError):
            pass
        finally:
            self.flusher = None
