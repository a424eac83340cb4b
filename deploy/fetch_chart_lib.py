"""Fetch the chart's JavaScript library (lightweight-charts) for the image, without npm.

    python3 deploy/fetch_chart_lib.py publish/static/package-lock.json /chart/node_modules

The Docker build stage runs this when the build context has no `publish/static/node_modules`
(`make install` puts it there with npm). It takes the version and the sha512 `integrity` pinned in
the lock file, downloads the package's tarball from the npm registry (`NPM_CONFIG_REGISTRY`, as npm
reads it; default https://registry.npmjs.org/), refuses it unless the digest matches, and unpacks
the one file the publish server serves (`dist/lightweight-charts.standalone.production.js`) with
the package's `package.json` and licence. Exit 1 with one line on any failure: the image is then
built without it and `/chart` says the library is missing.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import sys
import tarfile
import urllib.request
from pathlib import Path

PACKAGE = "lightweight-charts"
WANTED = ("package.json", "LICENSE", "dist/lightweight-charts.standalone.production.js")
DEFAULT_REGISTRY = "https://registry.npmjs.org/"


class FetchError(Exception):
    pass


def pinned(lock: Path) -> tuple[str, str]:
    """(version, integrity) of the package in an npm lock file (version 2 or 3)."""
    entry = json.loads(lock.read_text())["packages"].get(f"node_modules/{PACKAGE}")
    if not entry or "version" not in entry or "integrity" not in entry:
        raise FetchError(f"{lock}: no pinned {PACKAGE} with an integrity")
    return entry["version"], entry["integrity"]


def verified(data: bytes, integrity: str) -> bytes:
    algorithm, _, digest = integrity.partition("-")
    if algorithm != "sha512":
        raise FetchError(f"integrity {integrity[:20]}…: only sha512 is checked")
    if base64.b64encode(hashlib.sha512(data).digest()).decode() != digest:
        raise FetchError(f"{PACKAGE}: the tarball's sha512 is not the one the lock file pins")
    return data


def fetch(lock: Path, dest: Path, registry: str, timeout_s: float = 60.0) -> Path:
    version, integrity = pinned(lock)
    url = f"{registry.rstrip('/')}/{PACKAGE}/-/{PACKAGE}-{version}.tgz"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as answer:
            data = verified(answer.read(), integrity)
    except OSError as exc:
        raise FetchError(f"{url}: {exc}") from None
    target = dest / PACKAGE
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for name in WANTED:
            try:
                member = tar.extractfile(f"package/{name}")
            except KeyError:
                member = None
            if member is None:
                raise FetchError(f"{url}: no {name} in the package")
            path = target / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(member.read())
    return target


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip().splitlines()[2].strip(), file=sys.stderr)
        return 2
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY
    try:
        target = fetch(Path(argv[0]), Path(argv[1]), registry)
    except FetchError as exc:
        print(f"chart library not fetched: {exc}", file=sys.stderr)
        return 1
    print(f"chart library: {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
