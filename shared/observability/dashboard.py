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

The page works without JavaScript (``<meta http-equiv=refresh>``) and its charts are inline SVG
(:mod:`shared.observability.charts`).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from shared.backends.base import JOB_FINAL_STATES, LOCAL_INSTANCE_TYPE
from shared.janitor.run import hourly_price
from shared.ledger import DATASET, ENDPOINT, JANITOR, JOB, MODEL, ROUTE, Ledger, Record, iso, parse_iso, utcnow
from shared.observability import charts
from shared.rollout.view import canary_text, figures_text, metrics_text, rollout_items
from shared.settings import Settings, get_settings
from shared.training.submission import finetune_instance

log = logging.getLogger(__name__)

# Backend and report look-ups one page may spend time on; the rest wait for the next refresh.
LOOKUP_BUDGET_S = 0.15
# A running job's curve and times are re-read after this long; final jobs' are kept.
LIVE_TTL_S = 10.0
CACHE_MAX = 2048
USAGE_DAYS = 3
REJECTED_LINES_SHOWN = 5
DEFAULT_REFRESH_S = 15
# Per model, the latest chains are drawn in full (curves, lines); older ones are one table row each.
CHAINS_DRAWN = 8


# ------------------------------------------------------------------------------- the cache

@dataclass
class _Entry:
    value: Any
    at: float
    final: bool


class LookupCache:
    """Results of slow look-ups (backend, blobs) by key; final ones kept, live ones for LIVE_TTL_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or (not entry.final and self._clock() - entry.at > LIVE_TTL_S):
            return False, None
        return True, entry.value

    def put(self, key: str, value: Any, final: bool) -> None:
        with self._lock:
            if len(self._entries) >= CACHE_MAX:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = _Entry(value, self._clock(), final)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = LookupCache()


@dataclass
class Budget:
    """Time one page may spend on look-ups that are not cached yet."""

    seconds: float
    started: float = field(default_factory=time.monotonic)
    skipped: int = 0

    def allows(self) -> bool:
        if time.monotonic() - self.started < self.seconds:
            return True
        self.skipped += 1
        return False


def _cached(key: str, final: bool, budget: Budget, fetch: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) | ("pending", None) when over budget | ("error", message)."""
    hit, value = CACHE.get(key)
    if hit:
        return value
    if not budget.allows():
        return "pending", None
    try:
        result: tuple[str, Any] = ("ok", fetch())
    except Exception as exc:  # noqa: BLE001 - one job's curve failing must not break the page
        log.info("dashboard look-up %s failed: %s", key, exc)
        result = ("error", f"{type(exc).__name__}: {exc}"[:200])
    CACHE.put(key, result, final)
    return result


# ------------------------------------------------------------------------------- view model

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
        status, info = _cached(f"job:{job.id}", final, budget, lambda: backend.get_job(job.id))
        if status == "ok":
            view["started_at"] = iso(info.started_at)
            view["backend_state"] = info.state
            view["ended_at"] = view["ended_at"] or iso(info.ended_at)
        history = getattr(backend, "job_metrics_history", None)
        if history is not None:
            status, curves = _cached(f"curve:{job.id}", final, budget, lambda: history(job.id))
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

    status, value = _cached(f"report:{dataset.id}", True, budget, fetch)
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


