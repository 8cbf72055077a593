"""``python -m shared.cli status [--json]``: what the app knows, from the ledger and the backend.

Collected here as JSON (:func:`collect_status`); printed as tables by :mod:`.status_text`.

The JSON form is a contract for scripts (keep it stable, add fields only):

- top-level lists ``datasets``, ``jobs``, ``models``, ``endpoints``; every item has ``id`` and
  ``state`` (the ledger's state); datasets also have ``collection`` (null when the folder name
  was refused) and ``quality`` (the data quality gate's counts: ``personal_data``, ``secrets``,
  ``special_tokens``, ``near_duplicates``, ``leaks``, and the ``policy``; null before the gate); endpoints also have ``name`` (= ``id``), ``model``
  ("name:version"), ``last_activity`` (ISO 8601 or null), ``idle_minutes`` (or null),
  ``backend_state`` (null when the backend does not list it or cannot be reached) and
  ``janitor_verdict`` (what the idle policy would decide now);
- endpoints also have ``health``: ``healthy``, ``suspect`` (one failed probe, being confirmed),
  ``healing`` (unhealthy or failed, the health loop redeploys it), ``stopped`` (healing gave up
  or was not needed: see ``heal_stopped_reason``) or null (deploying, deleted), with
  ``heal_attempts``, ``heal_next_at``, ``unhealthy_since``, ``unhealthy_reason``, ``healed_at``
  and ``heal_seconds`` (time from unhealthy to serving again);
- ``janitor``: the janitor's settings (``policy``) and its last run (``last``, or null);
- ``collections`` (corpus mode): one item per collection with ``id``, ``state`` (pending |
  idle), ``model_name``, ``datasets`` (the corpus), ``pending``, ``due_at``, ``held_reason``
  (the spend guard's, or null), ``waiting_reason``, ``running_job``, ``serving_model``, and
  ``evaluation`` (:func:`shared.evaluation.evaluation_view`: ``eval_set`` with ``carved``,
  ``carved_from``, ``golden``, ``golden_datasets``; ``last_decision``: model, state, reason,
  decided_by, candidate and champion figures, or null);
  ``training``: ``mode`` and the spend ``guard`` (running jobs, budget, month's spend);
- jobs also carry their training curves (``None`` when the backend has none or cannot be read):
  ``train_loss`` ([[step, value], ...]), ``eval_loss`` (same), ``base_test_loss`` and
  ``test_loss`` (the base model's and the fine-tuned model's test loss) and ``curve_error``
  (curves are read for the CURVES_MAX most recent jobs; older ones keep their recorded losses);
- ``backend``: ``name``, ``reachable`` and ``error``. When the backend cannot be reached the
  ledger's data is still shown and ``reachable`` is false;
- ``triggers``: blob triggers the local host reports as ``stalled`` or ``degraded``, each with
  ``function``, ``container``, ``state``, ``reason``, ``fix``, ``since``, ``updated_at``
  (shared.observability.stalled_triggers); empty when none (always in Azure).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from datetime import datetime
from typing import Any

from shared.janitor.policy import EndpointFacts, IdlePolicy, decide
from shared.ledger import DATASET, ENDPOINT, JANITOR, JOB, MODEL, ROUTE, Ledger, Record, iso, parse_iso, utcnow
from shared.observability import stalled_triggers
from shared.observability.status_text import render_status
from shared.rollout.view import rollout_items
from shared.settings import Settings, SettingsError, get_settings
from shared.training.submission import collections_status

log = logging.getLogger(__name__)

_ENDPOINT_DONE = {"deleted", "deleting"}


def _latest(*times: datetime | None) -> datetime | None:
    present = [t for t in times if t is not None]
    return max(present) if present else None


def _by_recency(records: list[Record]) -> list[Record]:
    return sorted(records, key=lambda r: (r.updated_at or "", r.id), reverse=True)


def _dataset_item(r: Record) -> dict[str, Any]:
    return {"id": r.id, "state": r.state, "updated_at": r.updated_at, "blob_name": r.get("blob_name"),
            "counts": r.get("counts"), "job_name": r.get("job_name"), "error": r.get("error"),
            "collection": r.get("collection"), "quality": r.get("quality")}


def _job_item(r: Record, progress: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"id": r.id, "state": r.state, "updated_at": r.updated_at, "dataset_id": r.get("dataset_id"),
            "model_name": r.get("model_name"), "base_model": r.get("base_model"), "backend": r.get("backend"),
            "submitted_at": r.get("submitted_at"), "model": r.get("model"), "error": r.get("error"),
            "progress": progress}


def job_progress(raw: dict[str, Any] | None, now: datetime) -> dict[str, Any] | None:
    """A running job's step / total / loss and an ETA from its pace so far (None when unknown)."""
    if not raw or not raw.get("step"):
        return None
    step, total = int(raw["step"]), raw.get("total_steps")
    eta_s = None
    started = parse_iso(raw.get("training_started_at"))
    if total and started is not None:
        per_step = max((now - started).total_seconds(), 0.0) / step
        eta_s = round(per_step * max(int(total) - step, 0))
    return {"step": step, "total_steps": total, "loss": raw.get("loss"), "eta_s": eta_s, "at": raw.get("at")}


