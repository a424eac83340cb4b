"""A private Docker engine for the compose test, and what it needs, made without pulling anything.

dockerd runs as root on its own socket, data root and exec root under var/dockerd/ (never the
machine's own /var/lib/docker), with `--iptables=false --bridge=none`: containers use the host's
network. The data root stays between runs as the cache of the images; the rest is removed when
the engine stops. No image can be pulled here, so the base is made from Debian's packages with
debootstrap (its tar is cached in var/compose/), and the wheels are built on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tests.support.procs import ROOT
from tests.support.waiting import wait_until

VAR = ROOT / "var"
ENGINE_DIR = VAR / "dockerd"
CACHE_DIR = VAR / "compose"
WHEELHOUSE = "var/wheels"
# python3 for the stages; redis-server so that the compose file's Redis runs from the same base;
# passwd for the image's useradd.
BASE_PACKAGES = ("python3", "python3-venv", "ca-certificates", "passwd", "redis-server")
SUITE = "bookworm"
# redis-py needs async-timeout on Pythons before 3.11.3 (bookworm's is 3.11.2); pip on a newer
# host Python does not resolve it, so the wheelhouse names it.
EXTRA_WHEELS = ("async-timeout",)


class EngineUnavailable(Exception):
    """This machine cannot run a Docker engine (the test skips, saying why)."""


@dataclass
class Engine:
    popen: subprocess.Popen[bytes]
    socket: Path
    log: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": f"unix://{self.socket}"}

    def docker(self, *args: str, timeout_s: float = 120) -> str:
        """Run a docker command against this engine; its stdout, or an error with its output."""
        return run(["docker", *args], self.env, timeout_s)

    def containers(self, service: str) -> list[str]:
        """Ids of a compose service's containers, running or not, oldest first."""
        out = self.docker(
            "ps", "-a", "--filter", f"label=com.docker.compose.service={service}",
            "--format", "{{.CreatedAt}}\t{{.ID}}",
        )  # fmt: skip
        return [line.split("\t")[1] for line in sorted(out.splitlines())]

    def inspect(self, template: str, *ids: str) -> list[str]:
        return self.docker("inspect", "-f", template, *ids).splitlines()

    def remove_all(self) -> None:
        """Containers left by an earlier run that died (a restart policy revives them)."""
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", "-v", *ids)
        self.docker("volume", "prune", "-f")

    def stop(self) -> None:
        stop_daemon(self.popen.pid)
        self.popen.wait(5)
        remove_tree(ENGINE_DIR / "exec")  # dockerd leaves its netns/default mounted there
        for name in ("docker.sock", "dockerd.pid"):
            (ENGINE_DIR / name).unlink(missing_ok=True)


def run(args: list[str], env: dict[str, str], timeout_s: float, cwd: Path = ROOT) -> str:
    done = subprocess.run(args, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}{done.stderr}"
        )
    return done.stdout


def missing_tools() -> list[str]:
    return [tool for tool in ("dockerd", "docker", "debootstrap") if shutil.which(tool) is None]


@contextlib.contextmanager
def engine_lock() -> Iterator[None]:
    """One engine per worktree: a second run waits for the first (it shares the data root)."""
    ENGINE_DIR.mkdir(parents=True, exist_ok=True)
    with (ENGINE_DIR / "lock").open("w") as lock:
        wait_until(lambda: _try_lock(lock.fileno()), 1800, "the compose test of another run")
        yield


def _try_lock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        time.sleep(1)  # poll pacing: the other run takes minutes
        return False
    return True


def preflight() -> None:
    """EngineUnavailable when this machine cannot run the engine at all."""
    if os.geteuid() != 0:
        raise EngineUnavailable(f"dockerd needs root (running as uid {os.geteuid()})")
    missing = missing_tools()
    if missing:
        raise EngineUnavailable(f"{', '.join(missing)} not installed (make install adds them)")


