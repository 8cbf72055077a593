"""The dashboard: the whole lifecycle per model, as one server-rendered HTML page.

Per fine-tuned model name (and its ``collection`` when records carry one), each upload's chain:
upload -> dataset (counts, rejected lines with numbers and reasons, the report) -> job (state,
queued / running / ended times, duration, cost so far, training curves) -> model version ->
endpoint (state, health, last activity, when the janitor will delete it, hours and dollars
saved). Below it, endpoint usage (requests per hour, idle periods) and the janitor's deletions
on one time axis.

Reads are bounded: the ledger in one query per record kind (six) plus the janitor's record;
the backend (job times, training curves) and the prepared container (rejected lines) only
within a per-request time budget, through a cache (final jobs and reports never change), so a
page answers quickly whatever the ledger holds and fills in on the next refresh.

Here: the view model (:func:`collect_dashboard`, also served as JSON) and the HTTP answers. The
look-ups' cache is :mod:`.lookup_cache`; the HTML, Jinja2 templates with autoescape, is
:mod:`.dashboard_html` (it works without JavaScript, its charts are inline SVG).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from shared.backends.base import JOB_FINAL_STATES, LOCAL_INSTANCE_TYPE
from shared.janitor.run import hourly_price
from shared.ledger import DATASET, ENDPOINT, JANITOR, JOB, MODEL, ROUTE, Ledger, Record, iso, parse_iso, utcnow
from shared.observability.dashboard_html import DEFAULT_REFRESH_S, render_dashboard, render_report, render_unavailable
from shared.observability.lookup_cache import Budget, cached
from shared.rollout.view import rollout_items
from shared.settings import Settings, get_settings
from shared.training.submission import finetune_instance

log = logging.getLogger(__name__)

# Backend and report look-ups one page may spend time on; the rest wait for the next refresh.
LOOKUP_BUDGET_S = 0.15
USAGE_DAYS = 3
REJECTED_LINES_SHOWN = 5


def _minutes_between(a: datetime | None, b: datetime | None) -> float | None:
    if a is None or b is None:
        return None
    return round(max((b - a).total_seconds(), 0.0) / 60.0, 1)


def _job_view(job: Record, s: Settings, backend: Any, budget: Budget, now: datetime) -> dict[str, Any]:
    final = job.state in JOB_FINAL_STATES
    view: dict[str, Any] = {
        "id": job.id, "state": job.state, "model_name": job.get("model_name"), "dataset_id": job.get("dataset_id"),
        "backend": job.get("backend"), "queued_at": job.get("submitted_at"), "started_at": None,
        "ended_at": job.get("ended_at"), "error": job.get("error") or job.get("register_error"),
        "gated": job.get("gated"), "gate_reason": job.get("gate_reason"), "metrics": job.get("metrics") or {},
        "curve": None, "curve_status": "pending", "backend_state": None,
    }
    if backend is not None:
        status, info = cached(f"job:{job.id}", final, budget, lambda: backend.get_job(job.id))
        if status == "ok":
            view["started_at"] = iso(info.started_at)
            view["backend_state"] = info.state
            view["ended_at"] = view["ended_at"] or iso(info.ended_at)
        history = getattr(backend, "job_metrics_history", None)
        if history is not None:
            status, curves = cached(f"curve:{job.id}", final, budget, lambda: history(job.id))
            view["curve_status"] = status if status != "error" else f"error: {curves}"
            if status == "ok":
                view["curve"] = curves.as_dict()
        else:
            view["curve_status"] = "not reported by this backend"
    started = parse_iso(view["started_at"])
    ended = parse_iso(view["ended_at"])
    queued = parse_iso(view["queued_at"])
    view["queued_minutes"] = _minutes_between(queued, started or ended or (None if final else now))
    view["run_minutes"] = _minutes_between(started, ended or (None if final else now))
    # The same instance type and node count the spend guard counts (shared.training.submission).
    itype, nodes = (LOCAL_INSTANCE_TYPE, 1) if (job.get("backend") or s.ml_backend) == "local" else finetune_instance(s)
    price = hourly_price(s, itype)
    view["hourly_price"] = price
    view["cost_so_far"] = (round(view["run_minutes"] / 60.0 * price * nodes, 2)
                           if price is not None and view["run_minutes"] is not None else None)
    return view


def _report_view(dataset: Record, s: Settings, budget: Budget, read_blob: Callable[[str], bytes] | None) -> dict[str, Any]:
    counts = dataset.get("counts") or {}
    view = {"status": "none", "errors": [], "omitted": 0}
    blob = dataset.get("report_blob")
    if not blob or not counts.get("invalid") or read_blob is None:
        return view

    def fetch() -> dict[str, Any]:
        report = json.loads(read_blob(blob))
        errors = report.get("errors") or []
        return {"errors": errors[:REJECTED_LINES_SHOWN],
                "omitted": max(len(errors) - REJECTED_LINES_SHOWN, 0) + int(report.get("errors_omitted") or 0)}

    status, value = cached(f"report:{dataset.id}", True, budget, fetch)
    view["status"] = status
    if status == "ok":
        view.update(value)
    elif status == "error":
        view["error"] = value
    return view


def _janitor_eta(ep: Record, s: Settings, is_route: bool, now: datetime) -> dict[str, Any]:
    """When the idle janitor will delete this endpoint if nobody calls it (None: it will not)."""
    if ep.state != "succeeded":
        return {"at": None, "why": None}
    if s.janitor_keep_latest and is_route:
        return {"at": None, "why": "kept: the model's serving endpoint (JANITOR_KEEP_LATEST)"}
    last = parse_iso(ep.get("last_activity"))
    since = parse_iso(ep.get("active_since"))
    idle_since = max([t for t in (last, since) if t is not None], default=None)
    if idle_since is None:
        return {"at": None, "why": "no activity recorded yet"}
    at = idle_since + timedelta(minutes=s.idle_endpoint_minutes)
    if since is not None:
        at = max(at, since + timedelta(minutes=s.idle_grace_minutes))
    why = "dry run: would be deleted" if s.janitor_dry_run else "deleted"
    return {"at": iso(at), "why": f"{why} at the first janitor run after this if still idle",
            "overdue": at <= now}


def _usage_row(ep: Record, start: datetime, now: datetime) -> dict[str, Any]:
    hours: dict[datetime, int] = {}
    for key, n in (ep.get("requests_by_hour") or {}).items():
        at = parse_iso(f"{key}:00:00Z")
        if at is not None:
            hours[at] = int(n)
    up = parse_iso(ep.get("active_since")) or parse_iso(ep.get("deploy_requested_at")) or parse_iso(ep.created_at)
    down = parse_iso(ep.get("deleted_at")) if ep.state in {"deleted", "deleting"} else None
    alive = [(max(up, start), down or now)] if up is not None and (down or now) > start else []
    deleted = []
    if down is not None and down >= start:
        saved = ep.get("hours_saved")
        cost = ep.get("cost_saved")
        label = f"{ep.id} deleted {down.strftime('%m-%d %H:%M')} ({ep.get('delete_reason') or 'no reason'})"
        if saved is not None:
            label += f"; saved {float(saved):.1f} h" + (f", ${float(cost):.2f}" if cost is not None else "")
        deleted.append((down, label))
    # Idle periods: hours of its life in the window with no request (from the hourly counts).
    idle, run_start = [], None
    if alive:
        a, b = alive[0]
        t = a.replace(minute=0, second=0, microsecond=0)
        while t < b:
            quiet = hours.get(t, 0) == 0
            if quiet and run_start is None:
                run_start = max(t, a)
            if not quiet and run_start is not None:
                idle.append((run_start, t))
                run_start = None
            t += timedelta(hours=1)
        if run_start is not None:
            idle.append((run_start, b))
    return {"name": ep.id, "hours": {iso(h): n for h, n in sorted(hours.items()) if h + timedelta(hours=1) >= start},
            "alive": [(iso(a), iso(b)) for a, b in alive], "deleted": [(iso(at), label) for at, label in deleted],
            "idle": [(iso(a), iso(b), round((b - a).total_seconds() / 3600.0, 1)) for a, b in idle if b > a],
            "requests": sum(n for h, n in hours.items() if h + timedelta(hours=1) >= start)}


def _endpoint_view(ep: Record, s: Settings, routes: dict[str, str], now: datetime) -> dict[str, Any]:
    is_route = routes.get(ep.get("model_name") or "") == ep.id
    last = parse_iso(ep.get("last_activity"))
    since = parse_iso(ep.get("active_since"))
    idle_since = max([t for t in (last, since) if t is not None], default=None)
    return {
        "id": ep.id, "state": ep.state, "model": ep.get("model"), "serving": is_route,
        "health": ep.get("health"), "heal_attempts": ep.get("heal_attempts"),
        "active_since": ep.get("active_since"), "last_activity": ep.get("last_activity"),
        "idle_minutes": _minutes_between(idle_since, now) if ep.state == "succeeded" else None,
        "janitor": _janitor_eta(ep, s, is_route, now), "deleted_at": ep.get("deleted_at"),
        "delete_reason": ep.get("delete_reason"), "hours_saved": ep.get("hours_saved"), "cost_saved": ep.get("cost_saved"),
        "instance_type": ep.get("instance_type"), "error": ep.get("error"),
    }


def _group_key(*records: Record | None) -> tuple[str, str | None]:
    name = collection = None
    for r in records:
        if r is None:
            continue
        name = name or r.get("model_name")
        collection = collection or r.get("collection")
    return name or "(no model: not submitted)", collection


def collect_dashboard(settings: Settings | None = None, ledger: Ledger | None = None, backend: Any = None,
                      read_blob: Callable[[str], bytes] | None = None, budget_s: float = LOOKUP_BUDGET_S,
                      now: datetime | None = None) -> dict[str, Any]:
    """The page's data (also served as JSON). Raises when the ledger cannot be read."""
    s = settings or get_settings()
    ledger = ledger or Ledger.from_settings(s)
    now = now or utcnow()
    budget = Budget(budget_s)
    datasets = sorted(ledger.list(DATASET), key=lambda r: (r.created_at or "", r.id), reverse=True)
    jobs = {r.id: r for r in ledger.list(JOB)}
    models = ledger.list(MODEL)
    endpoints = ledger.list(ENDPOINT)
    routes = {r.id: r.get("endpoint") for r in ledger.list(ROUTE) if r.get("endpoint")}
    janitor_last = ledger.get(JANITOR, "last")

    models_by_job: dict[str, list[Record]] = {}
    for m in models:
        models_by_job.setdefault(m.get("job_name") or "", []).append(m)
    endpoints_by_model: dict[str, list[Record]] = {}
    for e in endpoints:
        endpoints_by_model.setdefault(e.get("model") or "", []).append(e)

    def chain(dataset: Record | None, job: Record | None) -> dict[str, Any]:
        versions = []
        for m in sorted(models_by_job.get(job.id, []) if job else [], key=lambda r: r.id):
            versions.append({"id": m.id, "state": m.state, "base_model": m.get("base_model"), "registered_at": m.get("registered_at"),
                             "deployed_at": m.get("deployed_at"), "error": m.get("deploy_refused_reason") or m.get("deploy_error"),
                             "endpoints": [_endpoint_view(e, s, routes, now) for e in endpoints_by_model.get(m.id, [])]})
        item: dict[str, Any] = {"dataset": None, "job": None, "models": versions}
        if dataset is not None:
            item["dataset"] = {
                "id": dataset.id, "state": dataset.state, "blob_name": dataset.get("blob_name"), "collection": dataset.get("collection"),
                "uploaded_at": dataset.created_at, "counts": dataset.get("counts") or {}, "error": dataset.get("error"),
                "report_blob": dataset.get("report_blob"), "rejected": _report_view(dataset, s, budget, read_blob),
                "quality": dataset.get("quality"), "forecast_usd": dataset.get("forecast_usd"),
            }
        if job is not None:
            item["job"] = _job_view(job, s, backend, budget, now)
        return item

    groups: dict[tuple[str, str | None], list[dict[str, Any]]] = {}
    seen_jobs: set[str] = set()
    for d in datasets:
        job = jobs.get(d.get("job_name") or "")
        if job is not None:
            seen_jobs.add(job.id)
        groups.setdefault(_group_key(job, d), []).append(chain(d, job))
    for job in sorted(jobs.values(), key=lambda r: (r.created_at or "", r.id), reverse=True):
        if job.id not in seen_jobs:
            groups.setdefault(_group_key(job), []).append(chain(None, job))

    # The usage axis: the last USAGE_DAYS days, or less when every endpoint is younger (readable either way).
    births = [parse_iso(v) for e in endpoints for v in (e.get("deploy_requested_at"), e.get("active_since"), e.created_at)]
    births += [parse_iso(f"{h}:00:00Z") for e in endpoints for h in list(e.get("requests_by_hour") or {})[:1]]
    earliest = min([b for b in births if b is not None], default=now)
    start = max(now - timedelta(days=USAGE_DAYS), earliest.replace(minute=0, second=0, microsecond=0) - timedelta(hours=1))
    usage = [_usage_row(e, start, now) for e in sorted(endpoints, key=lambda r: r.id)]
    usage = [u for u in usage if u["alive"] or u["deleted"] or u["requests"]]
    deletions = sorted(
        ({"endpoint": e.id, "at": e.get("deleted_at"), "reason": e.get("delete_reason"), "hours_saved": e.get("hours_saved"),
          "cost_saved": e.get("cost_saved")} for e in endpoints if e.get("deleted_at")),
        key=lambda d: d["at"] or "", reverse=True)
    return {
        "generated_at": iso(now),
        "empty": not (datasets or jobs or models or endpoints),
        "groups": [{"model_name": k[0], "collection": k[1], "chains": v}
                   for k, v in sorted(groups.items(), key=lambda kv: (kv[0][0].startswith("("), kv[0]))],
        "usage": {"start": iso(start), "end": iso(now), "rows": usage},
        "janitor": {"last": ({"state": janitor_last.state, **janitor_last.fields} if janitor_last else None),
                    "deletions": deletions,
                    "hours_saved": round(sum(float(d["hours_saved"] or 0) for d in deletions), 2),
                    "cost_saved": round(sum(float(d["cost_saved"] or 0) for d in deletions), 2),
                    "policy": {"idle_minutes": s.idle_endpoint_minutes, "grace_minutes": s.idle_grace_minutes,
                               "keep_latest": s.janitor_keep_latest, "dry_run": s.janitor_dry_run,
                               "schedule": s.janitor_schedule}},
        "rollouts": rollout_items(ledger),
        "pending_lookups": budget.skipped,
        "counts": {"datasets": len(datasets), "jobs": len(jobs), "models": len(models), "endpoints": len(endpoints)},
    }


