"""The project stands alone and its layout says what it does.

* No tracked file reads or names a path outside the clone (a user's fresh clone has no
  reference folder beside it and no development machine's paths).
* ``shared/`` holds capability packages; the only flat modules are the cross-cutting ones.
* No import cycles, no over-long modules in ``shared/``; no test module imports another one.
"""

from __future__ import annotations

import ast
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
FLAT_MODULES = {"__init__.py", "settings.py", "settings_checks.py", "storage.py", "context.py", "clock.py"}


def test_shared_is_made_of_capability_packages() -> None:
    flat = {p.name for p in (ROOT / "shared").glob("*.py")}
    assert flat <= FLAT_MODULES, f"flat modules in shared/ (move them into a capability package): {sorted(flat - FLAT_MODULES)}"
    packages = {p.name for p in (ROOT / "shared").iterdir() if (p / "__init__.py").is_file()}
    for expected in ("ledger", "datasets", "deployment", "reconcile", "endpoints", "scoring", "janitor", "cli", "backends", "training"):
        assert expected in packages
    for package in packages:
        doc = (ROOT / "shared" / package / "__init__.py").read_text()
        assert doc.lstrip().startswith('"""'), f"shared/{package}/__init__.py must say what the package does"


# --- the import graph: no cycles, imports inside functions included -----------------------------

