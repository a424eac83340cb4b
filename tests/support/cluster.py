"""A local three-node Redis Cluster from plain redis-server binaries, on free ports."""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import redis

from tests.support.redisproc import RedisProcess, free_port
from tests.support.waiting import wait_until


def _cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is free and valid too."""
    while True:
        port = free_port()
        if port < 55_000 and _is_free(port + 10_000):
            return port


def _is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


class RedisCluster:
    def __init__(self, workdir: Path, nodes: int = 3) -> None:
        self.nodes = [
            RedisProcess(
                workdir / f"node{i}",
                extra=(
                    "--cluster-enabled", "yes",
                    "--cluster-config-file", "nodes.conf",  # in the node's own workdir
                    "--cluster-node-timeout", "2000",
                ),
                pick_port=_cluster_port,
            )
            for i in range(nodes)
        ]  # fmt: skip

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> RedisCluster:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli")
        if cli is None:
            raise RuntimeError("redis-cli is not on PATH; run `make install`")
        addresses = [f"127.0.0.1:{node.port}" for node in self.nodes]
        subprocess.run(
            [cli, "--cluster", "create", *addresses, "--cluster-replicas", "0", "--cluster-yes"],
            check=True,
            capture_output=True,
        )
        clients = [redis.Redis(port=node.port) for node in self.nodes]
        wait_until(
            lambda: all(c.cluster("info").get("cluster_state") == "ok" for c in clients),
            timeout_s=20,
            what="cluster_state:ok on every node",
        )
        for client in clients:
            client.close()
        return self

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
