"""`python -m bench.ws_user PORT USER PASSWORD`: the benchmarks' WebSocket user, in its own process.

It connects to publish's WebSocket server (Basic auth), stamps each frame with the wall clock the
moment it arrives, and writes `<arrival ms> <frame>` lines to stdout (a frame is JSON: it never
holds a raw newline); a connection error is a line `! <error>`, and it connects again. In its
own process so that a stamp waits for nothing else: as a thread of the bench, a frame's stamp
waited for the interpreter lock whenever the bench's own sampling ran (up to 3 ms at p99 on the
two-core machine, measured against publish's send time).
"""

from __future__ import annotations

import asyncio
import base64
import sys
import time


async def _receive(port: int, user: str, password: str) -> None:
    from websockets.asyncio.client import connect

    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    headers = {"Authorization": f"Basic {token}"}
    out = sys.stdout.buffer
    while True:
        try:
            async with connect(
                f"ws://127.0.0.1:{port}/",
                additional_headers=headers,
                open_timeout=5,
                max_size=None,
            ) as ws:
                async for frame in ws:
                    now_ms = time.time_ns() // 1_000_000
                    data = frame.encode() if isinstance(frame, str) else frame
                    if data.startswith(b"["):
                        out.write(b"%d %s\n" % (now_ms, data))
                        out.flush()
        except Exception as exc:  # kept for the warm-up's error message
            out.write(b"! %s\n" % repr(exc).encode())
            out.flush()
            await asyncio.sleep(0.2)  # reconnect pacing


def main() -> None:
    port, user, password = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    try:
        import uvloop

        uvloop.run(_receive(port, user, password))
    except ImportError:
        asyncio.run(_receive(port, user, password))


if __name__ == "__main__":
    main()
