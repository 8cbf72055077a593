"""Load a ``func.FunctionApp`` and index its functions the way the Functions host does.

The index is built only from what the Python worker reports to the host: ``app.get_functions()``,
each function's binding JSON (``get_function_json()``) and ``get_user_function()``. Binding
expressions (``%NAME%``) are resolved against the host's settings object first, so tests that
give every test its own container names see them in trigger paths too.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import re
import typing
import weakref
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.settings import SPECS, Settings, app_setting

HTTP = "httpTrigger"
EVENT_GRID = "eventGridTrigger"
BLOB = "blobTrigger"
TIMER = "timerTrigger"
QUEUE = "queueTrigger"
SUPPORTED_TRIGGERS = (HTTP, EVENT_GRID, BLOB, TIMER, QUEUE)

_SETTING_EXPRESSION = re.compile(r"%([^%]+)%")


class AppIndexError(ValueError):
    """The app cannot be loaded or uses something the local host cannot drive."""


@dataclasses.dataclass(frozen=True)
class IndexedFunction:
    """One function as the host sees it: its trigger binding and the Python callable."""

    name: str
    trigger_type: str
    trigger: dict[str, Any]  # the trigger's binding JSON, %NAME% expressions unresolved
    param: str  # the trigger's argument name
    user_function: Callable[..., Any]
    param_type: Any  # the trigger argument's resolved annotation (None when unannotated)
    wants_context: bool  # the function takes ``context: func.Context``

    @property
    def is_async(self) -> bool:
        return inspect.iscoroutinefunction(self.user_function)

    @property
    def function_id(self) -> str:
        """The id the real host uses in receipts, timer status blobs and poison messages."""
        return f"Host.Functions.{self.name}"


def load_app(target: str | func.FunctionApp) -> func.FunctionApp:
    """``"module:attribute"`` (default attribute ``app``) or an app object -> the app."""
    if not isinstance(target, str):
        return target
    module_name, _, attr = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AppIndexError(f"cannot import {module_name!r}: {exc}") from exc
    app = getattr(module, attr or "app", None)
    if app is None or not hasattr(app, "get_functions"):
        raise AppIndexError(f"{target!r} is not a func.FunctionApp")
    return app


def index_app(app: func.FunctionApp) -> dict[str, IndexedFunction]:
    """Index every function of ``app`` by name; fail fast on bindings the host cannot drive."""
    indexed: dict[str, IndexedFunction] = {}
    for function in functions_of(app):
        name = function.get_function_name()
        bindings = json.loads(function.get_function_json())["bindings"]
        triggers = [b for b in bindings if b["type"].endswith("Trigger")]
        if len(triggers) != 1:
            raise AppIndexError(f"function {name!r} has {len(triggers)} triggers; exactly one is required")
        trigger = triggers[0]
        if trigger["type"] not in SUPPORTED_TRIGGERS:
            raise AppIndexError(f"function {name!r}: trigger {trigger['type']!r} is not driven by the local host")
        others = [
            b
            for b in bindings
            if b is not trigger and not (trigger["type"] == HTTP and b["type"] == "http" and b["name"] == "$return")
        ]
        if others:
            kinds = ", ".join(f"{b['type']} {b['name']!r}" for b in others)
            raise AppIndexError(f"function {name!r}: bindings the local host does not provide: {kinds}")
        user_function = function.get_user_function()
        params = inspect.signature(user_function).parameters
        if trigger["name"] not in params:
            raise AppIndexError(f"function {name!r} has no parameter {trigger['name']!r} for its trigger")
        extra = [p for p in params if p not in (trigger["name"], "context")]
        if extra:
            raise AppIndexError(f"function {name!r}: parameters without a binding: {', '.join(extra)}")
        indexed[name] = IndexedFunction(
            name=name,
            trigger_type=trigger["type"],
            trigger=trigger,
            param=trigger["name"],
            user_function=user_function,
            param_type=_annotation(user_function, trigger["name"]),
            wants_context="context" in params,
        )
    return indexed


# get_functions() validates unique names against state it keeps on the app, so a second call on
# the same app (a restarted host in the same process) fails: index each app object once.
_INDEXED_APPS: weakref.WeakKeyDictionary[Any, list[Any]] = weakref.WeakKeyDictionary()


def functions_of(app: func.FunctionApp) -> list[Any]:
    """``app.get_functions()``, once per app object (a second call on the same app raises)."""
    if app not in _INDEXED_APPS:
        _INDEXED_APPS[app] = list(app.get_functions())
    return _INDEXED_APPS[app]


def _annotation(fn: Callable[..., Any], param: str) -> Any:
    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # unresolvable forward references: fall back to the raw annotation
        hints = {}
    if param in hints:
        return hints[param]
    raw = inspect.signature(fn).parameters[param].annotation
    return None if raw is inspect.Parameter.empty else raw


def resolve_setting(name: str, settings: Settings | None) -> str:
    """Value of app setting ``name``: the host's settings object first, then the environment."""
    if settings is not None:
        for field, spec in SPECS.items():
            if spec.env == name:
                value = getattr(settings, field)
                return json.dumps(value) if isinstance(value, dict) else str(value)
    value = app_setting(name)
    if value is None:
        raise AppIndexError(f"app setting {name!r} is not set (used as %{name}% in a binding)")
    return value


def resolve_expressions(text: str, settings: Settings | None) -> str:
    """Replace every ``%NAME%`` in a binding value by the app setting, as the host does."""
    return _SETTING_EXPRESSION.sub(lambda m: resolve_setting(m.group(1), settings), text)


def is_disabled(name: str) -> bool:
    """``AzureWebJobs.<name>.Disabled`` app setting, honoured like the real host."""
    value = app_setting(f"AzureWebJobs.{name}.Disabled")
    return (value or "").strip().lower() in {"1", "true"}
