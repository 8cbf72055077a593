"""The dashboard's templates print every value of the view model escaped (Jinja2 autoescape)."""

from __future__ import annotations

from typing import Any

import pytest

from shared.observability import dashboard_html

SCRIPT = "<script>alert(1)</script>"
ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def link(route: str, params: dict[str, str]) -> str:
    return "/api/" + route


def _view(text: str) -> dict[str, Any]:
    """One chain (upload -> job -> model -> endpoint), a usage row, a deletion and a rollout, each carrying ``text``."""
    endpoint = {"id": f"ep{text}", "state": "succeeded", "model": "m:1", "serving": True, "health": text, "heal_attempts": 0,
                "active_since": None, "last_activity": None, "idle_minutes": None, "janitor": {"at": None, "why": text},
                "deleted_at": None, "delete_reason": None, "hours_saved": None, "cost_saved": None, "error": text}
    dataset = {"id": "ds-1", "state": "rejected", "blob_name": f"{text}.jsonl", "collection": text, "uploaded_at": None,
               "counts": {}, "error": text, "report_blob": None, "quality": None, "forecast_usd": None,
               "rejected": {"status": "ok", "errors": [{"line": 3, "kind": text, "message": text}], "omitted": 0}}
    job = {"id": "job-1", "state": "failed", "queued_at": None, "started_at": None, "ended_at": None, "queued_minutes": None,
           "run_minutes": None, "hourly_price": None, "cost_so_far": None, "metrics": {}, "gated": True, "gate_reason": text,
           "error": text, "curve": None, "curve_status": f"error: {text}"}
    model = {"id": "m:1", "state": "deployed", "base_model": text, "registered_at": None, "deployed_at": None, "error": text,
             "endpoints": [endpoint]}
    return {
        "generated_at": "2026-12-01T15:00:00Z", "empty": False, "pending_lookups": 0,
        "groups": [{"model_name": text, "collection": text, "chains": [{"dataset": dataset, "job": job, "models": [model]}]}],
        "usage": {"start": "2026-12-01T00:00:00Z", "end": "2026-12-01T15:00:00Z", "rows": [
            {"name": text, "hours": {}, "alive": [], "deleted": [], "requests": 0,
             "idle": [("2026-12-01T01:00:00Z", "2026-12-01T05:00:00Z", 4.0)]}]},
        "janitor": {"last": {"state": text, "ran_at": None}, "hours_saved": 0, "cost_saved": 0,
                    "deletions": [{"endpoint": text, "at": None, "reason": text, "hours_saved": None, "cost_saved": None}],
                    "policy": {"idle_minutes": 90, "grace_minutes": 30, "keep_latest": False, "dry_run": False, "schedule": text}},
        "rollouts": [{"id": text, "state": "canary", "collection": text, "endpoint": text, "champion_version": text,
                      "evaluation": None, "canary": None, "reason": text}],
    }


def _pages(text: str) -> dict[str, str]:
    return {
        "dashboard": dashboard_html.render_dashboard(_view(text), link=link),
        "report": dashboard_html.render_report(text, {"decision": {"reasons": [text]}, "errors": [{"line": 1, "kind": text,
                                                                                                    "message": text}]}, link=link),
        "no report": dashboard_html.render_report(text, None, link=link),
        "unavailable": dashboard_html.render_unavailable(text, link=link),
    }


def test_untrusted_text_is_escaped_on_every_page() -> None:
    for name, html in _pages(SCRIPT).items():
        assert SCRIPT not in html, name
        assert ESCAPED in html, name
    dashboard = _pages(SCRIPT)["dashboard"]
    # every field of the view that carries the text is printed, each one escaped
    assert dashboard.count(ESCAPED) >= 25, dashboard.count(ESCAPED)


def test_the_escaping_check_fails_with_autoescape_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dashboard_html, "ENV", dashboard_html.environment(autoescape=False))
    for name, html in _pages(SCRIPT).items():
        assert SCRIPT in html, name  # the check above would fail: the value reaches the page as markup


def test_templates_are_found_beside_the_module() -> None:
    loader = dashboard_html.ENV.loader
    assert loader is not None
    names = set(loader.list_templates())
    assert {"page.html", "dashboard.html", "steps.html", "report.html", "unavailable.html", "dashboard.css"} <= names
    assert dashboard_html.ENV.autoescape is not False
