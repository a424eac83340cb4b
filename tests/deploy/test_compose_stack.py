"""docker-compose.yaml for real: the image built, the scaled stack run in containers.

A private Docker engine (tests/support/dockerd.py) builds deploy/Dockerfile offline on a local
Debian base, then runs docker-compose.yaml with deploy/docker-compose.test.yaml on the host's
network: Redis, ingest x2, aggregate x3 and publish x2, with the simulator as the exchange.
Checked: every shard is owned exactly once per stage; after `docker kill` of one aggregate and one
ingest container the survivors take their shards over; at the end every candle equals the
simulator's ledger, none missing or doubled (the fault suite's checks), and the users' WebSocket
and pub/sub feeds carry them. The time of each step is printed. Where no engine can start (not
root, no dockerd) the test skips in one line; `make compose-test` makes that a failure.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.deploy.compose_checks import check_outcome, owners
from tests.ingest.e2e_support import start_simulator
from tests.support.dockerd import (
    Engine,
    EngineUnavailable,
    base_image,
    build_wheels,
    engine_lock,
    preflight,
    run,
    start_engine,
)
from tests.support.pipeline import Pipeline, pubsub_collector, websocket_collector
from tests.support.procs import ROOT
from tests.support.redisproc import free_port
from tests.support.waiting import wait_until

pytestmark = [pytest.mark.compose, pytest.mark.e2e, pytest.mark.redis]

FILES = ("-f", "docker-compose.yaml", "-f", "deploy/docker-compose.test.yaml")
REPLICAS = {"ingest": 2, "aggregate": 3, "publish": 2}
SCALE = tuple(arg for stage, n in REPLICAS.items() for arg in ("--scale", f"{stage}={n}"))
SHARDS, INTERVALS = 6, "1s,5s"  # as deploy/docker-compose.test.yaml sets them
CHANNEL = "pipeline-klines"
TEST_VARIABLES = (
    "TEST_BASE_IMAGE",
    "TEST_REDIS_PORT",
    "TEST_EXCHANGE_WS_URL",
    "TEST_EXCHANGE_REST_URL",
)
LEASED = ("ingest", "aggregate")  # the stages that own shards through leases


def compose_client() -> list[str] | None:
    """`docker-compose` (Debian's package) or the `docker compose` plugin, whichever is here."""
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if shutil.which("docker") and subprocess.run(
        ["docker", "compose", "version"], capture_output=True
    ).returncode == 0:  # fmt: skip
        return ["docker", "compose"]
    return None


def cannot_run(reason: str) -> None:
    message = f"compose test not run: {reason}"
    if os.environ.get("COMPOSE_TEST_REQUIRED") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


@dataclass
class Steps:
    """Times each step and prints it as it ends (the CI log shows where the minutes go)."""

    capsys: pytest.CaptureFixture[str]
    took: list[tuple[str, float]] = field(default_factory=list)

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.monotonic()
        try:
            yield
        finally:
            self.took.append((name, time.monotonic() - start))
            with self.capsys.disabled():
                print(f"\ncompose-test: {name}: {self.took[-1][1]:.1f} s", end="", flush=True)


@dataclass
class Stack:
    engine: Engine
    client: list[str]
    env: dict[str, str]
    pipe: Pipeline

    def compose(self, *args: str, timeout_s: float = 300) -> str:
        return run([*self.client, *FILES, *args], self.env, timeout_s)

    def healthy(self) -> bool:
        ids = [i for service in ("redis", *REPLICAS) for i in self.engine.containers(service)]
        states = self.engine.inspect("{{.State.Health.Status}}", *ids)
        return len(ids) == 1 + sum(REPLICAS.values()) and set(states) == {"healthy"}

    def port_of(self, container: str, setting: str) -> int:
        """A port a replica took for itself (deploy/hostnet.py)."""
        ports = self.engine.docker("exec", container, "cat", "/tmp/hostnet-ports").split()
        return int(dict(line.split("=", 1) for line in ports)[setting])


@contextlib.contextmanager
def env_file_present() -> Iterator[None]:
    """docker-compose.yaml reads .env; without one, .env.example stands in for the run."""
    env_file = ROOT / ".env"
    created = not env_file.exists()
    if created:
        env_file.write_text((ROOT / ".env.example").read_text())
    try:
        yield
    finally:
        if created:
            env_file.unlink()


def fair(pipe: Pipeline, stage: str, replicas: int) -> dict[int, str] | None:
    """Every shard owned, by exactly `replicas` distinct owners each holding its fair share."""
    owned = owners(pipe, stage)
    if len(owned) != pipe.shards or len(set(owned.values())) != replicas:
        return None
    shares = collections.Counter(owned.values()).values()
    return owned if max(shares) - min(shares) <= 1 else None


def settled_owners(pipe: Pipeline, stage: str, replicas: int) -> dict[int, str]:
    owned = wait_until(lambda: fair(pipe, stage, replicas), 120, f"{stage} shards settled")
    assert owned is not None
    return owned


@pytest.mark.timeout(2400)
def test_scaled_stack_in_containers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    client = compose_client()
    if client is None:
        cannot_run("no docker-compose or docker compose client (make install adds docker-compose)")
    assert client is not None
    try:
        preflight()
    except EngineUnavailable as exc:
        cannot_run(str(exc))
    steps = Steps(capsys)
    with engine_lock():
        with steps("start the Docker engine"):
            try:
                engine = start_engine()
            except EngineUnavailable as exc:
                cannot_run(str(exc))
        with env_file_present():
            try:
                run_stack(engine, client, tmp_path, steps)
            finally:
                with steps(f"stop the stack and the engine (logs: {tmp_path / 'compose.log'})"):
                    stop_everything(engine, client, tmp_path)
    with capsys.disabled():
        total = sum(s for _, s in steps.took)
        print(f"\ncompose-test: total {total:.1f} s")


def run_stack(engine: Engine, client: list[str], tmp: Path, steps: Steps) -> None:
    with steps("base image (debootstrap + import when not cached)"):
        base = base_image(engine)
    with steps("wheels (pip wheel -c constraints.txt)"):
        build_wheels()
    with steps("start the simulator"):
        sim = start_simulator(tmp, "--symbols", "20", "--rate", "300")
    redis_port = free_port()
    values = (base, str(redis_port), sim.ws_url, sim.rest_url)
    env = engine.env | dict(zip(TEST_VARIABLES, values, strict=True))
    pipe = Pipeline(tmp, f"redis://127.0.0.1:{redis_port}/0", sim, SHARDS, INTERVALS)
    stack = Stack(engine, client, env, pipe)
    with steps("build the image (compose build)"):
        stack.compose("build", timeout_s=1200)
    with steps("start Redis and the scaled stack (compose up)"):
        stack.compose("up", "-d", *SCALE)
    pubsub = pubsub_collector(pipe.redis_url, CHANNEL)
    with steps("every container healthy"):
        wait_until(stack.healthy, 180, "every container healthy")
    ws = websocket_collector(
        stack.port_of(engine.containers("publish")[0], "STREAMER_WEBSOCKET_PORT")
    )
    with steps("trades flowing, every shard owned once per stage"):
        wait_until(lambda: len(sim.trades()) > 1000, 60, "trades flowing")
        before = {stage: settled_owners(pipe, stage, REPLICAS[stage]) for stage in LEASED}
        redis_client = pipe.client()
        publishers = redis_client.hgetall(pipe.keys.status("publish"))
        redis_client.close()
        assert len(publishers) == REPLICAS["publish"], f"publish replicas: {list(publishers)}"
    victims = {stage: engine.containers(stage)[0] for stage in LEASED}
    with steps("docker kill one aggregate and one ingest; survivors take their shards over"):
        engine.docker("kill", *victims.values())
        print(f" (killed at {time.time() * 1000:.0f} ms)", end="")
        takeover(pipe, before)
        running = engine.inspect("{{.State.Running}}", *victims.values())
        assert running == ["false", "false"], "a killed container was restarted"
    with steps("trading on after the takeover"):
        count = len(sim.trades())
        wait_until(lambda: len(sim.trades()) > count + 2000, 60, "trades after the takeover")
    with steps("exchange stops; candles checked against the ledger"):
        summary = check_outcome(pipe, ws, pubsub)
    with steps.capsys.disabled():
        print("".join(f"\n  {name}: {value}" for name, value in summary.items()), end="")


def takeover(pipe: Pipeline, before: dict[str, dict[int, str]]) -> None:
    """Each stage is down one replica: its shards go to the survivors, which were there before."""
    for stage, owned in before.items():
        after = settled_owners(pipe, stage, REPLICAS[stage] - 1)
        gone = set(owned.values()) - set(after.values())
        assert len(gone) == 1, f"{stage}: owners before {owned}, after {after}"
        assert set(after.values()) <= set(owned.values()), f"{stage}: a new owner {after}"


def stop_everything(engine: Engine, client: list[str], tmp: Path) -> None:
    # The override's required variables must be set for compose to read the files at all.
    env = engine.env | {name: "unused" for name in TEST_VARIABLES}
    cleanups: list[Callable[[], object]] = [
        lambda: (tmp / "compose.log").write_text(
            run([*client, *FILES, "logs", "--no-color"], env, 120)),
        lambda: run([*client, *FILES, "down", "-v", "--remove-orphans", "-t", "10"], env, 300),
        engine.remove_all,
        lambda: engine.docker("image", "prune", "-f"),
    ]  # fmt: skip
    try:
        for cleanup in cleanups:
            with contextlib.suppress(AssertionError, OSError, subprocess.TimeoutExpired):
                cleanup()
    finally:
        engine.stop()
