"""WebSocket resume on `/` through real processes: simulator → ingest → aggregate → publish.

Clients subscribe with `since` while candles are written fast (~150 a second), drop and
reconnect with `since` = where they were, and reconnect after publish is killed with `kill -9`
(restarted as supervisord would). Each connection is checked against XRANGE of the candle
streams, candle by candle (the exact bytes): from its `since` up to where it got in every series,
every candle of the streams arrived, none twice (a revision only once, and only above the one
before it). Reconnecting at the point reached chains the connections with no hole.
"""

from __future__ import annotations

import base64
import collections
import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import pytest
from websockets.exceptions import ConnectionClosed, WebSocketException
from websockets.sync.client import ClientConnection, connect

from common.wire import STREAM_FIELD
from tests.support import replies
from tests.support.pipeline import PASSWORD, USER, Pipeline, Supervisor, start_pipeline, wait_for_ws
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

TOPICS = ["1s.*", "2s.*"]
DROPS = 6
Series = tuple[str, int]  # (symbol, interval ms)
Version = tuple[str, int, int, int]  # (symbol, interval, timestamp, revision)
Key = tuple[str, int, int]  # (symbol, interval, timestamp)


class Head(msgspec.Struct):
    symbol: str
    interval: int
    timestamp: int
    revision: int = 0


_head = msgspec.json.Decoder(Head)


def version(raw: bytes) -> Version:
    h = _head.decode(raw)
    return (h.symbol, h.interval, h.timestamp, h.revision)


@dataclass
class Connection:
    since: int
    reply: str
    raws: list[bytes] = field(default_factory=list)

    @property
    def history(self) -> int:
        """The history candles the reply announced ("subscribed; N candles of M series first");
        they come first, series by series."""
        return int(self.reply.split()[1])

    def history_complete(self) -> bool:
        return len(self.raws) >= self.history

    def newest(self) -> dict[Series, int]:
        newest: dict[Series, int] = {}
        for raw in self.raws:
            symbol, interval, ts, _ = version(raw)
            newest[(symbol, interval)] = max(ts, newest.get((symbol, interval), ts))
        return newest

    def reached(self) -> int | None:
        """The open time every series got to (the least of each series' newest); None while
        the history is incomplete: the series it had not come to yet got nothing, so a
        reconnect resumes from this connection's own `since`."""
        newest = self.newest()
        return min(newest.values()) if newest and self.history_complete() else None


class ResumingClient:
    """Reconnects until stopped; each connection subscribes with `since` = where the one before
    got to. `drop()` makes it close its connection itself, as a client that goes away does."""

    def __init__(self, port: int, since: int) -> None:
        self.port = port
        self.connections: list[Connection] = []
        self.errors: list[str] = []
        self._since = since
        self._drop = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="resuming-client", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        while not self._stop.is_set():
            with (
                contextlib.suppress(OSError, WebSocketException, TimeoutError),
                connect(
                    f"ws://127.0.0.1:{self.port}/", open_timeout=2, max_size=None,
                    additional_headers={"Authorization": f"Basic {token}"},
                ) as ws,
            ):  # fmt: skip
                self._session(ws)
            if self.connections:
                self._since = self.connections[-1].reached() or self._since
            self._stop.wait(0.05)  # reconnect pacing, not a wait for an event

    def _session(self, ws: ClientConnection) -> None:
        ws.send(
            msgspec.json.encode({"op": "subscribe", "args": TOPICS, "since": self._since}).decode()
        )
        while True:  # before the subscribe, a connection gets every live candle: not counted
            reply = msgspec.json.decode(ws.recv(timeout=10))
            if isinstance(reply, dict):
                break
        if reply.get("success") is not True:
            self.errors.append(str(reply))
            self._stop.set()
            return
        conn = Connection(self._since, reply["ret_msg"])
        self.connections.append(conn)
        while not (self._stop.is_set() or self._drop.is_set()):
            try:
                frame = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            except ConnectionClosed:
                return
            data = frame.encode() if isinstance(frame, str) else frame
            conn.raws.extend(bytes(r) for r in msgspec.json.decode(data, type=list[msgspec.Raw]))
        self._drop.clear()

    def drop(self) -> None:
        assert not self.errors, self.errors
        count = len(self.connections)
        self._drop.set()
        wait_until(lambda: len(self.connections) > count, 30, "the client to reconnect")

    def received(self) -> int:
        return sum(len(c.raws) for c in self.connections)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)


def more_candles(clients: list[ResumingClient], count: int = 200) -> None:
    marks = [c.received() for c in clients]

    def arrived() -> bool:
        return all(c.received() > n + count for c, n in zip(clients, marks, strict=True))

    try:
        wait_until(arrived, 30, f"{count} more candles for each client")
    except AssertionError:
        state = [(len(c.connections), c.received(), c.errors) for c in clients]
        raise AssertionError(f"(connections, candles, errors) per client: {state}") from None


def candle_count(pipe: Pipeline) -> int:
    client = pipe.client()
    total = sum(int(client.xlen(pipe.keys.klines(shard))) for shard in range(pipe.shards))
    client.close()
    return total


