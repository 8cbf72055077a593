"""The tests live in tier folders, each folder's conftest marks its tests, and the Makefile's targets
select whole tiers by those markers.

* every test module is in a tier folder (``tests/<tier>/test_*.py``), none flat in ``tests/``;
* every tier folder has a conftest that applies ``TIER_MARKERS[tier]`` (and nothing else does);
* a module never carries a tier marker of another tier (a misplaced test would run in the wrong target);
* (no test module imports another test module: tests/unit/test_layout.py, with the import graph);
* the tiers each Makefile target selects are the documented ones (``make test``: unit, storage, infra, e2e; the longer integration scenarios in ``make test-integration``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
from _pytest.mark.expression import Expression

from tests.support import ROOT, TIER_MARKERS

TESTS = ROOT / "tests"
TIER_NAMES = {marker for markers in TIER_MARKERS.values() for marker in markers}

# What each target runs, by tier (docs/tests.md and the CI entry point rely on it).
EXPECTED_TIERS = {
    "test": {"unit", "storage", "infra", "e2e"},
    "test-fast": {"unit", "storage", "infra"},
    "test-integration": {"integration"},
    "test-faults": {"faults"},
    "test-slow": {"slow"},
    "test-rollout": {"rollout"},
    "test-browser": {"browser"},
    "test-all": set(TIER_MARKERS),
}


def all_test_modules() -> list[Path]:
    return sorted(TESTS.rglob("test_*.py"))


def makefile_selections(makefile: str) -> dict[str, str | None]:
    """target -> its pytest ``-m`` expression (None: no -m, every test)."""
    found: dict[str, str | None] = {}
    for target, body in re.findall(r"^([\w-]+):[^\n]*\n((?:\t[^\n]*\n)+)", makefile, flags=re.M):
        if "$(call PYTEST" not in body:
            continue
        m = re.search(r'-m\s+"([^"]+)"|-m\s+(\w+)', body)
        found[target] = (m.group(1) or m.group(2)) if m else None
    return found


def tiers_selected(expression: str | None) -> set[str]:
    if expression is None:
        return set(TIER_MARKERS)
    compiled = Expression.compile(expression)
    return {tier for tier, markers in TIER_MARKERS.items() if compiled.evaluate(lambda name, m=markers: name in m)}


def test_every_test_module_is_in_a_tier_folder() -> None:
    misplaced = [str(p.relative_to(ROOT)) for p in all_test_modules() if p.parent.parent != TESTS or p.parent.name not in TIER_MARKERS]
    assert misplaced == [], f"test modules outside a tier folder tests/<{'|'.join(TIER_MARKERS)}>/: {misplaced}"


def test_every_tier_folder_marks_its_tests_in_its_conftest() -> None:
    for tier in TIER_MARKERS:
        conftest = TESTS / tier / "conftest.py"
        assert conftest.is_file(), f"{tier}: no conftest.py"
        assert "pytest_itemcollected = mark_tier(__file__)" in conftest.read_text(), f"{conftest}: does not apply its tier's markers"
        assert (TESTS / tier / "__init__.py").is_file(), f"{tier}: no __init__.py (module names would clash across tiers)"


def test_no_module_carries_another_tiers_marker() -> None:
    wrong = []
    for path in all_test_modules():
        if path.parent.name not in TIER_MARKERS:
            continue
        own = set(TIER_MARKERS[path.parent.name])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr == "mark" \
                    and node.attr in TIER_NAMES and node.attr not in own:
                wrong.append(f"{path.relative_to(ROOT)}:{node.lineno}: pytest.mark.{node.attr} (its folder is {path.parent.name})")
    assert wrong == [], "tests marked for another tier than their folder's (move them):\n" + "\n".join(wrong)


def test_each_make_target_selects_its_tiers() -> None:
    selections = makefile_selections((ROOT / "Makefile").read_text(encoding="utf-8"))
    assert set(selections) == set(EXPECTED_TIERS), selections
    got = {target: tiers_selected(expression) for target, expression in selections.items()}
    assert got == EXPECTED_TIERS


def test_the_tests_running_now_carry_their_folders_markers(request: pytest.FixtureRequest) -> None:
    unmarked = []
    for item in request.session.items:
        tier = item.path.parent.name
        if item.path.parent.parent == TESTS and tier in TIER_MARKERS:
            missing = set(TIER_MARKERS[tier]) - {m.name for m in item.iter_markers()}
            if missing:
                unmarked.append(f"{item.nodeid}: missing {sorted(missing)}")
    assert unmarked == []


def test_the_checks_catch_what_they_are_for() -> None:
    assert tiers_selected("not slow and not browser and not faults and not rollout and not integration") == EXPECTED_TIERS["test"]
    assert tiers_selected("not slow and not browser and not rollout and not integration") != EXPECTED_TIERS["test"]  # faults would slip in
    assert tiers_selected("not slow and not browser and not faults and not rollout") != EXPECTED_TIERS["test"]  # integration would
    assert makefile_selections('test: install\n\t$(call PYTEST,-m "not slow")\nup:\n\tx\n') == {"test": "not slow"}
    assert makefile_selections("test-all: install\n\t$(call PYTEST,)\n") == {"test-all": None}
