"""docs/configuration.md's settings table, generated from the settings declaration (``shared.settings.SPECS``,
read off the fields of ``Settings``).

``python -m scripts.settings_table`` rewrites the table in place; tests/unit/test_docs.py fails when
the page's table is not what this prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from shared.settings import SPECS

PAGE = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
HEADER = ["| Setting | Default | What it does |", "|---|---|---|"]


def settings_table() -> list[str]:
    return HEADER + [f"| `{spec.env}` | {spec.shown_default()} | {spec.doc} |" for spec in SPECS.values()]


def table_span(lines: list[str]) -> tuple[int, int]:
    """Where the settings table stands in the page: [start, end) line indexes."""
    start = lines.index(HEADER[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return start, end


def rewrite(page: Path = PAGE) -> None:
    lines = page.read_text(encoding="utf-8").splitlines()
    start, end = table_span(lines)
    page.write_text("\n".join(lines[:start] + settings_table() + lines[end:]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    rewrite(Path(sys.argv[1]) if len(sys.argv) > 1 else PAGE)
