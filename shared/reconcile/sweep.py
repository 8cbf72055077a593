"""The stuck-state sweep (a reconcile step): no record stays in an in-between state forever.

Each in-between state has a timeout after which the record is finished or failed with the
reason, written ETag-conditionally (concurrent runs act once):

==================  ======================  ==========================================================
record / state      timeout                 what the sweep does then
==================  ======================  ==========================================================
dataset received    ``RECEIVED_TIMEOUT``    prepares the upload again (the delivery died and was not
                    (3 x functionTimeout)   retried, e.g. poisoned); an upload changed or deleted
                                            meanwhile -> ``rejected`` with the reason
job submitted       ``JOB_UNKNOWN_TIMEOUT`` the workspace does not know the job -> ``failed``
job submitted       ``JOB_MAX_RUNTIME``     no final state that long -> ``failed`` (and cancelled
                                            where the backend can)
endpoint            ``PROVISIONING_TIMEOUT`` the backend still deploying -> ``failed``; the health
provisioning        (per backend)           loop (:mod:`shared.endpoints.healing`) then redeploys it,
                                            bounded
endpoint deleting   ``DELETING_TIMEOUT``    the backend still has it -> the error is recorded on
                                            the record (``stuck_reason``); the janitor and reconcile
                                            keep restarting the deletion
==================  ======================  ==========================================================

A job process that dies is reported failed by the backend itself (the local backend checks the
process; Azure ML reports the run Failed) and recorded by reconcile's job step, so the sweep only
handles what no backend call will ever settle.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

from shared.backends.base import EP_DELETING, EP_FAILED, EP_PROVISIONING, JOB_FINAL_STATES, NotFoundError
from shared.context import Context
from shared.ledger import ConflictError, Record, iso, parse_iso, utcnow
from shared.ledger import records as R

log = logging.getLogger(__name__)

SUMMARY_KEYS = ("stuck_datasets_retried", "stuck_datasets_rejected", "stuck_jobs_failed", "stuck_endpoints_failed",
                "stuck_deletions_noted")

RECEIVED_TIMEOUT = timedelta(minutes=30)
JOB_UNKNOWN_TIMEOUT = timedelta(hours=1)
JOB_MAX_RUNTIME = timedelta(hours=48)
# Longer than the backend's own limits: the local server start-up timeout is 10 min; an Azure
# managed deployment of a 4k-context Phi-3 typically takes 10-20 min, and ARM gives up after 2 h.
PROVISIONING_TIMEOUT = {"local": timedelta(minutes=15), "azureml": timedelta(minutes=90)}
DELETING_TIMEOUT = timedelta(minutes=60)


def _age(record: Record, now: datetime, *fields: str) -> timedelta:
    for name in fields:
        at = parse_iso(record.get(name)) if name != "updated_at" else parse_iso(record.updated_at)
        if at is not None:
            return now - at
    return now - (parse_iso(record.created_at) or now)


def _minutes(delta: timedelta) -> str:
    return f"{delta.total_seconds() / 60:.0f} min"


def sweep_stuck(ctx: Context, summary: Counter[str], now: datetime | None = None) -> None:
    """The reconcile step (module doc). One record's error is counted and logged, never stops the rest."""
    now = now or utcnow()
    for key in SUMMARY_KEYS:
        summary.setdefault(key, 0)
    steps = (
        (R.DATASET, {R.DATASET_RECEIVED}, _dataset),
        (R.JOB, {R.JOB_SUBMITTED}, _job),
        (R.ENDPOINT, {EP_PROVISIONING, EP_DELETING}, _endpoint),
    )
    for kind, states, step in steps:
        for record in ctx.ledger.list(kind, states=states):
            try:
                step(record, ctx, summary, now)
            except Exception:  # noqa: BLE001
                summary["errors"] += 1
                log.warning("sweep: %s/%s could not be settled; retried next run", kind, record.id, exc_info=True)