def _running_progress(jobs: list[Record], backend: Any, now: datetime) -> dict[str, dict[str, Any]]:
    found = {}
    for r in jobs:
        if r.state != "submitted":
            continue
        try:
            info = backend.get_job(r.id)
        except Exception:  # noqa: BLE001 - progress is a nicety: never fail status for it
            log.debug("no progress for job %s", r.id, exc_info=True)
            continue
        progress = job_progress(getattr(info, "progress", None) or _progress_from_curves(backend, r.id), now)
        if progress is not None:
            found[r.id] = progress
    return found


def _progress_from_curves(backend: Any, job_name: str) -> dict[str, Any] | None:
    """A running job's step and loss from its training curve, for backends that report no
    progress of their own (Azure ML: the pipeline's MLflow metrics); no total, so no ETA."""
    history = getattr(backend, "job_metrics_history", None)
    if history is None:
        return None
    try:
        points = history(job_name).series.get("train_loss") or []
    except Exception:  # noqa: BLE001 - progress is a nicety: never fail status for it
        log.debug("no training curve for job %s", job_name, exc_info=True)
        return None
    if not points:
        return None
    step, loss = points[-1]
    return {"step": step, "total_steps": None, "loss": loss}



CURVES_MAX = 20


def _add_curve(item: dict[str, Any], backend: Any) -> dict[str, Any]:
    """The job's training-curve fields (see the module doc), from ``backend.job_metrics_history``."""
    metrics = item.get("metrics") or {}
    item.update(train_loss=None, eval_loss=None, base_test_loss=metrics.get("base_test_loss"),
                test_loss=metrics.get("test_loss"), curve_error=None)
    history = getattr(backend, "job_metrics_history", None)
    if history is None:
        return item
    try:
        curves = history(item["id"])
    except Exception as exc:  # noqa: BLE001 - one job's tracking failing must not hide the rest
        item["curve_error"] = f"{type(exc).__name__}: {exc}"[:300]
        return item
    for key in ("train_loss", "eval_loss"):
        if curves.series.get(key):
            item[key] = [[step, value] for step, value in curves.series[key]]
    for key in ("base_test_loss", "test_loss"):
        if key in curves.final:
            item[key] = curves.final[key]
    return item


def _model_item(r: Record, active: dict[str, str]) -> dict[str, Any]:
    name, _, version = r.id.partition(":")
    endpoint = r.get("endpoint")
    return {"id": r.id, "name": name, "version": version, "state": r.state, "updated_at": r.updated_at,
            "job_name": r.get("job_name"), "base_model": r.get("base_model"), "endpoint": endpoint,
            "serving": bool(endpoint) and active.get(name) == endpoint,
            "error": r.get("deploy_refused_reason") or r.get("error")}  # refused: MAX_LIVE_ENDPOINTS


def _health_fields(record: Record | None, settings: Settings | None) -> dict[str, Any]:
    from shared.endpoints import healing

    fields = record.fields if record is not None else {}
    state = record.state if record is not None else ""
    verdict = None
    next_at = None
    if state == "succeeded":
        verdict = "suspect" if fields.get("health_suspect_since") else "healthy"
    elif state == "failed" and fields.get("heal_stopped_at"):
        verdict = "stopped"
    elif state == "failed" or (state == "provisioning" and fields.get("unhealthy_since")):
        verdict = "healing"
        if state == "failed" and settings is not None and record is not None:
            next_at = iso(healing.next_attempt_at(record, settings))
    return {
        "health": verdict,
        "heal_attempts": fields.get("heal_attempts"),
        "heal_next_at": next_at,
        "unhealthy_since": fields.get("unhealthy_since"),
        "unhealthy_reason": fields.get("unhealthy_reason") or fields.get("health_suspect_reason"),
        "heal_stopped_reason": fields.get("heal_stopped_reason"),
        "healed_at": fields.get("healed_at"),
        "heal_seconds": fields.get("heal_seconds"),
    }


