"""The project stands alone and its layout says what it does.

* No tracked file reads or names a path outside the clone (a user's fresh clone has no
  reference folder beside it and no development machine's paths).
* ``shared/`` holds capability packages; the only flat modules are the cross-cutting ones.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tests.support import ROOT

# A path of a development machine, or the reference folder that sits beside the checkout there.
# Written in pieces so that this file does not name those paths itself (it is checked like the rest).
_WORK, _ROOT, _SIBLING = "/" + "work/", "/" + "root/", re.escape("..") + "/" + "shared"
OUTSIDE = re.compile(rf"(?<![\w.])(?:{_WORK}|{_ROOT}|/home/\w+/|{_SIBLING}\b)")
TEXT_SUFFIXES = {".py", ".md", ".toml", ".json", ".yaml", ".yml", ".txt", ".cfg", ".ini", ".sh", ".bicep", ".bicepparam", ""}


def _project_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    return [ROOT / line for line in out.splitlines() if line and (ROOT / line).is_file()]


def test_no_file_names_a_path_outside_the_clone() -> None:
    offenders = []
    for path in _project_files():
        if path.suffix not in TEXT_SUFFIXES or path.name in {"package-lock.json", "requirements.lock"}:
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert offenders == [], "files that name a path outside the clone:\n" + "\n".join(offenders)


def test_the_outside_path_check_catches_what_it_is_for() -> None:
    for line in (f'FIXTURES = Path("{_WORK}shared/fixtures")', 'p = ROOT / "..' + '/shared/fixtures"', f"cat {_ROOT}x"):
        assert OUTSIDE.search(line), line
    for line in ('"shared/fixtures"', "from shared.ledger import Ledger", "tests/fixtures/azureml"):
        assert not OUTSIDE.search(line), line


def test_tests_read_their_fixtures_inside_the_repo(fixtures_dir: Path) -> None:
    assert fixtures_dir.resolve().is_relative_to(ROOT)
    assert (fixtures_dir / "azureml" / "phi-3-mini-4k-instruct.spec.yaml").is_file()
    assert (fixtures_dir / "eventgrid" / "run_completed.eventgrid.json").is_file()


# Cross-cutting modules allowed flat in shared/: everything else lives in a package named for its capability.
FLAT_MODULES = {"__init__.py", "settings.py", "storage.py", "context.py"}


def test_shared_is_made_of_capability_packages() -> None:
    flat = {p.name for p in (ROOT / "shared").glob("*.py")}
    assert flat <= FLAT_MODULES, f"flat modules in shared/ (move them into a capability package): {sorted(flat - FLAT_MODULES)}"
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").is_file()}
    for expected in ("ledger", "datasets", "deployment", "endpoints", "scoring", "janitor", "cli", "backends", "training"):
        assert expected in packages
    for package in packages:
        doc = (ROOT / "shared" / package / "__init__.py").read_text()
        assert doc.lstrip().startswith('"""'), f"shared/{package}/__init__.py must say what the package does"