def _dataset(record: Record, ctx: Context, summary: Counter[str], now: datetime) -> None:
    age = _age(record, now, "updated_at")
    if age < RECEIVED_TIMEOUT:
        return
    try:  # claim the retry, so concurrent runs prepare it once
        claimed = ctx.ledger.update(record, stuck_retried_at=iso(now))
    except ConflictError:
        return
    from shared.datasets.intake import prepare_uploaded_blob
    from shared.storage import blob_service

    blob_name = claimed.get("blob_name") or ""
    blob = blob_service(ctx.settings).get_blob_client(ctx.settings.chat_data_container, blob_name)
    log.warning("dataset %s is still 'received' after %s (its delivery stopped); preparing %s again",
                record.id, _minutes(age), blob_name)
    outcome = prepare_uploaded_blob(blob, ctx)
    if outcome.dataset_id == record.id:
        summary["stuck_datasets_retried"] += 1
        return
    why = ("the upload was deleted before its preparation finished" if outcome.status == "missing"
           else "the upload changed before its preparation finished (the new content is its own dataset)")
    if ctx.ledger.transition(R.DATASET, record.id, {R.DATASET_RECEIVED}, R.DATASET_REJECTED, error=why) is not None:
        summary["stuck_datasets_rejected"] += 1
        log.warning("dataset %s rejected: %s", record.id, why)


def _fail_job(record: Record, ctx: Context, summary: Counter[str], why: str, now: datetime) -> None:
    moved = ctx.ledger.transition(R.JOB, record.id, {R.JOB_SUBMITTED}, R.JOB_FAILED, error=why, ended_at=iso(now))
    if moved is not None:
        summary["stuck_jobs_failed"] += 1
        log.error("job %s: %s", record.id, why)


def _job(record: Record, ctx: Context, summary: Counter[str], now: datetime) -> None:
    age = _age(record, now, "submitted_at")
    if age < JOB_UNKNOWN_TIMEOUT:
        return
    try:
        info = ctx.backend.get_job(record.id)
    except NotFoundError:
        _fail_job(record, ctx, summary, f"the workspace does not know this job ({_minutes(age)} after submission)", now)
        return
    if info.state in JOB_FINAL_STATES or age < JOB_MAX_RUNTIME:
        return  # a final state is recorded by reconcile's job step
    cancel: Any = getattr(ctx.backend, "cancel_job", None)
    if cancel is not None:
        try:
            cancel(record.id)
        except Exception:  # noqa: BLE001 - the record is failed either way; say so
            log.warning("could not cancel job %s", record.id, exc_info=True)
    _fail_job(record, ctx, summary, f"no final state after {_minutes(age)} (still {info.state}); cancelled", now)


def _endpoint(record: Record, ctx: Context, summary: Counter[str], now: datetime) -> None:
    if record.state == EP_PROVISIONING:
        limit = PROVISIONING_TIMEOUT.get(ctx.settings.ml_backend, PROVISIONING_TIMEOUT["azureml"])
        age = _age(record, now, "deploy_requested_at", "updated_at")
        if age < limit:
            return
        why = f"still provisioning after {_minutes(age)} (limit {_minutes(limit)})"
        moved = ctx.ledger.transition(R.ENDPOINT, record.id, {EP_PROVISIONING}, EP_FAILED, error=why, failed_at=iso(now))
        if moved is not None:
            summary["stuck_endpoints_failed"] += 1
            log.error("endpoint %s: %s; the health loop redeploys it", record.id, why)
        return
    age = _age(record, now, "delete_requested_at", "updated_at")
    if age < DELETING_TIMEOUT or record.get("stuck_reason"):
        return
    why = f"deletion not finished after {_minutes(age)}; the janitor and reconcile keep restarting it"
    try:
        ctx.ledger.update(record, stuck_reason=why, error=why)
    except ConflictError:
        return
    summary["stuck_deletions_noted"] += 1
    log.error("endpoint %s: %s", record.id, why)
