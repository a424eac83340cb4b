"""deploy/fetch_chart_lib.py, the image's way to the chart library: from a registry over HTTP,
only with the sha512 the lock file pins."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.procs import ROOT

FILES = {
    "package/package.json": b'{"name": "lightweight-charts", "version": "9.9.9"}',
    "package/LICENSE": b"Apache-2.0 (a stand-in)",
    "package/dist/lightweight-charts.standalone.production.js": b"window.LightweightCharts={};",
    "package/dist/lightweight-charts.development.mjs": b"not wanted",
}


def _tarball() -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in FILES.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def registry() -> Iterator[tuple[str, bytes]]:
    """A registry serving one tarball at npm's path for it; yields (url, tarball)."""
    tarball = _tarball()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # the stdlib's name
            if self.path == "/lightweight-charts/-/lightweight-charts-9.9.9.tgz":
                self.send_response(200)
                self.send_header("Content-Length", str(len(tarball)))
                self.end_headers()
                self.wfile.write(tarball)
            else:
                self.send_error(404)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", tarball
    finally:
        server.shutdown()
        server.server_close()


def _lock(path: Path, integrity: str) -> Path:
    path.write_text(json.dumps({"lockfileVersion": 3, "packages": {
        "node_modules/lightweight-charts": {"version": "9.9.9", "integrity": integrity},
    }}))  # fmt: skip
    return path


def _fetch(lock: Path, dest: Path, registry_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy" / "fetch_chart_lib.py"), str(lock), str(dest)],
        env={"PATH": "/usr/bin:/bin", "NPM_CONFIG_REGISTRY": registry_url},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip


def test_the_pinned_tarball_is_unpacked_where_the_server_looks(
    tmp_path: Path, registry: tuple[str, bytes]
) -> None:
    url, tarball = registry
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tarball).digest()).decode()
    done = _fetch(_lock(tmp_path / "lock.json", integrity), tmp_path / "node_modules", url)
    assert done.returncode == 0, done.stderr
    package = tmp_path / "node_modules" / "lightweight-charts"
    for name, data in FILES.items():
        path = package / name.removeprefix("package/")
        if "development" in name:
            assert not path.exists()
        else:
            assert path.read_bytes() == data


def test_a_tarball_other_than_the_pinned_one_is_refused(
    tmp_path: Path, registry: tuple[str, bytes]
) -> None:
    url, tarball = registry
    wrong = "sha512-" + base64.b64encode(hashlib.sha512(tarball + b"x").digest()).decode()
    done = _fetch(_lock(tmp_path / "lock.json", wrong), tmp_path / "node_modules", url)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        "chart library not fetched: lightweight-charts: the tarball's sha512 is not the one the "
        "lock file pins"
    ]
    assert not (tmp_path / "node_modules").exists()


def test_no_registry_is_one_line(tmp_path: Path) -> None:
    lock = _lock(tmp_path / "lock.json", "sha512-AAAA")
    done = _fetch(lock, tmp_path / "node_modules", "http://127.0.0.1:9/")
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith(
        "chart library not fetched: http://127.0.0.1:9/lightweight-charts"
    )