def _endpoint_item(name: str, record: Record | None, info: Any, active_endpoints: set[str], policy: IdlePolicy,
                   now: datetime, backend_reachable: bool, settings: Settings | None = None) -> dict[str, Any]:
    fields = record.fields if record is not None else {}
    ledger_activity = parse_iso(fields.get("last_activity"))
    metric_activity = getattr(info, "last_activity", None)
    last_activity = _latest(ledger_activity, metric_activity)
    active_since = parse_iso(fields.get("active_since"))
    state = record.state if record is not None else getattr(info, "state", "")
    item: dict[str, Any] = {
        "id": name,
        "name": name,
        "state": state,
        "backend_state": getattr(info, "state", None),
        "in_ledger": record is not None,
        "managed": bool(getattr(info, "managed", record is not None)),
        "model": getattr(info, "model", None) or fields.get("model"),
        "active": name in active_endpoints,
        "instance_type": getattr(info, "instance_type", None) or fields.get("instance_type"),
        "active_since": iso(active_since),
        "last_activity": iso(last_activity),
        "idle_minutes": None,
        "janitor_verdict": None,
        "deleted_at": fields.get("deleted_at"),
        "delete_reason": fields.get("delete_reason"),
        "hours_saved": fields.get("hours_saved"),
        "cost_saved": fields.get("cost_saved"),
        "error": fields.get("error") or getattr(info, "error", None),
        **_health_fields(record, settings),
    }
    if state in _ENDPOINT_DONE:
        return item
    idle_since = _latest(last_activity, active_since)
    if idle_since is not None:
        item["idle_minutes"] = round(max((now - idle_since).total_seconds(), 0.0) / 60.0, 1)
    if backend_reachable:
        facts = EndpointFacts(
            name=name, state=getattr(info, "state", "missing") if info is not None else "missing",
            managed=bool(getattr(info, "managed", False)), in_ledger=record is not None,
            ledger_state=record.state if record is not None else None, ledger_last_activity=ledger_activity,
            metric_last_activity=metric_activity, active_since=active_since, created_at=getattr(info, "created_at", None),
            is_active_endpoint=name in active_endpoints, model=item["model"],
        )
        decision = decide(facts, policy, now)
        item["janitor_verdict"] = {"action": decision.action, "reason": decision.reason}
    return item


def collect_status(settings: Settings | None = None, ledger: Ledger | None = None, backend: Any = None) -> dict[str, Any]:
    """Everything ``status`` shows, as the JSON contract above. Raises when the ledger is unreachable."""
    s = settings or get_settings()
    if ledger is None:
        ledger = Ledger.from_settings(s)
    now = utcnow()
    datasets = _by_recency(ledger.list(DATASET))
    jobs = _by_recency(ledger.list(JOB))
    models = _by_recency(ledger.list(MODEL))
    endpoints = {r.id: r for r in ledger.list(ENDPOINT)}
    active = {r.id: r.get("endpoint") for r in ledger.list(ROUTE) if r.get("endpoint")}
    janitor_last = ledger.get(JANITOR, "last")

    backend_info: dict[str, Any] = {"name": s.ml_backend, "reachable": True, "error": None}
    listed: dict[str, Any] = {}
    progress: dict[str, dict[str, Any]] = {}
    try:
        if backend is None:
            from shared.backends import get_backend

            backend = get_backend(s)
        listed = {info.name: info for info in backend.list_endpoints()}
        progress = _running_progress(jobs, backend, now)
    except Exception as exc:  # noqa: BLE001 - status must still show the ledger
        log.debug("backend unreachable", exc_info=True)
        backend_info.update(reachable=False, error=f"{type(exc).__name__}: {exc}")

    policy = IdlePolicy.from_settings(s)
    active_endpoints = set(active.values())
    names = sorted(set(endpoints) | set(listed), key=lambda n: ((endpoints[n].updated_at if n in endpoints else ""), n), reverse=True)
    endpoint_items = [
        _endpoint_item(n, endpoints.get(n), listed.get(n), active_endpoints, policy, now, bool(backend_info["reachable"]), s)
        for n in names
    ]
    training = collections_status(s, ledger, now)  # corpus mode: collections, the spend guard
    _add_evaluation(s, ledger, training["collections"])
    return {
        "generated_at": iso(now),
        "backend": backend_info,
        "collections": training.pop("collections"),
        "training": training,
        # Blob triggers the local host reports as stalled or degraded (empty in Azure).
        "triggers": stalled_triggers.read(s, [s.chat_data_container]),
        "datasets": [_dataset_item(r) for r in datasets],
        "jobs": [_add_curve(_job_item(r, progress.get(r.id)), backend if backend_info["reachable"] and i < CURVES_MAX else None)
                 for i, r in enumerate(jobs)],
        "models": [_model_item(r, active) for r in models],
        "endpoints": endpoint_items,
        # A new version beside the serving one (shared.rollout): judged, canaried, decided.
        "rollouts": rollout_items(ledger),
        "janitor": {
            "policy": {"schedule": s.janitor_schedule, "idle_minutes": s.idle_endpoint_minutes,
                       "grace_minutes": s.idle_grace_minutes, "keep_latest": s.janitor_keep_latest,
                       "dry_run": s.janitor_dry_run},
            "last": ({"state": janitor_last.state, **janitor_last.fields} if janitor_last is not None else None),
        },
    }



