"""Every relative link in README.md and docs/*.md leads somewhere: to a file that exists and, with
`#anchor`, to a heading of that file (GitHub's anchors: lowercase, spaces to '-', punctuation
other than '-' and '_' dropped)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    found, fenced = set(), False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"#{1,6} (.+)$", line)
        if heading:
            found.add(anchor(heading.group(1)))
    return found


def test_anchor_follows_githubs_rule() -> None:
    assert anchor("History over HTTP: `/v5/market/kline` and `/candles`") == (
        "history-over-http-v5marketkline-and-candles"
    )
    assert anchor("Aggregate: trades → candles") == "aggregate-trades--candles"
    assert anchor("History backfill from Bybit (`STREAMER_HISTORY_BACKFILL`)") == (
        "history-backfill-from-bybit-streamer_history_backfill"
    )


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_point_at_a_file_and_heading(page: Path) -> None:
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue  # http://, https://, mailto:
        path, _, fragment = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT)}")
        elif fragment and fragment not in anchors(file):
            broken.append(f"{target}: no heading #{fragment} in {file.relative_to(ROOT)}")
    assert not broken, "\n".join(broken)
