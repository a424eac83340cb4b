"""The chart's routes (publish/chart.py): pure, no server."""

from __future__ import annotations

import json
import re
from pathlib import Path

from common.intervals import parse_intervals
from publish.chart import LIBRARY, LIBRARY_FILE, ChartPages


def config_of(page: bytes) -> dict[str, object]:
    found = re.search(rb"window.STREAMER_CHART = (.*?);</script>", page)
    assert found is not None
    value: dict[str, object] = json.loads(found.group(1))
    return value


def test_page_names_the_series_and_the_credentials_it_was_asked_with() -> None:
    pages = ChartPages(parse_intervals("500ms,1s,7m,1M"), revisable_ms=2500)
    answer = pages.answer("/chart", ["ETHUSDT", "BTCUSDT"], "user:k</script>ey")
    status, kind, body = answer
    assert (status, kind) == (200, "text/html; charset=utf-8")
    assert b"</script>ey" not in body  # the JSON cannot end the script element
    assert config_of(body) == {
        "symbols": ["BTCUSDT", "ETHUSDT"],
        # 500 ms cannot be drawn on a time axis of whole seconds
        "intervals": [
            {"label": "1s", "ms": 1000},
            {"label": "7m", "ms": 420_000},
            {"label": "1M", "ms": 2_592_000_000},
        ],
        "history": 1000,
        "revisable_ms": 2500,  # STREAMER_KLINE_REVISION_WINDOW_S: how far back a resume asks
        "auth": "user:k</script>ey",
    }
    assert b'<script src="/chart/lib.js"></script>' in body


def test_without_credentials_the_page_holds_none() -> None:
    answer = ChartPages(parse_intervals("1s")).answer("/chart/", ["BTCUSDT"], None)
    assert config_of(answer[2])["auth"] is None


def test_library_served_from_the_npm_install_or_a_clear_404(tmp_path: Path) -> None:
    installed = ChartPages(parse_intervals("1s")).answer("/chart/lib.js", [], None)
    if (LIBRARY / LIBRARY_FILE).is_file():  # make install ran npm
        assert installed[0] == 200
        assert b"createChart" in installed[2]
    pages = ChartPages(parse_intervals("1s"), library_dir=tmp_path)
    missing = pages.answer("/chart/lib.js", [], None)
    assert missing[0] == 404
    assert b"make install" in missing[2]
    script = ChartPages(parse_intervals("1s")).answer("/chart/app.js", [], None)
    assert b"lightweight-charts) is not installed" in script[2]  # what the page says then


def test_other_paths_are_not_found() -> None:
    assert ChartPages(parse_intervals("1s")).answer("/chart/x.js", [], None)[0] == 404
