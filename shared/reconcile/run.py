"""Reconcile (a timer, and on demand): finish whatever events started or missed.

Safe at any time, repeatedly and concurrently (every step is an ETag-conditional transition):
submissions whose delivery crashed between the claim and the backend call, jobs whose event was
lost, models registered but never deployed, endpoints still provisioning (traffic, activation),
and deletions in flight.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from shared import rollout
from shared.backends.base import CANCELED, COMPLETED, EP_DELETING, EP_PROVISIONING, EP_SUCCEEDED, FAILED
from shared.context import Context
from shared.datasets.intake import submit_pending_datasets
from shared.deployment.job_outcome import Outcome, deploy_beside_champion, deploy_registered_model, drive_job, model_of
from shared.endpoints import healing, lifecycle
from shared.endpoints.naming import endpoint_name
from shared.ledger import Record
from shared.ledger import records as R
from shared.reconcile import sweep
from shared.reconcile.settle import settle_endpoint
from shared.training.submission import submit_due_collections

log = logging.getLogger(__name__)

SUMMARY_KEYS = (
    "datasets_submitted",
    "collections_submitted",
    "collections_held",
    "jobs_polled",
    "jobs_pending",
    "jobs_failed",
    "jobs_canceled",
    "jobs_gated",
    "jobs_ignored",
    "models_deploying",
    "endpoints_provisioning",
    "endpoints_activated",
    "endpoints_failed",
    "endpoints_restarted",
    "endpoints_replaced",
    "endpoints_deleting",
    "endpoints_deleted",
    *sweep.SUMMARY_KEYS,
    *healing.SUMMARY_KEYS,
    *rollout.SUMMARY_KEYS,
    "errors",
)


def reconcile(ctx: Context) -> dict[str, int]:
    """Finish what events started or missed; safe at any time, repeatedly and concurrently.

    Returns counts per action (the keys of SUMMARY_KEYS). One record's error is logged and
    counted, never stops the run.
    """
    summary: Counter[str] = Counter({k: 0 for k in SUMMARY_KEYS})

    # A delivery that crashed between claiming a dataset's submission and submitting it.
    def finish_submissions() -> None:
        outcomes = submit_pending_datasets(ctx)
        summary["datasets_submitted"] += sum(1 for o in outcomes if o.status == "submitted")

    _guarded(summary, "pending submissions", finish_submissions)
    _guarded(summary, "collections", lambda: _count_collections(summary, submit_due_collections(ctx)))

    for record in ctx.ledger.list(R.JOB, states={R.JOB_SUBMITTED, COMPLETED}):
        if record.state == COMPLETED and (model_of(record, ctx.settings) or record.get("gated") or record.get("register_error")):
            continue  # finished; its model is followed through the model records below
        if record.state == R.JOB_SUBMITTED:
            summary["jobs_polled"] += 1
        _guarded(summary, f"job/{record.id}", lambda r=record: _count_outcome(summary, drive_job(r, ctx)))

    for record in ctx.ledger.list(R.MODEL, states={R.MODEL_REGISTERED, R.MODEL_DEPLOYING}):
        _guarded(summary, f"model/{record.id}", lambda r=record: _reconcile_model(r, ctx, summary))

    endpoints = ctx.ledger.list(R.ENDPOINT, states={EP_PROVISIONING, EP_SUCCEEDED, EP_DELETING})
    for record in endpoints:
        _guarded(summary, f"endpoint/{record.id}", lambda r=record: _reconcile_endpoint(r, ctx, summary))
    # Endpoints settled above were just read from the backend: no second look at them this run.
    just_read = {r.id for r in endpoints if r.state == EP_PROVISIONING}

    _guarded(summary, "rollouts", lambda: rollout.advance_all(ctx, summary))
    _guarded(summary, "stuck-state sweep", lambda: sweep.sweep_stuck(ctx, summary))
    _guarded(summary, "endpoint health", lambda: healing.heal_endpoints(ctx, summary, skip=just_read))

    result = dict(summary)
    log.info("reconcile: %s", {k: v for k, v in result.items() if v})
    return result


def _count_collections(summary: Counter[str], outcomes: list[Any]) -> None:
    summary["collections_submitted"] += sum(1 for o in outcomes if o.action == "submitted")
    summary["collections_held"] += sum(1 for o in outcomes if o.action == "held")


def _guarded(summary: Counter[str], what: str, action: Any) -> None:
    try:
        action()
    except Exception:  # one record must not stop the others; the next run retries it
        summary["errors"] += 1
        log.warning("reconcile: %s failed; retried next run", what, exc_info=True)


def _count_outcome(summary: Counter[str], outcome: Outcome) -> None:
    key = {
        "pending": "jobs_pending",
        FAILED: "jobs_failed",
        CANCELED: "jobs_canceled",
        "gated": "jobs_gated",
        "ignored": "jobs_ignored",
        "deploying": "models_deploying",
    }.get(outcome.action)
    if key:
        summary[key] += 1


def _reconcile_model(record: Record, ctx: Context, summary: Counter[str]) -> None:
    model = lifecycle.model_ref_of(record)
    if record.state == R.MODEL_REGISTERED:  # its registrar stopped before the deployment started
        _count_outcome(summary, deploy_registered_model(model, ctx, reason="reconcile: registered, not deployed"))
        return
    if ctx.ledger.get(R.ROLLOUT, record.id) is not None:
        return  # a candidate beside its champion: shared.rollout follows it
    ep_name = record.get("endpoint") or endpoint_name(model.name, model.version)
    if ctx.ledger.get(R.ENDPOINT, ep_name) is None:  # claimed "deploying", then stopped before the endpoint record
        if deploy_beside_champion(model, ctx, reason="reconcile: deployment never started") is not None:
            summary["models_deploying"] += 1
            return
        lifecycle.deploy_model(model, ctx=ctx, reason="reconcile: deployment never started")
        summary["models_deploying"] += 1


def _reconcile_endpoint(record: Record, ctx: Context, summary: Counter[str]) -> None:
    if record.state == EP_SUCCEEDED:
        # Normally activated when it succeeded; this covers a run that stopped in between.
        lifecycle.activate(record, ctx, summary)
    else:
        settle_endpoint(record, ctx, summary)
