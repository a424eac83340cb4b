"""Gap-entry coverage, as the tests check it."""

from __future__ import annotations


def covered(from_ms: int, to_ms: int, windows: list[tuple[int, int, str]]) -> bool:
    """Whether the union of the gap windows covers [from_ms, to_ms]."""
    reach = from_ms
    for start, end, _ in sorted(windows):
        if start > reach:
            break
        reach = max(reach, end)
    return reach >= to_ms
