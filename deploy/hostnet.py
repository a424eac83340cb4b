"""Entry point of a stage container on the host's network (deploy/docker-compose.test.yaml).

On the host's network the scaled replicas of a service share one port space and one host name,
so fixed ports would collide and every publish replica would read as the same consumer. Before
the stage starts, each replica takes its own free ports (metrics and /health, and the WebSocket
feed) and names itself after its container, then runs the stage in its place:

    python /opt/hostnet.py python -m publish      # start the stage
    python /opt/hostnet.py health                 # the health check: /health on its own port

The ports are kept in /tmp/hostnet-ports (inside the container) for the health check and for
whoever wants to reach the replica (`docker exec ID cat /tmp/hostnet-ports`). A port another
process takes in the moment before the stage binds it makes the stage exit; the restart policy
then starts the replica again with new ports.
"""

from __future__ import annotations

import os
import re
import socket
import sys
import urllib.request
from pathlib import Path

PORTS_FILE = Path("/tmp/hostnet-ports")
PORT_SETTINGS = ("STREAMER_METRICS_PORT", "STREAMER_WEBSOCKET_PORT")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def container_id() -> str:
    """The container's id, as Docker's per-container files mounted into it show it."""
    mounts = Path("/proc/self/mountinfo").read_text()
    found = re.search(r"/containers/([0-9a-f]{64})/", mounts)
    return found.group(1)[:12] if found else f"pid{os.getpid()}"


def health() -> int:
    ports = dict(line.split("=", 1) for line in PORTS_FILE.read_text().split())
    url = f"http://127.0.0.1:{ports['STREAMER_METRICS_PORT']}/health"
    with urllib.request.urlopen(url, timeout=2) as answer:
        return 0 if answer.status == 200 else 1


def run(command: list[str]) -> None:
    env = dict(os.environ)
    ports = {name: str(free_port()) for name in PORT_SETTINGS}
    env.update(ports)
    env["STREAMER_PUBLISH_REPLICA"] = env.get("STREAMER_PUBLISH_REPLICA") or container_id()
    PORTS_FILE.write_text("".join(f"{name}={port}\n" for name, port in ports.items()))
    os.execvpe(command[0], command, env)


if __name__ == "__main__":
    if sys.argv[1:] == ["health"]:
        sys.exit(health())
    run(sys.argv[1:])