PROJECT_PACKAGES = ("shared", "functions", "devhost", "localworkspace", "scripts", "bench")
# Cycles not cut yet (none since issue #27 item 4): each one listed here must still exist (a cut
# one fails until it is struck off), and any other cycle fails.
KNOWN_CYCLES: set[frozenset[str]] = set()
MAX_MODULE_LINES = 500
# Modules of shared/ over MAX_MODULE_LINES still to be split (none since issue #27 item 5); no other may grow past it.
LONG_MODULES: set[str] = set()


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    found = {"function_app": root / "function_app.py"} if (root / "function_app.py").is_file() else {}
    for top in PROJECT_PACKAGES:
        for path in (root / top).rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the project modules it imports, wherever the import stands (module level or in a
    function); only ``if TYPE_CHECKING:`` blocks, which never run, are left out."""
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        never_run = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
                     for stmt in node.body for n in ast.walk(stmt)}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if id(node) in never_run:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1] + ([node.module] if node.module else []))
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            for succ in successors:
                if succ not in index:
                    index[succ] = low[succ] = len(index)
                    stack.append(succ)
                    on_stack.add(succ)
                    work.append((succ, iter(sorted(graph[succ]))))
                    break
                if succ in on_stack:
                    low[node] = min(low[node], index[succ])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = set()
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.add(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(frozenset(component))
    return found


def test_no_import_cycles() -> None:
    found = set(cycles(import_graph(project_modules())))
    new = [sorted(c) for c in found - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - found]
    assert new == [], f"import cycles (imports inside functions count too): {new}"
    assert gone == [], f"cycles cut: strike them off KNOWN_CYCLES: {gone}"


def test_no_module_of_shared_is_over_the_limit() -> None:
    lengths = {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines()) for p in (ROOT / "shared").rglob("*.py")}
    over = {p: n for p, n in lengths.items() if n > MAX_MODULE_LINES and p not in LONG_MODULES}
    assert over == {}, f"modules of shared/ over {MAX_MODULE_LINES} lines (split them by idea): {over}"
    split = sorted(p for p in LONG_MODULES if lengths.get(p, 0) <= MAX_MODULE_LINES)
    assert split == [], f"split or gone: strike them off LONG_MODULES: {split}"


def test_the_cycle_check_sees_imports_inside_functions(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "__init__.py").write_text("")
    (tmp_path / "shared" / "a.py").write_text("from shared.b import x\n")
    (tmp_path / "shared" / "b.py").write_text("def x():\n    from shared import a\n    return a\n")
    (tmp_path / "shared" / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from shared import a\n")
    (tmp_path / "shared" / "d.py").write_text("from . import c\n")
    graph = import_graph(project_modules(tmp_path))
    assert graph["shared.b"] == {"shared.a"} and graph["shared.c"] == set() and graph["shared.d"] == {"shared.c"}
    assert cycles(graph) == [frozenset({"shared.a", "shared.b"})]


# --- a test module imports helpers (tests/support.py, tests/fakes/), never another test module ----


def imports_of_test_modules(root: Path = ROOT) -> list[str]:
    """``importer -> imported`` for each module under tests/ that imports a test module (``test_*.py``)
    or a conftest, wherever the import stands (module level or in a function)."""
    modules = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): p
               for p in (root / "tests").rglob("*.py")}
    graph = import_graph(modules)
    return sorted(f"{importer} -> {imported}" for importer, targets in graph.items() for imported in targets
                  if imported.rpartition(".")[2].startswith("test_") or imported.endswith(".conftest"))


def test_no_test_module_imports_another() -> None:
    found = imports_of_test_modules()
    assert found == [], f"test modules imported by other modules (move what they share to tests/support.py or tests/fakes/): {found}"


def test_the_test_import_check_sees_every_form_of_import(tmp_path: Path) -> None:
    (tmp_path / "tests" / "unit").mkdir(parents=True)
    for name in ("__init__.py", "support.py", "unit/__init__.py"):
        (tmp_path / "tests" / name).write_text("")
    (tmp_path / "tests" / "unit" / "test_a.py").write_text("from tests.support import x\n\n\ndef helper():\n    pass\n")
    (tmp_path / "tests" / "unit" / "test_b.py").write_text("def test_b():\n    from tests.unit.test_a import helper\n")
    (tmp_path / "tests" / "unit" / "test_c.py").write_text("from . import test_a\n")
    (tmp_path / "tests" / "unit" / "test_d.py").write_text("import tests.unit.test_a\n")
    (tmp_path / "tests" / "unit" / "conftest.py").write_text("")
    (tmp_path / "tests" / "unit" / "test_e.py").write_text("from .conftest import fixture\n")
    assert imports_of_test_modules(tmp_path) == [
        "tests.unit.test_b -> tests.unit.test_a", "tests.unit.test_c -> tests.unit.test_a", "tests.unit.test_d -> tests.unit.test_a",
        "tests.unit.test_e -> tests.unit.conftest"]


# --------------------------------------------------------------------------- one way to pass dependencies

DEPENDENCIES = {"settings", "ledger", "backend"}
# Functions of shared/ that may still take two of settings/ledger/backend with one left to None, each for
# its reason. Every other domain call takes ``ctx: Context`` (shared/context.py), built by the handler.
DEPENDENCY_ALLOWED = {
    # shared.context.context builds the Context itself.
    "shared/context.py:context": "builds the Context: the one place the missing parts are made",
    # The views render when the ML backend cannot even be built (a bad credential, an SDK missing):
    # the ledger part of the page still shows; a Context would need a backend first.
    "shared/observability/dashboard.py:collect_dashboard": "a view that renders without a backend",
    "shared/observability/dashboard.py:dashboard_page": "a view that renders without a backend",
    "shared/observability/dashboard.py:report_page": "a view that renders without a backend",
    "shared/observability/status.py:collect_status": "a view that renders without a backend",
    # The spend guard's facts: the backend is read only when a budget is set (status shows them
    # with no backend at all).
    "shared/training/submission.py:job_costs": "reads the backend only when a budget needs run times",
    "shared/training/submission.py:guard_facts": "reads the backend only when a budget needs run times",
    # Installs a backend instance for a settings object (tests, the local host): the registry itself.
    "shared/backends/__init__.py:use_backend": "the backend registry: installs one for a settings object",
    # `plan` prints the Azure ML pipeline job offline: settings and an Azure backend object, no ledger.
    "shared/cli/plan.py:plan_pipeline_job": "offline and ledger-free: settings plus an optional Azure backend",
    # One scorer per worker, for the worker's life (pools, caches); not one domain call.
    "shared/scoring/scorer.py:Scorer.__init__": "a worker-lifetime object that keeps its own parts",
}


def dependency_offenders(source: str, rel: str) -> list[str]:
    """Functions (and methods) of ``source`` taking two or more of settings/ledger/backend, at
    least one of them defaulting to None: each call rebuilds what its caller did not pass."""
    out = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                a = child.args
                positional = a.posonlyargs + a.args
                defaults = dict(zip([p.arg for p in positional[len(positional) - len(a.defaults):]], a.defaults, strict=True))
                defaults.update({p.arg: d for p, d in zip(a.kwonlyargs, a.kw_defaults, strict=True) if d is not None})
                names = {p.arg for p in positional + a.kwonlyargs} & DEPENDENCIES
                optional = {n for n in names if isinstance(defaults.get(n), ast.Constant) and defaults[n].value is None}
                if len(names) >= 2 and optional:
                    out.append(f"{rel}:{prefix}{child.name}")
    visit(ast.parse(source), "")
    return out


def test_domain_calls_take_one_context_not_optional_settings_ledger_backend() -> None:
    found = []
    for path in sorted((ROOT / "shared").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        found += dependency_offenders(path.read_text(encoding="utf-8"), rel)
    unexpected = sorted(set(found) - set(DEPENDENCY_ALLOWED))
    assert unexpected == [], ("take `ctx: Context` (shared/context.py) instead of optional settings/ledger/backend, "
                              "or list the function in DEPENDENCY_ALLOWED with its reason:\n" + "\n".join(unexpected))
    stale = sorted(set(DEPENDENCY_ALLOWED) - set(found))
    assert stale == [], f"DEPENDENCY_ALLOWED lists functions that no longer take optional dependencies: {stale}"


def test_the_dependency_check_catches_what_it_is_for() -> None:
    old = ("def reconcile(settings=None, ledger=None, backend=None): ...\n"
           "def deploy_model(model, *, reason, settings=None, ledger=None, backend=None): ...\n"
           "class Scorer:\n    def __init__(self, settings, ledger=None): ...\n")
    assert dependency_offenders(old, "m.py") == ["m.py:reconcile", "m.py:deploy_model", "m.py:Scorer.__init__"]
    new = ("def reconcile(ctx): ...\ndef deploy_model(model, *, reason, ctx, endpoint=None): ...\n"
           "def queue_client(name, settings=None): ...\ndef load_eval_set(settings, ledger, collection): ...\n")
    assert dependency_offenders(new, "m.py") == []
