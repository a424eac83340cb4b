"""Hot standby: the recent trades of shards this replica watches but does not own.

With shards claimed through leases, every replica also subscribes to the symbols of the shards it
does not own and keeps their last few seconds of messages. When it takes over a shard from a
replica that died, it writes what the stream is missing from that buffer (the duplicate filter,
seeded from the stream's tail, drops what the dead owner already wrote), so nothing is lost and no
gap is reported for what it holds. The windows in which this replica's own connections were down
(an exchange-side drop hits every replica at once) are written as `reconnect` gaps at the takeover:
the dead owner may not have lived to report them. Bybit does not replay trades, so without a
standby the whole window since the dead owner's last write is lost.
"""

from __future__ import annotations

from collections import deque

from ingest.bybit.messages import TradeMessage

Buffered = tuple[int, TradeMessage]  # (received ms, message)
Missed = tuple[list[str], int, int]  # symbols, from ms, to ms
NOT_YET = 1 << 62  # covered since: never, so far


class Standby:
    def __init__(self, window_ms: int) -> None:
        self.window_ms = window_ms
        self._buffers: dict[int, deque[Buffered]] = {}
        self._covered_since: dict[int, int] = {}  # shard -> ms since which the buffer holds all
        self._missed: dict[int, list[Missed]] = {}  # shard -> our own reconnect windows

    def begin(self, shard: int) -> None:
        """Keep the shard's messages from now on (subscribing): no coverage claimed before the
        subscription is acked, but nothing that arrives is dropped either."""
        if shard not in self._buffers:
            self._buffers[shard] = deque()
            self._covered_since[shard] = NOT_YET
            self._missed[shard] = []

    def watch(self, shard: int, since_ms: int) -> None:
        """Start (again) keeping the shard's messages; coverage is complete from `since_ms`."""
        self._buffers.setdefault(shard, deque())
        self._covered_since[shard] = since_ms
        self._missed.setdefault(shard, [])

    def unwatch(self, shard: int) -> None:
        self._buffers.pop(shard, None)
        self._covered_since.pop(shard, None)
        self._missed.pop(shard, None)

    def keep(self, shard: int, message: TradeMessage, received_ms: int) -> None:
        buffer = self._buffers.get(shard)
        if buffer is None:
            return
        buffer.append((received_ms, message))
        horizon = received_ms - self.window_ms
        while buffer[0][0] < horizon:
            buffer.popleft()
        if self._covered_since.get(shard, NOT_YET) < horizon:
            self._covered_since[shard] = horizon  # older messages are no longer held
            missed = self._missed.get(shard)
            if missed and missed[0][2] < horizon:
                self._missed[shard] = [m for m in missed if m[2] >= horizon]

    def missed(self, shard: int, symbols: list[str], from_ms: int, to_ms: int) -> None:
        """Our own connection missed these symbols' trades in [from_ms, to_ms] (a reconnect)."""
        if shard in self._missed:
            self._missed[shard].append((symbols, from_ms, to_ms))

    def oldest_ms(self, shard: int) -> int | None:
        """When the oldest message still buffered for the shard was received; None if none."""
        buffer = self._buffers.get(shard)
        return buffer[0][0] if buffer else None

    def take(self, shard: int, from_ms: int) -> tuple[list[Buffered], list[Missed]] | None:
        """The buffered messages and our own missed windows still held, if the buffer reaches
        back to `from_ms`; None otherwise. `from_ms` 0: the shard's stream is new (a cold start):
        whatever is buffered is more than nothing.

        Every missed window comes back, also one that ended before `from_ms` (the stream's
        newest entry): the previous owner's connections reconnect one by one, so it may have
        written trades of some symbols after the window while another of its connections was
        still down, and handed the shard over (or died) before reporting that. A window it did
        report is reported twice, which flags nothing it had not flagged already."""
        covered = self._covered_since.pop(shard, None)
        buffer = self._buffers.pop(shard, None)
        missed = self._missed.pop(shard, [])
        if covered is None or buffer is None or (from_ms > 0 and covered > from_ms):
            return None
        return list(buffer), missed

    def covers(self, shard: int, from_ms: int) -> bool:
        covered = self._covered_since.get(shard)
        return covered is not None and covered <= from_ms

    def watched(self) -> set[int]:
        """The shards whose subscriptions are acked (coverage is claimed)."""
        return {shard for shard, since in self._covered_since.items() if since < NOT_YET}
