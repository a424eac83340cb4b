"""Print the settings tables of docs/settings.md from .env.example (the one place settings are
described).

`python scripts/settings_doc.py --write` replaces the block between docs/settings.md's
`<!-- settings:begin -->` and `<!-- settings:end -->` markers; tests check it is current.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "settings.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def render(env_example: str) -> str:
    out: list[str] = []
    comments: list[str] = []
    for line in env_example.splitlines():
        section = re.match(r"^# --- (.+?) -+$", line)
        if section:
            out += ["", f"**{section.group(1)}**", "", "| variable | default | meaning |"]
            out.append("|---|---|---|")
            comments = []
        elif line.startswith("# ") and out:
            comments.append(line[2:].strip())
        elif line.startswith("STREAMER_"):
            name, _, default = line.partition("=")
            meaning = " ".join(comments).replace("|", "\\|")
            shown = f"`{default}`" if default else ""
            out.append(f"| `{name}` | {shown} | {meaning} |")
            comments = []
        elif not line.strip():
            comments = []
    return "\n".join(out).strip() + "\n"


def main() -> int:
    text = render((ROOT / ".env.example").read_text())
    if "--write" not in sys.argv:
        print(text, end="")
        return 0
    content = DOC.read_text()
    start, end = content.index(BEGIN) + len(BEGIN), content.index(END)
    DOC.write_text(content[:start] + "\n" + text + content[end:])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