# ------------------------------------------------------------------------------- entry points

def link_builder(code: str | None) -> Callable[[str, dict[str, str]], str]:
    """Links to the dashboard's routes that carry the function key when the page was opened with one."""

    def link(route: str, params: dict[str, str]) -> str:
        query = {**params, **({"code": code} if code else {})}
        return f"/api/{quote(route)}" + (f"?{urlencode(query)}" if query else "")

    return link


def blob_reader(s: Settings) -> Callable[[str], bytes]:
    def read(name: str) -> bytes:
        from shared.storage import blob_service

        return blob_service(s).get_container_client(s.prepared_container).download_blob(name).readall()

    return read


@dataclass(frozen=True)
class Page:
    status: int
    body: str
    mimetype: str = "text/html"


def dashboard_page(*, code: str | None = None, refresh_s: int | None = DEFAULT_REFRESH_S, as_json: bool = False,
                   settings: Settings | None = None, ledger: Ledger | None = None, backend: Any = None) -> Page:
    """The dashboard as an HTTP answer: 200 with the page, or 503 with a clear page when storage is down."""
    s = settings or get_settings()
    link = link_builder(code)
    if backend is None:
        try:
            from shared.backends import get_backend

            backend = get_backend(s)
        except Exception:  # noqa: BLE001 - the ledger view still works without the backend
            log.warning("dashboard: backend unavailable", exc_info=True)
    try:
        view = collect_dashboard(s, ledger, backend, read_blob=blob_reader(s))
    except Exception as exc:  # noqa: BLE001 - an unreachable ledger is a page, not a stack trace
        log.warning("dashboard: cannot read the ledger: %s", exc)
        message = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        if as_json:
            return Page(503, json.dumps({"error": "storage unreachable", "detail": message}), "application/json")
        return Page(503, render_unavailable(message, link=link, refresh_s=refresh_s))
    if as_json:
        return Page(200, json.dumps(view, default=str), "application/json")
    return Page(200, render_dashboard(view, link=link, refresh_s=refresh_s))


def report_page(dataset_id: str, *, code: str | None = None, settings: Settings | None = None,
                ledger: Ledger | None = None) -> Page:
    s = settings or get_settings()
    link = link_builder(code)
    try:
        ledger = ledger or Ledger.from_settings(s)
        record = ledger.get(DATASET, dataset_id) if dataset_id else None
        if record is None or not record.get("report_blob"):
            return Page(404, render_report(dataset_id, None, link=link))
        report = json.loads(blob_reader(s)(record.get("report_blob")))
    except ValueError as exc:  # a malformed id (ledger key)
        return Page(400, render_report(f"{dataset_id} ({exc})", None, link=link))
    except Exception as exc:  # noqa: BLE001
        log.warning("dashboard report: storage unreachable: %s", exc)
        return Page(503, render_unavailable(f"{type(exc).__name__}: {exc}"[:300], link=link, refresh_s=None))
    return Page(200, render_report(dataset_id, report, link=link))