def start_engine() -> Engine:
    """dockerd on var/dockerd/docker.sock; EngineUnavailable when it cannot start here."""
    preflight()
    _stop_stale()
    sock, log = ENGINE_DIR / "docker.sock", ENGINE_DIR / "dockerd.log"
    args = [
        "dockerd", "--iptables=false", "--bridge=none",
        "--data-root", str(ENGINE_DIR / "data"), "--exec-root", str(ENGINE_DIR / "exec"),
        "--pidfile", str(ENGINE_DIR / "dockerd.pid"), "--host", f"unix://{sock}",
    ]  # fmt: skip
    with log.open("wb") as out:
        popen = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    engine = Engine(popen, sock, log)

    def answering() -> bool:
        if popen.poll() is not None:
            lines = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise EngineUnavailable(f"dockerd exited {popen.returncode}: {lines[-1]}")
        return subprocess.run(["docker", "version"], env=engine.env, capture_output=True,
                              timeout=30).returncode == 0  # fmt: skip

    try:
        wait_until(answering, 60, "dockerd to answer")
    except AssertionError as exc:
        engine.stop()
        raise EngineUnavailable(f"dockerd did not answer within 60 s (see {log})") from exc
    engine.remove_all()
    return engine


def stop_daemon(pid: int) -> None:
    """SIGTERM (dockerd stops its containers and its containerd), SIGKILL after 60 s."""
    containerd_pid = _read_pid(ENGINE_DIR / "exec" / "containerd" / "containerd.pid")
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    try:
        wait_until(lambda: not _alive(pid), 60, f"dockerd {pid} to stop")
    except AssertionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    if containerd_pid and _alive(containerd_pid) and str(ENGINE_DIR) in _cmdline(containerd_pid):
        os.kill(containerd_pid, signal.SIGKILL)


def _stop_stale() -> None:
    """A dockerd of an earlier run of this test in this worktree that was killed before its end."""
    pid = _read_pid(ENGINE_DIR / "dockerd.pid")
    if pid and _alive(pid) and str(ENGINE_DIR) in _cmdline(pid):
        stop_daemon(pid)


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return status.rsplit(")", 1)[1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def base_image(engine: Engine) -> str:
    """A Debian base with Python 3.11 (and redis-server), imported once and kept."""
    key = hashlib.sha256(f"{SUITE} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:10]
    tag = f"bybit-klines-base:{SUITE}-{key}"
    if engine.docker("images", "-q", tag).strip():
        return tag
    tar = CACHE_DIR / f"base-{SUITE}-{key}.tar"
    if not tar.exists():
        _debootstrap(tar)
    engine.docker("import", str(tar), tag, timeout_s=600)
    return tag


def _debootstrap(tar: Path) -> None:
    rootfs = CACHE_DIR / "rootfs"
    remove_tree(rootfs)
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    try:
        run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}", SUITE,
             str(rootfs)], dict(os.environ), timeout_s=1200)  # fmt: skip
        for junk in ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/man"):
            shutil.rmtree(rootfs / junk, ignore_errors=True)
        partial = tar.with_suffix(".partial")
        run(["tar", "-C", str(rootfs), "-cf", str(partial), "."], dict(os.environ), 600)
        partial.rename(tar)
    finally:
        remove_tree(rootfs)


def remove_tree(path: Path) -> None:
    """Unmount what is left mounted below `path` (dockerd's netns, a failed debootstrap's proc),
    then delete it."""
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(f"{path}/")), reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True)
    shutil.rmtree(path, ignore_errors=True)


def build_wheels() -> str:
    """Every wheel the image installs, ours (with its C helper) included, into var/wheels."""
    run([sys.executable, "-m", "pip", "wheel", "-q", "-c", "constraints.txt", "--wheel-dir",
         WHEELHOUSE, ".[postgres]", *EXTRA_WHEELS], dict(os.environ), timeout_s=600)  # fmt: skip
    return WHEELHOUSE
