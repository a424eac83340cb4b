"""The run configurations parse, and give each process the shards it should own."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from common.settings import parse_shard_ids
from tests.support.procs import ROOT


def _realize(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ingest: int, aggregate: int
) -> dict[str, Any]:
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
        "PIPELINE_VAR": str(home / "var"),
        "PIPELINE_METRICS_PORT": "9100",
        "PIPELINE_SIMULATOR_PORT": "8765",
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
            [*compose, "config"],  # docker-compose.yaml + docker-compose.override.yaml
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        assert base.returncode == 0, base.stderr
        for service in ("redis:", "ingest:", "aggregate:", "publish:"):
            assert service in base.stdout
        assert "STREAMER_SHARD_IDS: ''" in base.stdout or 'STREAMER_SHARD_IDS: ""' in base.stdout
        # the feed reachable from the host; no console consumer logging every candle
        assert re.search(r"published: ['\"]?9500|- ['\"]?9500:9500", base.stdout), base.stdout
        assert "STREAMER_ENABLED_CONSUMERS: websocket" in base.stdout
        assert "max-size: 20m" in base.stdout
        metrics = subprocess.run(
            [*compose, "-f", "docker-compose.yaml", "--profile", "metrics", "config",
             "--services"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert metrics.returncode == 0, metrics.stderr
        assert {"prometheus", "grafana"} <= set(metrics.stdout.split())
        assert base.stdout.count("- metrics") == 2  # both behind the profile, off by default
        with_db = subprocess.run(
            [*compose, "-f", "docker-compose.yaml", "--profile", "postgres", "config"],
            cwd=ROOT, capture_output=True, text=True,
        )  # fmt: skip
        assert with_db.returncode == 0, with_db.stderr
        assert "image: timescale/timescaledb" in with_db.stdout
        assert "- postgres" in with_db.stdout.split("image: timescale/timescaledb")[1]  # profile
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


def test_grafana_dashboard_uses_only_metrics_the_processes_export() -> None:
    """Every series a panel asks for is one the stages expose (names drift otherwise)."""
    import importlib

    from prometheus_client.parser import text_string_to_metric_families

    from common.metrics import REGISTRY

    for module in ("ingest.metrics", "ingest.klines.metrics", "aggregate.shard",
                   "publish.runner", "publish.consumers.websocket"):  # fmt: skip
        importlib.import_module(module)
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {"up"}
    for family in text_string_to_metric_families(REGISTRY.render().decode()):
        exported.update(family.name + s for s in suffixes.get(family.type, ("",)))
    dashboard = json.loads((ROOT / "deploy/grafana/dashboards/streamer.json").read_text())
    wanted = {
        name
        for panel in dashboard["panels"]
        for target in panel["targets"]
        for name in re.findall(r"\b(?:streamer|process)_[a-z_]+\b|\bup\b", target["expr"])
    }
    assert len(wanted) > 15
    assert wanted <= exported, sorted(wanted - exported)
    prometheus = (ROOT / "deploy/prometheus.yml").read_text()
    assert "names: [ingest, aggregate, publish]" in prometheus and "port: 9100" in prometheus
