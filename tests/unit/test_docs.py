"""README.md and docs/ stay true about what a test can check.

* The README is short (under 15 KB) and links every page of docs/; every relative link and anchor
  in the README and docs/ resolves, and every repo path they name in backticks exists.
* docs/configuration.md's settings table is what ``scripts.settings_table`` generates from
  ``shared.settings.SPECS``; docs/deploying.md's tables are checked in tests/infra/test_infra_readme.py.
* The README names every function the app registers (function_app.py's app, indexed), shows the two
  commands as commands, lists every user-facing make target, and its layout table links every
  top-level folder and every package of shared/.
* No page hard-codes a test count (it goes stale with the next test).
"""

from __future__ import annotations

import re
from pathlib import Path

from scripts.settings_table import settings_table, table_span
from tests.support import ROOT

README_PATH = ROOT / "README.md"
README = README_PATH.read_text(encoding="utf-8")
PAGES = [README_PATH, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15 * 1024
# Make targets that are steps of others, not something a reader runs.
INTERNAL_TARGETS = {"install", "browser", "lock", "clean"}
TOP_LEVEL_DIRS = ("bench", "devhost", "docs", "functions", "infra", "localworkspace", "scripts", "shared", "tests")


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"(?ms)^```.*?^```", "", page.read_text(encoding="utf-8"))
    return {slug(m.group(1)) for m in re.finditer(r"(?m)^#{1,6} (.+)$", text)}


def links(page: Path) -> list[tuple[int, str]]:
    found = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        found += [(number, target) for target in re.findall(r"\]\(([^)\s]+)\)", line)]
    return found


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    broken = []
    for number, target in links(page):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        where = f"{page.relative_to(root)}:{number}: {target}"
        if not resolved.exists():
            broken.append(f"{where} (no such file)")
        elif not resolved.is_relative_to(root):
            broken.append(f"{where} (outside the clone)")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{where} (no such heading)")
    return broken


def missing_paths(page: Path, root: Path = ROOT) -> list[str]:
    """Repo paths named in backticks (`shared/x.py`, `tests/unit/...`) that do not exist."""
    missing = []
    for number, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
        for token in re.findall(r"`([^`\s]+)`", line):
            token = token.rstrip(".,:;").split("::")[0]
            if token.split("/")[0] in TOP_LEVEL_DIRS and "/" in token and not re.search(r"[<>*{}$=?]", token) \
                    and not (ROOT / token).exists():
                missing.append(f"{page.relative_to(root)}:{number}: {token}")
    return missing


def registered_functions() -> set[str]:
    """Every function the app registers: function_app.py's app, indexed the way the host indexes it."""
    import function_app
    from devhost.app_index import functions_of

    return {f.get_function_name() for f in functions_of(function_app.app)}


def unnamed_functions(text: str, names: set[str]) -> list[str]:
    """The names ``text`` does not write as code (in backticks)."""
    return sorted(n for n in names if f"`{n}`" not in text)


def user_targets(makefile: str) -> set[str]:
    phony = re.search(r"(?m)^\.PHONY:(.*)$", makefile)
    assert phony, "the Makefile has no .PHONY line"
    return set(phony.group(1).split()) - INTERNAL_TARGETS


def command_lines(text: str, section: str) -> list[str]:
    body = text.split(f"## {section}", 1)[1].split("\n## ", 1)[0]
    block = body.split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_the_readme_is_short() -> None:
    size = len(README.encode("utf-8"))
    assert size < README_MAX_BYTES, f"README.md is {size} bytes (at most {README_MAX_BYTES}): move detail to docs/"


def test_the_readme_links_every_page_of_docs() -> None:
    linked = {(README_PATH.parent / target.partition("#")[0]).resolve() for _, target in links(README_PATH)}
    unlinked = [str(p.relative_to(ROOT)) for p in PAGES[1:] if p.resolve() not in linked]
    assert unlinked == [], f"docs pages the README does not link: {unlinked}"


def test_every_link_and_anchor_resolves() -> None:
    broken = [b for page in PAGES for b in broken_links(page)]
    assert broken == [], "broken links:\n" + "\n".join(broken)


def test_every_repo_path_named_exists() -> None:
    missing = [m for page in PAGES for m in missing_paths(page)]
    assert missing == [], "paths named in the docs that do not exist:\n" + "\n".join(missing)


def test_the_settings_table_is_generated_from_the_declaration() -> None:
    lines = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines()
    start, end = table_span(lines)
    assert lines[start:end] == settings_table(), \
        "docs/configuration.md's settings table is out of date: regenerate it with `.venv/bin/python -m scripts.settings_table`"


def test_the_two_commands_are_shown_as_commands() -> None:
    assert command_lines(README, "The two commands") == ["make demo", "make test"]


def test_every_registered_function_is_named() -> None:
    missing = unnamed_functions(README, registered_functions())
    assert missing == [], f"functions the app registers that the README does not name: {missing}"


def test_every_make_target_is_in_the_table() -> None:
    targets = user_targets((ROOT / "Makefile").read_text(encoding="utf-8"))
    table = README.split("## Make targets", 1)[1].split("\n## ", 1)[0]
    listed = set(re.findall(r"(?m)^\| `make ([\w-]+)", table))
    assert listed == targets, f"missing from the table: {sorted(targets - listed)}; not targets: {sorted(listed - targets)}"


def test_the_layout_links_every_folder_and_package() -> None:
    layout = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    linked = set(re.findall(r"\]\(([^)#]+)\)", layout))
    packages = sorted(f"shared/{p.name}" for p in (ROOT / "shared").iterdir() if (p / "__init__.py").is_file())
    missing = [d for d in (*TOP_LEVEL_DIRS, *packages) if d not in linked]
    assert missing == [], f"the README's layout does not link: {missing}"


def test_no_page_hard_codes_a_test_count() -> None:
    counts = [f"{p.relative_to(ROOT)}: {m.group(0)}" for p in PAGES
              for m in re.finditer(r"\b\d+ (?:tests|test cases)\b", p.read_text(encoding="utf-8"))]
    assert counts == [], f"test counts written into the docs (they go stale): {counts}"


def test_the_checks_catch_what_they_are_for(tmp_path: Path) -> None:
    assert command_lines("## The two commands\n```bash\nmake demo\nmake test-slow  # x\n```\n", "The two commands") \
        == ["make demo", "make test-slow"]
    assert slug("The demo (`make demo`)") == "the-demo-make-demo"
    page = tmp_path / "page.md"
    page.write_text("# Title\n[a](missing.md) [b](#title) [c](#nope) [d](https://x.org)\n`shared/nope.py`\n")
    assert [b.rsplit(": ", 1)[1] for b in broken_links(page, tmp_path)] == ["missing.md (no such file)", "#nope (no such heading)"]
    assert user_targets(".PHONY: install demo test\n") == {"demo", "test"}
    assert missing_paths_in("`shared/nope.py` `shared/settings.py` `a/b.py`", tmp_path) == ["page.md:1: shared/nope.py"]
    assert unnamed_functions("`score` `list_models` scoreboard `dashboard_report`", {"score", "list_models", "dashboard"}) \
        == ["dashboard"]


def missing_paths_in(text: str, tmp_path: Path) -> list[str]:
    page = tmp_path / "page.md"
    page.write_text(text)
    return missing_paths(page, tmp_path)

