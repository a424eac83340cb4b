"""A private redis-server per test session (or per test, for restarts), on a free port."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.waiting import wait_until

T = TypeVar("T")


def free_port() -> int:
    """A port nothing is bound to now. Another process may take it before a server binds it: a
    server that can bind port 0 itself should, and tell its port; one that cannot (redis-server,
    PostgreSQL) starts through `retry_on_port_taken`."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class PortTaken(RuntimeError):
    """The server could not bind its port: taken since `free_port()` found it free."""


def retry_on_port_taken(start: Callable[[], T], new_port: Callable[[], None] | None) -> T:
    """`start()`; while it raises `PortTaken`, `new_port()` (another free port) and again, a few
    times. Without `new_port` (a port the caller fixed, or a restart: clients hold its URL) the
    first `PortTaken` is raised."""
    for _ in range(4):
        try:
            return start()
        except PortTaken:
            if new_port is None:
                raise
            new_port()
    return start()


class RedisProcess:
    """`redis-server` on 127.0.0.1:<free port>, data in `workdir`; never port 6379.

    A port it picked itself (`pick_port`) and could not bind on its first start is replaced by
    another; a given port, and the port of a restart, are kept."""

    def __init__(
        self,
        workdir: Path,
        port: int | None = None,
        extra: tuple[str, ...] = (),
        pick_port: Callable[[], int] = free_port,
    ) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not on PATH; run `make install`")
        self.binary = binary
        self.workdir = workdir
        self.port = port or pick_port()
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None
        self._pick_port: Callable[[], int] | None = None if port else pick_port

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisProcess:
        retry_on_port_taken(self._start, self._new_port if self._pick_port else None)
        self._pick_port = None  # started once: a restart keeps the port
        return self

    def _new_port(self) -> None:
        assert self._pick_port is not None
        self.port = self._pick_port()

    def _start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary,
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.workdir),
            "--logfile", str(self.workdir / f"redis-{self.port}.log"),
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(
            port=self.port,
            socket_connect_timeout=0.2,
            socket_timeout=1,
            retry=Retry(NoBackoff(), 0),
        )  # one try per probe: redis-py's retries would outlast the deadline on a silent port
        try:
            wait_until(
                lambda: self._answers(client), timeout_s=10, what=f"redis-server on {self.port}"
            )
        finally:
            client.close()

    def _answers(self, client: redis.Redis) -> bool:
        """Our server answers (not another one on that port); PortTaken if ours could not bind."""
        assert self.proc is not None
        if self.proc.poll() is not None:
            log = (self.workdir / f"redis-{self.port}.log").read_text(errors="replace")
            self.proc = None
            if "Address already in use" in log:
                raise PortTaken(f"redis-server: port {self.port} taken")
            raise RuntimeError(f"redis-server on {self.port} exited:\n{log[-2000:]}")
        if not _pings(client):
            return False
        pid = client.info("server")["process_id"]
        return bool(pid == self.proc.pid)  # another's: ours fails its bind and exits

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: Redis writes its append-only file out and exits. Killed only past
        `timeout_s`: a SIGKILL loses the last second of writes, which a test restarting Redis
        with persistence must not see happen just because the machine is busy."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port)


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError):
        time.sleep(0.01)
        return False