def _add_evaluation(s: Settings, ledger: Ledger, collections: list[dict[str, Any]]) -> None:
    """Each collection's eval set (how many, from where) and last decision (shared.evaluation)."""
    from shared.evaluation import evaluation_view

    views = evaluation_view(s, ledger, [c["id"] for c in collections])
    for item in collections:
        item["evaluation"] = views.get(item["id"])



def cli_status(args: Any) -> int:
    every = getattr(args, "watch", None)
    if every is None:
        return _status_once(args)
    try:
        while True:
            # Clear the screen and redraw, like `watch`: the progress of a running job moves.
            sys.stdout.write("\x1b[H\x1b[2J")
            code = _status_once(args)
            print(f"\n(every {every:g} s; Ctrl+C to stop)", flush=True)
            if code != 0:
                return code
            time.sleep(every)
    except KeyboardInterrupt:
        return 0


def _status_once(args: Any) -> int:
    try:
        status = collect_status()
    except SettingsError:
        raise
    except Exception as exc:  # noqa: BLE001 - a clear line beats a traceback for a CLI user
        log.debug("ledger unreachable", exc_info=True)
        print(f"cannot read the ledger: {type(exc).__name__}: {exc}\n(is storage running? `make up` starts Azurite locally)",
              file=sys.stderr)
        return 1
    if getattr(args, "json", False):
        print(json.dumps(status, indent=2, default=str))
    else:
        print(render_status(status), flush=True)
    return 0


def cli_report(args: Any) -> int:
    """``python -m shared.cli report DATASET``: the dataset's preparation report, read from storage."""
    from azure.core.exceptions import ResourceNotFoundError

    from shared.storage import blob_service

    s = get_settings()
    try:
        ledger = Ledger.from_settings(s)
        record = ledger.get(DATASET, args.dataset)
        if record is None:
            known = [r.id for r in _by_recency(ledger.list(DATASET))][:10]
            print(f"no dataset {args.dataset!r} in the ledger (latest: {', '.join(known) or 'none'})", file=sys.stderr)
            return 2
        blob = record.get("report_blob") or f"datasets/{record.id}/report.json"
        raw = blob_service(s).get_blob_client(s.prepared_container, blob).download_blob().readall()
    except ResourceNotFoundError:
        print(f"dataset {args.dataset!r} has no report in {s.prepared_container}/ yet (state {record.state})", file=sys.stderr)
        return 1
    except Exception as exc:  # noqa: BLE001 - one clear line for a CLI user
        print(f"cannot read the report: {type(exc).__name__}: {exc}\n(is storage running? `make up` starts Azurite locally)",
              file=sys.stderr)
        return 1
    report = json.loads(raw)
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return 0
    from shared.cli.prepare import report_summary

    print("\n".join(report_summary(f"{record.id} ({record.get('blob_name') or 'upload'})", report)))
    return 0