def stream_candles(pipe: Pipeline) -> dict[Version, bytes]:
    client = pipe.client()
    out = {
        version(fields[STREAM_FIELD]): fields[STREAM_FIELD]
        for shard in range(pipe.shards)
        for _, fields in replies.entries(client.xrange(pipe.keys.klines(shard)))
    }
    client.close()
    return out


def missing(conn: Connection, stream: dict[Version, bytes], *, final: bool = False) -> list[Key]:
    """Checks what a connection got against the streams: every candle exactly as written, none
    twice, revisions only upwards. Returns the (series, open time)s from `since` to where the
    connection got that it lacks: any revision of them for a connection that ended (a revision
    may come after that), the latest one for the one that stays to the end (`final`)."""
    reached = conn.reached()
    # A connection cut during its history holds the series it came to, each from `since` to its
    # newest (series by series, oldest first); one that got its history, every series up to the
    # least newest.
    newest = conn.newest()
    assert newest

    def until(series: Series) -> int:
        return newest.get(series, -1) if reached is None else reached

    seen: dict[Key, int] = {}
    for raw in conn.raws:
        v = version(raw)
        assert stream.get(v) == raw, f"not in the streams as sent: {raw!r}"
        symbol, interval, ts, revision = v
        assert seen.get((symbol, interval, ts), -1) < revision, f"sent twice: {v}"
        seen[(symbol, interval, ts)] = revision
    wanted: dict[Key, int] = {}
    for symbol, interval, ts, revision in stream:
        if conn.since <= ts <= until((symbol, interval)):
            key = (symbol, interval, ts)
            wanted[key] = max(revision, wanted.get(key, revision)) if final else 0
    return sorted(k for k, rev in wanted.items() if seen.get(k, -1) < rev)


def aggregated_all(pipe: Pipeline) -> bool:
    """The aggregator has written the candles of every entry of the trade streams."""
    client = pipe.client()
    try:
        for shard in range(pipe.shards):
            last = replies.entries(client.xrevrange(pipe.keys.trades(shard), count=1))
            head = client.hget(pipe.keys.state(shard), "head")
            if last and (head is None or json.loads(head)["last_id"] != last[0][0].decode()):
                return False
        return True
    finally:
        client.close()


def test_resume_through_drops_and_kill9_of_publish(tmp_path: Path, redis_url: str) -> None:
    pipe = start_pipeline(
        tmp_path, redis_url, ("--symbols", "100", "--rate", "2000", "--quiet-fraction", "0"),
        shards=2, intervals="1s,2s",
    )  # fmt: skip
    supervisor = None
    clients: list[ResumingClient] = []
    try:
        pipe.start("publish", "publish")
        wait_for_ws(pipe.ws_port)
        pipe.start("aggregate", "aggregate")
        pipe.start("ingest", "ingest")
        supervisor = Supervisor(pipe, ["publish"])
        wait_until(lambda: candle_count(pipe) > 1500, 60, "candles in the streams")
        first = min(ts for _, _, ts, _ in stream_candles(pipe))
        # The whole stream as history while it grows, and a client from a recent moment.
        clients = [ResumingClient(pipe.ws_port, first),
                   ResumingClient(pipe.ws_port, int(time.time() * 1000) - 3000)]  # fmt: skip
        for _ in range(DROPS):  # clients that drop and come back with `since`
            more_candles(clients)
            for client in clients:
                client.drop()
        more_candles(clients)
        pipe.procs["publish"].kill9()  # the supervisor restarts it; clients reconnect
        wait_until(lambda: supervisor.restarts["publish"] == 1, 30, "publish restarted")
        wait_until(lambda: all(len(c.connections) >= DROPS + 2 for c in clients), 60, "reconnected")
        more_candles(clients)
        # The streams stop growing; the last connection of each client gets all of them.
        assert pipe.sim.proc.stop() == 0
        assert pipe.procs["ingest"].stop() == 0
        wait_until(lambda: aggregated_all(pipe), 60, "the aggregator at the trade streams' end")
        stream = stream_candles(pipe)
        ends: dict[Series, int] = collections.defaultdict(int)
        for symbol, interval, ts, _ in stream:
            ends[(symbol, interval)] = max(ends[(symbol, interval)], ts)

        def complete() -> bool:
            return all(
                (c.connections[-1].reached() or 0) >= min(ends.values())
                and not missing(c.connections[-1], stream, final=True)
                for c in clients
            )

        wait_until(complete, 60, "the clients to get every candle of the streams")
        for client in clients:
            client.stop()
            counts = []
            for conn in client.connections:
                lacking = missing(conn, stream)
                assert lacking == [], f"{len(lacking)} missing after {conn.since}: {lacking[:5]}"
                counts.append(len(conn.raws))
            assert len(counts) >= DROPS + 2 and min(counts) > 0, counts
            # each connection started where the one before had got to: no hole between them
            for before, after in zip(client.connections, client.connections[1:], strict=False):
                assert after.since <= (before.reached() or after.since)
        # the first connection got the streams from their start as history
        assert int(clients[0].connections[0].reply.split()[1]) > 1000
    finally:
        for client in clients:
            client.stop()
        if supervisor is not None:
            supervisor.stop()
        pipe.stop_all()
