"""Importing function_app must stay light (the Functions worker imports it on every cold start)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys

from shared.settings import PROJECT_ROOT

# opentelemetry's API (not its SDK) comes with fastapi, which HTTP streams need: only the SDK and the exporter are heavy.
HEAVY_PACKAGES = ("azure.ai.ml", "torch", "transformers", "mlflow", "datasets", "pandas", "azure.monitor", "opentelemetry.sdk")


def imported_modules_with_importtime() -> dict[str, int]:
    """Module -> cumulative import time (us), from ``python -X importtime -c "import function_app"``."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import function_app"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    modules = {}
    for line in proc.stderr.splitlines():
        # "import time:       self [us] |  cumulative | imported package"
        if not line.startswith("import time:") or "imported package" in line:
            continue
        _, cumulative, name = line.removeprefix("import time:").split("|")
        modules[name.strip()] = int(cumulative)
    return modules


def test_import_pulls_in_no_heavy_sdk() -> None:
    modules = imported_modules_with_importtime()
    assert "function_app" in modules and "azure.functions" in modules  # the parse saw the real import
    heavy = sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in HEAVY_PACKAGES))
    assert heavy == [], f"imported at module level by function_app: {heavy}"


def test_function_app_only_registers_blueprints() -> None:
    tree = ast.parse((PROJECT_ROOT / "function_app.py").read_text(encoding="utf-8"))
    definitions = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef | ast.Lambda)]
    assert definitions == [], "function_app.py must not define functions: they live in blueprints under functions/"
    app_calls = {
        node.func.attr
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and isinstance(node.func.value, ast.Name)
        if node.func.value.id == "app"
    }
    assert app_calls == {"register_functions"}

    imported = {
        alias.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module == "functions" for alias in n.names
    }
    trigger_modules = {p.stem for p in (PROJECT_ROOT / "functions").glob("*.py") if not p.stem.startswith("_")}
    assert imported == trigger_modules, "every module in functions/ is a blueprint registered by function_app.py"
    for name in sorted(trigger_modules):
        source = (PROJECT_ROOT / "functions" / f"{name}.py").read_text(encoding="utf-8")
        assert "bp = func.Blueprint()" in source, f"functions/{name}.py must define its Blueprint as bp"


def test_every_http_function_uses_the_http_streams_types() -> None:
    """Once one function streams, Azure Functions serves every HTTP trigger of the app as an HTTP
    stream and ``func.HttpRequest`` handlers stop working: all must take FastAPI's Request."""
    import inspect
    import json

    from azurefunctions.extensions.http.fastapi import Request

    import function_app
    from devhost.app_index import functions_of

    http = [f for f in functions_of(function_app.app)
            if any(b["type"] == "httpTrigger" for b in json.loads(f.get_function_json())["bindings"])]
    assert len(http) >= 5  # score, chat_completions, list_models, dashboard, dashboard_report
    for fn in http:
        params = list(inspect.signature(fn.get_user_function()).parameters.values())
        assert params and params[0].annotation is Request, f"{fn.get_function_name()} takes {params[0].annotation!r}"
