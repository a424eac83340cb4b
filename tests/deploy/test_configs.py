"""The run configurations parse, and give each process the shards it should own."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from common.settings import parse_shard_ids
from tests.support.procs import ROOT


def _realize(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest: int, aggregate: int) -> dict:
    from supervisor.options import ServerOptions

    home = tmp_path / "home"
    (home / "var" / "log").mkdir(parents=True)
    env = {
        "PIPELINE_HOME": str(home),
        "PIPELINE_PRIVATE_REDIS": "false",
        "PIPELINE_REDIS_PORT": "6390",
        "PIPELINE_INGEST_PROCS": str(ingest),
        "PIPELINE_AGGREGATE_PROCS": str(aggregate),
        "PIPELINE_DEMO": "true",
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    options = ServerOptions()
    options.realize(args=["-c", str(ROOT / "supervisord.conf")])
    return {
        proc.name: proc for group in options.process_group_configs for proc in group.process_configs
    }


def test_supervisord_numprocs_split_the_shards(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    procs = _realize(tmp_path, monkeypatch, ingest=2, aggregate=3)
    assert sorted(procs) == [
        "aggregate-0", "aggregate-1", "aggregate-2", "ingest-0", "ingest-1",
        "publish", "redis", "simulator",
    ]  # fmt: skip
    assert procs["redis"].autostart is False and procs["simulator"].autostart is True
    shards = 8
    for stage, count in (("ingest", 2), ("aggregate", 3)):
        owned = [
            parse_shard_ids(procs[f"{stage}-{i}"].environment["STREAMER_SHARD_IDS"], shards)
            for i in range(count)
        ]
        flat = sorted(k for ids in owned for k in ids or ())
        assert flat == list(range(shards)), f"{stage}: every shard exactly once"
    # stopwaitsecs above the default drain timeout (10 s), so supervisord never cuts a drain short
    assert all(p.stopwaitsecs > 10 for name, p in procs.items() if name != "simulator")


def _compose() -> list[str] | None:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


@pytest.mark.skipif(_compose() is None, reason="no docker compose client on this machine")
def test_compose_files_are_valid(tmp_path: Path) -> None:
    compose = _compose()
    assert compose is not None
    env_file = ROOT / ".env"
    created = not env_file.exists()
    if created:
        env_file.write_text((ROOT / ".env.example").read_text())
    try:
        base = subprocess.run(
            [*compose, "-f", "docker-compose.yaml", "config"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert base.returncode == 0, base.stderr
        for service in ("redis:", "ingest:", "aggregate:", "publish:"):
            assert service in base.stdout
        assert "STREAMER_SHARD_IDS: ''" in base.stdout or 'STREAMER_SHARD_IDS: ""' in base.stdout
        traefik = subprocess.run(
            [*compose, "-f", "docker-compose.yaml", "-f", "deploy/docker-compose.traefik.yaml",
             "config"],
            cwd=ROOT, capture_output=True, text=True, env={"STREAMER_HOST": "klines.example.com",
                                                          "PATH": "/usr/bin:/bin:/usr/local/bin"},
        )  # fmt: skip
        assert traefik.returncode == 0, traefik.stderr
        assert "Host(`klines.example.com`)" in traefik.stdout
    finally:
        if created:
            env_file.unlink()
