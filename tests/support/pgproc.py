"""A private PostgreSQL server per test session (or per test, for restarts), on a free port.

`initdb` and `pg_ctl` from PATH or the system's PostgreSQL folder, data and unix socket in a
temporary folder of its own, listening on 127.0.0.1:<free port> only: a server the user runs (on
5432 or elsewhere) is never touched. PostgreSQL refuses to run as root, so when the tests run as
root the server runs as an unprivileged user (`postgres` where the system package made one,
`nobody` otherwise) that owns the temporary folder. The folder lives directly under the system's
temp directory (not pytest's, whose folders only root may enter).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.support.redisproc import PortTaken, free_port, retry_on_port_taken

SUPERUSER = "postgres"


def pg_binary(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
        found = candidates[0] if candidates else None
    if found is None:
        raise RuntimeError(
            f"{name} not found on PATH nor in /usr/lib/postgresql; run `make install`"
        )
    return found


def _server_user() -> pwd.struct_passwd | None:
    """The user the server runs as, or None to run as ourselves (we are not root)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    raise RuntimeError("running as root and neither a 'postgres' nor a 'nobody' user exists")


class PostgresProcess:
    """One PostgreSQL cluster: `start()`, `stop()` (fast), `kill()` (immediate), `dsn(db)`."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self._may_move = port is None  # a port it picked may change on its first start
        self.user = _server_user()
        self.folder = Path(tempfile.mkdtemp(prefix="streamer-pg-"))
        self.data = self.folder / "data"
        self.socket_dir = self.folder / "run"
        self.log = self.folder / "server.log"
        self.socket_dir.mkdir()
        if self.user is not None:
            for path in (self.folder, self.socket_dir):
                os.chown(path, self.user.pw_uid, self.user.pw_gid)
        self._initdb()

    def _as_server_user(self, args: list[str]) -> list[str]:
        if self.user is None:
            return args
        return [
            "setpriv", f"--reuid={self.user.pw_uid}", f"--regid={self.user.pw_gid}",
            "--clear-groups", "--", *args,
        ]  # fmt: skip

    def _run(self, args: list[str], timeout_s: float = 120) -> None:
        done = subprocess.run(
            self._as_server_user(args), capture_output=True, text=True, timeout=timeout_s,
            cwd=self.folder, env={**os.environ, "LC_ALL": "C", "LANG": "C"},
        )  # fmt: skip
        if done.returncode != 0:
            log = self.log.read_text(errors="replace")[-3000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed: {done.stdout}{done.stderr}{log}")

    def _initdb(self) -> None:
        self._run([
            pg_binary("initdb"), "-D", str(self.data), "-U", SUPERUSER, "-A", "trust",
            "-E", "UTF8", "--no-sync", "--no-instructions",
        ])  # fmt: skip

    def _options(self) -> str:
        return " ".join([
            f"-p {self.port}", "-c listen_addresses=127.0.0.1",
            f"-c unix_socket_directories={self.socket_dir}",
            "-c fsync=off", "-c synchronous_commit=on", "-c full_page_writes=off",
            "-c max_connections=60", "-c shared_buffers=64MB",
        ])  # fmt: skip

    def start(self) -> PostgresProcess:
        retry_on_port_taken(self._start, self._new_port if self._may_move else None)
        self._may_move = False  # started once: a restart keeps the port (clients hold the DSN)
        return self

    def _new_port(self) -> None:
        self.port = free_port()

    def _start(self) -> None:
        try:
            self._run([
                pg_binary("pg_ctl"), "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60",
                "-o", self._options(), "start",
            ])  # fmt: skip
        except RuntimeError as exc:
            if "Address already in use" in str(exc):
                raise PortTaken(f"postgres: port {self.port} taken") from exc
            raise

    def stop(self, mode: str = "fast") -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([pg_binary("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def kill(self) -> None:
        """Stop at once, as a crash would (no shutdown checkpoint)."""
        self.stop("immediate")

    def destroy(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop("immediate")
        shutil.rmtree(self.folder, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{dbname}"

    def create_database(self, name: str) -> str:
        """A fresh, empty database; returns its DSN."""
        import psycopg

        with psycopg.connect(self.dsn(), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.dsn(name)

    def drop_database(self, name: str) -> None:
        import psycopg

        with (
            contextlib.suppress(psycopg.Error),
            psycopg.connect(self.dsn(), autocommit=True) as conn,
        ):
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
