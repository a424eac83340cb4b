"""`python -m bench [--smoke] [NAME...]`: run the benchmarks and print one markdown table.

`--smoke` runs each briefly to prove it executes (CI); figures from a smoke run mean nothing.
A module may also keep a list of text lines in `NOTES` (e.g. a profile); they follow the table.
"""

from __future__ import annotations

import argparse
import importlib
import platform
import sys
import time

from bench.report import Row, table
from common.cli import add_version

MODULES = [
    "simulator", "ingest", "aggregate", "core", "publish", "postgres", "pipeline", "history",
    "boundary",
]  # fmt: skip
# Run only when named (`python -m bench replay`): a generated 2,000,000-trade day takes minutes.
ON_REQUEST = ["replay"]


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="The benchmarks (docs/benchmarks.md), one markdown table on stdout.",
    )
    add_version(parser)
    parser.add_argument("--smoke", action="store_true", help="short runs that only prove it works")
    parser.add_argument(
        "names", nargs="*", default=MODULES, help=f"any of {', '.join(MODULES + ON_REQUEST)}"
    )
    args = parser.parse_args()
    rows: list[Row] = []
    notes: list[str] = []
    for name in args.names:
        try:
            module = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"bench.{name}":
                print(f"bench.{name}: not present, skipped", file=sys.stderr)
                continue
            raise
        print(f"running bench.{name} ...", file=sys.stderr, flush=True)
        rows.extend(module.run(args.smoke))
        notes.extend(getattr(module, "NOTES", []))
    stamp = time.strftime("%Y-%m-%d", time.gmtime())
    cpus = _cpu_model()
    print(f"\n{stamp}, {cpus}, Python {platform.python_version()}\n")
    print(table(rows))
    if notes:
        print("\n" + "\n".join(notes))
    return 0


def _cpu_model() -> str:
    import os

    try:
        with open("/proc/cpuinfo") as handle:
            model = next(
                (line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")),
                platform.processor(),
            )
    except OSError:
        model = platform.processor()
    return f"{os.cpu_count()} × {model}"


if __name__ == "__main__":
    raise SystemExit(main())
