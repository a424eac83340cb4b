"""The ledger: JSON lines of what the simulator sent, flushed every loop turn so tests can read
it while the simulator runs.

Trade ledger lines (one per trade delivered to at least one subscribed connection):
  {"symbol","T","p","v","S","i","seq","sent_ms"}
one line per fault-drop window:
  {"drop":{"from_ms","to_ms"}}
and one line per trade of a topic that had subscribers and has none now (they were dropped,
unsubscribed or gone) until one subscribes again, never sent: still in recent-trade, so a gap
repair can fetch it back:
  {"missed":{"symbol","T","p","v","S","i","seq","sent_ms":null}}
Kline ledger lines (one per confirmed candle of a subscribed series):
  {"symbol","interval","start","open","high","low","close","volume","turnover","sent_ms"}
"""

from __future__ import annotations

from pathlib import Path
from typing import TextIO

from simulator.frames import encode


class Ledger:
    def __init__(self, path: Path | None) -> None:
        self._file: TextIO | None = path.open("a", encoding="utf-8") if path else None
        self._dirty = False

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, text: str) -> None:
        if self._file is not None:
            self._file.write(text)
            self._dirty = True

    def drop(self, from_ms: int, to_ms: int) -> None:
        self.write(encode({"drop": {"from_ms": from_ms, "to_ms": to_ms}}) + "\n")

    def record(self, obj: object) -> None:
        self.write(encode(obj) + "\n")

    def flush(self) -> None:
        if self._file is not None and self._dirty:
            self._file.flush()
            self._dirty = False

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