# ------------------------------------------------------------------------------- HTML

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}
header{background:#24292f;color:#fff;padding:10px 20px;display:flex;gap:24px;align-items:baseline;flex-wrap:wrap}
header h1{font-size:18px;margin:0} header span{color:#d0d7de}
main{max-width:1360px;margin:0 auto;padding:12px 20px}
section.model{background:#fff;border:1px solid #d0d7de;border-radius:6px;margin:14px 0;padding:10px 14px}
section.model h2{font-size:16px;margin:4px 0 8px}
.chain{display:grid;grid-template-columns:repeat(4,minmax(200px,1fr));gap:10px;border-top:1px solid #eaeef2;padding:10px 0}
.step{border-left:3px solid #d0d7de;padding:2px 10px;min-width:0;overflow-wrap:anywhere}
.step h3{font-size:12px;text-transform:uppercase;letter-spacing:.04em;color:#57606a;margin:0 0 4px}
.state{display:inline-block;padding:0 6px;border-radius:10px;font-size:12px;font-weight:600;background:#eaeef2}
.s-rejected,.s-failed,.s-canceled,.s-rolled_back{background:#ffebe9;color:#a40e26}
.s-submitted,.s-provisioning,.s-deploying,.s-evaluating,.s-canary,.s-received,.s-running,.s-queued,.s-deleting{background:#fff8c5;color:#7d4e00}
.s-completed,.s-succeeded,.s-deployed,.s-accepted,.s-registered,.s-promoted{background:#dafbe1;color:#116329}
.s-deleted{background:#eaeef2;color:#57606a}
dl{display:grid;grid-template-columns:max-content 1fr;gap:0 8px;margin:4px 0} dt{color:#57606a} dd{margin:0}
ol.errors{margin:4px 0;padding-left:0;list-style:none;font-size:12px} ol.errors li{margin:2px 0}
.muted{color:#57606a} .warn{color:#a40e26}
.notice{background:#fff;border:1px solid #d0d7de;border-left:4px solid #bf8700;padding:14px 18px;margin:18px 0;border-radius:6px}
.notice.error{border-left-color:#d1242f}
table{border-collapse:collapse;font-size:13px} td,th{padding:3px 8px;border-bottom:1px solid #eaeef2;text-align:left}
.charts{display:flex;flex-wrap:wrap;gap:6px} svg.timeline{width:100%;height:auto;max-width:1320px}
@media (max-width:1000px){.chain{grid-template-columns:1fr 1fr}}
"""


def _t(value: str | None) -> str:
    dt = parse_iso(value)
    return dt.strftime("%Y-%m-%d %H:%M:%S UTC") if dt else "-"


def _dur(minutes: float | None) -> str:
    if minutes is None:
        return "-"
    if minutes < 1:
        return f"{minutes * 60:.0f} s"
    if minutes < 60:
        return f"{minutes:.1f} min"
    return f"{minutes / 60:.1f} h"


def _state(state: str | None) -> str:
    state = state or "-"
    return f'<span class="state s-{escape(state)}">{escape(state)}</span>'


def _dl(rows: list[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in rows if v not in (None, "")) + "</dl>"


def _money(value: Any) -> str:
    return "-" if value is None else f"${float(value):,.2f}"


QUALITY_KINDS = ("personal_data", "secrets", "special_tokens", "near_duplicates", "leaks")


def _dataset_html(d: dict[str, Any] | None, link: Callable[[str, dict[str, str]], str]) -> str:
    if d is None:
        return '<div class="step"><h3>Upload / dataset</h3><span class="muted">submitted directly (no upload)</span></div>'
    c = d["counts"]
    counts = ", ".join(f"{c[k]} {k}" for k in ("lines", "valid", "invalid", "duplicates", "train", "test") if k in c)
    rows = [("upload", escape(d["blob_name"] or "-")), ("uploaded", escape(_t(d["uploaded_at"]))),
            ("dataset", f"<code>{escape(d['id'])}</code> {_state(d['state'])}"), ("counts", escape(counts or "-"))]
    if d.get("collection"):
        rows.insert(0, ("collection", escape(d["collection"])))
    quality = d.get("quality")
    if quality:
        found = ", ".join(f"{quality.get(k) or 0} {k.replace('_', ' ')}" for k in QUALITY_KINDS)
        cls = "warn" if any(quality.get(k) for k in QUALITY_KINDS) else "muted"
        rows.append(("quality", f'<span class="{cls}">{escape(found)}</span> (policy {escape(str(quality.get("policy") or "-"))})'))
    if d.get("forecast_usd") is not None:
        rows.append(("forecast", escape(f"${d['forecast_usd']:.2f} to train")))
    if d["error"]:
        rows.append(("why", f'<span class="warn">{escape(d["error"])}</span>'))
    if d["report_blob"]:
        rows.append(("report", f'<a href="{escape(link("dashboard/report", {"dataset": d["id"]}))}">report.json</a>'))
    html = _dl(rows)
    rejected = d["rejected"]
    if rejected["errors"]:
        items = "".join(f'<li>line {int(e.get("line") or 0)}: <b>{escape(str(e.get("kind") or ""))}</b> '
                        f'{escape(str(e.get("message") or ""))}</li>' for e in rejected["errors"])
        more = f'<li class="muted">and {rejected["omitted"]} more in the report</li>' if rejected["omitted"] else ""
        html += f'<div class="rejected"><span class="muted">rejected lines</span><ol class="errors">{items}{more}</ol></div>'
    elif rejected["status"] == "pending":
        html += '<p class="muted">rejected lines: loading (next refresh)</p>'
    elif rejected["status"] == "error":
        html += f'<p class="warn">rejected lines: cannot read the report ({escape(rejected.get("error") or "")})</p>'
    return f'<div class="step dataset"><h3>Upload / dataset</h3>{html}</div>'


def _curve_html(job: dict[str, Any]) -> str:
    curve = job.get("curve")
    if not curve:
        status = job.get("curve_status")
        text = "loading (next refresh)" if status == "pending" else (status or "-")
        return f'<p class="muted">training curve: {escape(text)}</p>'
    series = {k: [(float(x), float(y)) for x, y in pts] for k, pts in curve["series"].items() if k in ("train_loss", "eval_loss")}
    final = {**job.get("metrics", {}), **curve["final"]}
    markers = {"base test loss": final.get("base_test_loss"), "fine-tuned test loss": final.get("test_loss")}
    return '<div class="charts">' + charts.line_chart(series, title=f"loss of {job['id']}", markers=markers) + "</div>"


def _job_html(j: dict[str, Any] | None) -> str:
    if j is None:
        return '<div class="step"><h3>Job</h3><span class="muted">not submitted</span></div>'
    rows = [("job", f"<code>{escape(j['id'])}</code> {_state(j['state'])}"),
            ("queued", escape(_t(j["queued_at"]))), ("running", escape(_t(j["started_at"]))),
            ("ended", escape(_t(j["ended_at"]))), ("waited", escape(_dur(j["queued_minutes"]))),
            ("duration", escape(_dur(j["run_minutes"]))),
            ("cost so far", escape(_money(j["cost_so_far"])) + (f' <span class="muted">at {_money(j["hourly_price"])}/h</span>'
                                                                 if j["hourly_price"] is not None else ""))]
    m = j.get("metrics") or {}
    if "base_test_loss" in m or "test_loss" in m:
        rows.append(("test loss", escape(f"base {m.get('base_test_loss', float('nan')):.3f} -> fine-tuned {m.get('test_loss', float('nan')):.3f}")))
    if j.get("gated"):
        rows.append(("quality gate", f'<span class="warn">held back: {escape(str(j.get("gate_reason")))}</span>'))
    if j["error"]:
        rows.append(("error", f'<span class="warn">{escape(str(j["error"]))}</span>'))
    return f'<div class="step job"><h3>Job</h3>{_dl(rows)}{_curve_html(j)}</div>'


def _models_html(models: list[dict[str, Any]]) -> tuple[str, str]:
    if not models:
        return ('<div class="step"><h3>Model version</h3><span class="muted">none registered</span></div>',
                '<div class="step"><h3>Endpoint</h3><span class="muted">none</span></div>')
    mparts, eparts = [], []
    for m in models:
        mparts.append(_dl([("version", f"<code>{escape(m['id'])}</code> {_state(m['state'])}"),
                           ("base model", escape(m["base_model"] or "-")), ("registered", escape(_t(m["registered_at"]))),
                           ("deployed", escape(_t(m["deployed_at"]))),
                           ("error", f'<span class="warn">{escape(m["error"])}</span>' if m["error"] else "")]))
        for e in m["endpoints"]:
            eta = e["janitor"]
            if eta["at"]:
                janitor = escape(f"{'overdue: ' if eta.get('overdue') else ''}after {_t(eta['at'])}")
            else:
                janitor = escape(eta["why"] or "-")
            health = escape(str(e["health"])) if e["health"] is not None else ""
            if e["heal_attempts"]:
                health += escape(f" ({e['heal_attempts']} heal attempts)")
            eparts.append(_dl([
                ("endpoint", f"<code>{escape(e['id'])}</code> {_state(e['state'])}"
                 + (" <b>serving</b>" if e["serving"] and e["state"] == "succeeded" else "")
                 + (' <span class="muted">(the model\'s route: a call redeploys it)</span>' if e["serving"] and e["state"] == "deleted" else "")),
                ("health", health), ("active since", escape(_t(e["active_since"]))),
                ("last activity", escape(_t(e["last_activity"]))), ("idle", escape(_dur(e["idle_minutes"]))),
                ("janitor", janitor if e["state"] == "succeeded" else ""),
                ("deleted", escape(f"{_t(e['deleted_at'])} ({e['delete_reason'] or '-'})") if e["deleted_at"] else ""),
                ("saved", escape(f"{float(e['hours_saved'] or 0):.2f} h, {_money(e['cost_saved'])}") if e["hours_saved"] is not None else ""),
                ("error", f'<span class="warn">{escape(str(e["error"]))}</span>' if e["error"] else ""),
            ]))
    return (f'<div class="step model"><h3>Model version</h3>{"".join(mparts)}</div>',
            f'<div class="step endpoint"><h3>Endpoint</h3>{"".join(eparts) or "<span class=muted>none</span>"}</div>')


def _older_row(c: dict[str, Any]) -> str:
    d, j = c["dataset"] or {}, c["job"] or {}
    loss = ""
    final = {**(j.get("metrics") or {}), **((j.get("curve") or {}).get("final") or {})}
    if "test_loss" in final:
        loss = f"{final.get('base_test_loss', float('nan')):.3f} -> {final['test_loss']:.3f}"
    versions = ", ".join(f"{m['id']} ({', '.join(e['state'] for e in m['endpoints']) or m['state']})" for m in c["models"])
    return (f"<tr><td>{escape(_t(d.get('uploaded_at') or j.get('queued_at')))}</td>"
            f"<td>{escape(d.get('blob_name') or '-')} {_state(d.get('state')) if d else ''}</td>"
            f"<td>{escape(j.get('id') or '-')} {_state(j.get('state')) if j else ''}</td>"
            f"<td>{escape(loss or '-')}</td><td>{escape(versions or '-')}</td></tr>")


def _page(title: str, body: str, refresh_s: int | None, refresh_url: str | None, generated: str) -> str:
    meta = (f'<meta http-equiv="refresh" content="{int(refresh_s)}; url={escape(refresh_url or "")}">'
            if refresh_s else "")
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">{meta}'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f'<header><h1>Fine-tuning autopilot</h1><span>{escape(title)}</span>'
            f'<span id="generated">updated {escape(generated)}</span>'
            + (f'<span>refreshes every {int(refresh_s)} s</span>' if refresh_s else "")
            + f"</header><main>{body}</main></body></html>")


def render_dashboard(view: dict[str, Any], *, link: Callable[[str, dict[str, str]], str], refresh_s: int | None = DEFAULT_REFRESH_S) -> str:
    parts = []
    if view["empty"]:
        parts.append('<div class="notice" id="empty"><b>Nothing here yet.</b> The workspace is empty: upload a chat data '
                     'file (<code>.jsonl</code>, <code>.jsonl.gz</code> or <code>.parquet</code>) to the chat-data container '
                     '(<code>make upload FILE=data/sample_chat.jsonl</code> locally) and this page shows its way from upload '
                     'to a serving endpoint.</div>')
    for g in view["groups"]:
        title = escape(g["model_name"]) + (f' <span class="muted">collection {escape(g["collection"])}</span>' if g["collection"] else "")
        chains = []
        for c in g["chains"][:CHAINS_DRAWN]:
            model_html, endpoint_html = _models_html(c["models"])
            chains.append(f'<div class="chain">{_dataset_html(c["dataset"], link)}{_job_html(c["job"])}{model_html}{endpoint_html}</div>')
        older = g["chains"][CHAINS_DRAWN:]
        if older:
            chains.append(f'<details class="older"><summary>{len(older)} older uploads and jobs of this model</summary>'
                          '<table><tr><th>uploaded</th><th>dataset</th><th>job</th><th>test loss</th><th>versions</th></tr>'
                          + "".join(_older_row(c) for c in older) + "</table></details>")
        parts.append(f'<section class="model"><h2>{title}</h2>{"".join(chains)}</section>')
    if not view["empty"]:
        usage = view["usage"]
        start, end = parse_iso(usage["start"]), parse_iso(usage["end"])
        rows = [{"name": r["name"], "hours": {parse_iso(h): n for h, n in r["hours"].items()},
                 "alive": [(parse_iso(a), parse_iso(b)) for a, b in r["alive"]],
                 "deleted": [(parse_iso(at), label) for at, label in r["deleted"]]} for r in usage["rows"]]
        timeline = charts.usage_timeline(rows, start=start, end=end,  # type: ignore[arg-type]
                                         title="Endpoint requests per hour and janitor deletions")
        idle_rows = "".join(
            f"<tr><td>{escape(r['name'])}</td><td>{r['requests']}</td><td>"
            + (", ".join(escape(f"{_t(a)[5:16]} to {_t(b)[5:16]} ({h} h)") for a, b, h in r["idle"][-4:]) or "-")
            + "</td></tr>" for r in usage["rows"])
        j = view["janitor"]
        deletions = "".join(
            f"<tr><td>{escape(_t(d['at']))}</td><td>{escape(d['endpoint'])}</td><td>{escape(str(d['reason'] or '-'))}</td>"
            f"<td>{float(d['hours_saved'] or 0):.2f} h</td><td>{escape(_money(d['cost_saved']))}</td></tr>" for d in j["deletions"][:50])
        policy = j["policy"]
        parts.append(
            f'<section class="model usage"><h2>Endpoint usage and spend</h2>{timeline}'
            f'<table><tr><th>endpoint</th><th>requests (since {escape(_t(usage["start"]))})</th><th>idle periods (latest)</th></tr>{idle_rows}</table>'
            f'<h2>Janitor</h2><p>idle threshold {policy["idle_minutes"]:g} min, grace {policy["grace_minutes"]:g} min, '
            f'schedule <code>{escape(policy["schedule"])}</code>{", dry run" if policy["dry_run"] else ""}'
            f'{", keeps serving endpoints" if policy["keep_latest"] else ""}. Saved so far: '
            f'<b id="saved">{j["hours_saved"]:.2f} instance-hours, {_money(j["cost_saved"])}</b>'
            + (f'; last run {escape(_t(j["last"].get("ran_at")))} ({escape(str(j["last"].get("state")))})' if j["last"] else "; never run")
            + f'</p><table><tr><th>deleted</th><th>endpoint</th><th>reason</th><th>hours saved</th><th>saved</th></tr>{deletions}</table></section>')
    if view.get("rollouts"):
        parts.append(_rollouts_html(view["rollouts"]))
    if view.get("pending_lookups"):
        parts.append(f'<p class="muted">{view["pending_lookups"]} look-ups still loading; they appear on the next refresh.</p>')
    refresh_url = link("dashboard", {"refresh": str(refresh_s)} if refresh_s else {})
    return _page("lifecycle dashboard", "".join(parts), refresh_s, refresh_url, view["generated_at"])


def _rollouts_html(rollouts: list[dict[str, Any]]) -> str:
    """Per candidate: champion against candidate (evaluation), the canary's live figures, the decision."""
    rows = []
    for r in rollouts:
        ev = r.get("evaluation") or {}
        canary = r.get("canary") or {}
        figures = canary.get("figures")
        rows.append(
            f'<tr id="rollout-{escape(r["id"])}"><td>{escape(r["id"])}<br><span class="muted">'
            f'{escape(str(r.get("collection") or ""))} in {escape(str(r.get("endpoint") or ""))}</span></td>'
            f'<td>{_state(r["state"])}</td><td>{escape(str(r.get("champion_version") or "-"))}</td>'
            f'<td>{escape(metrics_text(ev.get("candidate")))}</td><td>{escape(metrics_text(ev.get("champion")))}</td>'
            f'<td>{escape(canary_text(r))}</td>'
            f'<td>{escape(figures_text(figures, "candidate"))}</td><td>{escape(figures_text(figures, "champion"))}</td>'
            f'<td>{escape(str(r.get("reason") or r.get("evaluation_note") or "-"))}</td></tr>')
    return ('<section class="model rollouts" id="rollouts"><h2>Rollouts: candidate beside the champion</h2><table>'
            '<tr><th>candidate</th><th>state</th><th>champion</th><th>evaluation: candidate</th><th>champion</th>'
            '<th>canary</th><th>live: candidate</th><th>champion</th><th>decision</th></tr>'
            + "".join(rows) + "</table></section>")


def render_unavailable(error: str, *, link: Callable[[str, dict[str, str]], str], refresh_s: int | None = DEFAULT_REFRESH_S) -> str:
    body = ('<div class="notice error" id="storage-down"><b>Storage is unreachable.</b> The dashboard reads the ledger '
            f'(Table Storage) and could not: <code>{escape(error)}</code>. Locally, is Azurite running '
            '(<code>make up</code>)? In Azure, check the storage account and the app\'s managed identity roles. '
            'This page retries by itself.</div>')
    refresh_url = link("dashboard", {"refresh": str(refresh_s)} if refresh_s else {})
    return _page("storage unreachable", body, refresh_s, refresh_url, iso(utcnow()) or "")


def render_report(dataset_id: str, report: dict[str, Any] | None, *, link: Callable[[str, dict[str, str]], str]) -> str:
    if report is None:
        body = f'<div class="notice error">No report for dataset <code>{escape(dataset_id)}</code>.</div>'
    else:
        decision = report.get("decision") or {}
        errors = "".join(f"<tr><td>{int(e.get('line') or 0)}</td><td>{escape(str(e.get('kind')))}</td>"
                         f"<td>{escape(str(e.get('message')))}</td></tr>" for e in report.get("errors") or [])
        body = (f'<p><a href="{escape(link("dashboard", {}))}">back to the dashboard</a></p>'
                f"<h2>Dataset {escape(dataset_id)}: {'accepted' if decision.get('accepted') else 'rejected'}</h2>"
                f"<p>{escape('; '.join(decision.get('reasons') or []))}</p>"
                f"<table><tr><th>line</th><th>kind</th><th>message</th></tr>{errors}</table>"
                + (f"<p class=muted>{int(report.get('errors_omitted') or 0)} more not listed</p>" if report.get("errors_omitted") else "")
                + f"<h2>report.json</h2><pre>{escape(json.dumps(report, indent=2)[:200_000])}</pre>")
    return _page(f"report of {dataset_id}", body, None, None, iso(utcnow()) or "")


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
