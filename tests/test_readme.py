"""The README stays true: the settings tables (docs/settings.md) are the ones .env.example gives,
and the set-up commands it names exist."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_settings_tables_match_env_example() -> None:
    spec = importlib.util.spec_from_file_location("settings_doc", ROOT / "scripts/settings_doc.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = module.DOC.read_text()
    block = page[page.index(module.BEGIN) + len(module.BEGIN) : page.index(module.END)]
    expected = module.render((ROOT / ".env.example").read_text())
    assert block.strip() == expected.strip(), "run: python scripts/settings_doc.py --write"


def test_setup_commands_and_make_targets_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text()
    for target in ("install", "test", "run", "demo", "bench", "bench-smoke", "soak", "status",
                   "verify", "lint", "format"):  # fmt: skip
        assert f"make {target}" in readme
        assert f"\n{target}:" in makefile
    assert (ROOT / ".ci/run").read_text().count("make ") == 2
