"""Benchmarks: each module's `run(smoke)` returns rows; `python -m bench` prints one table."""
