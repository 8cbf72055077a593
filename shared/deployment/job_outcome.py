"""Job event -> our job's real state recorded -> model registered -> its deployment started.

Event Grid delivers at least once, out of order, and gives a handler 30 s, so:

* nothing is trusted or spent before the event's topic is our workspace and its run is a job
  this app submitted (a ``job/<runId>`` ledger record, carrying our managed-by tag);
* the job's state is re-read from the backend: the event is only a hint;
* every step is claimed in the ledger first (ETag-conditional ``create``/``transition``/
  ``update``), so repeated or concurrent deliveries register one model version and create one
  endpoint, and a retry after a crash or a transient error picks up where the last one stopped;
* long-running operations are only started (:func:`shared.endpoints.lifecycle.deploy_model`);
  :mod:`shared.reconcile.run` (a timer) reads their outcome later and also finishes
  anything whose event never came.

States and transitions: :mod:`shared.ledger.records` (job submitted -> completed | failed |
canceled, registration recorded on the completed job; model registered).
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import timedelta
from typing import Any

from shared.backends.base import (
    CANCELED,
    COMPLETED,
    FAILED,
    JOB_FINAL_STATES,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)
from shared.context import Context
from shared.deployment.event_payloads import JobEvent, is_trusted
from shared.endpoints.capacity import CapacityError
from shared.endpoints.lifecycle import deploy_model
from shared.endpoints.naming import endpoint_name
from shared.ledger import Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R
from shared.rollout import begin_candidate
from shared.settings import Settings

log = logging.getLogger(__name__)

# A registration claim older than this is considered abandoned (its holder crashed) and may
# be taken over; registering a model takes seconds on either backend.
REGISTRATION_CLAIM_TTL = timedelta(minutes=5)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What handling one event (or one job during reconciliation) did."""

    action: str  # ignored | pending | failed | canceled | gated | deploying | refused (capacity) | in_progress | done | error
    reason: str
    job_name: str | None = None
    model: str | None = None  # "name:version"
    endpoint: str | None = None


def _now_iso() -> str:
    return iso(utcnow()) or ""


def _managed_tags_ok(tags: dict[str, Any] | None) -> bool:
    """Tags prove nothing when absent (the published samples carry ``runTags: {}``); when a run
    carries tags, ours must be among them."""
    if not tags:
        return True
    lowered = {str(k).lower(): str(v) for k, v in tags.items()}
    return lowered.get(MANAGED_BY_TAG) == MANAGED_BY_VALUE


def _foreign_run_tags(tags: dict[str, Any] | None) -> bool:
    """True only when the event's runTags name another owner: real pipeline events carry only system
    tags (``azureml.pipelineid``, ``azureml.pipelineComponent``) and may lack ours, so a missing tag
    proves nothing; the ledger record and the re-read of the job are the proof."""
    lowered = {str(k).lower(): str(v) for k, v in (tags or {}).items()}
    return MANAGED_BY_TAG in lowered and lowered[MANAGED_BY_TAG] != MANAGED_BY_VALUE


# --------------------------------------------------------------------------- events


def handle_job_event(
    event: JobEvent,
    ctx: Context,
) -> Outcome:
    """Act on one Azure ML run event (parsed once by the trigger, :func:`shared.deployment.event_payloads.parse_job_event`).

    Returns normally for anything that is not ours or cannot be read (logged), so Event Grid
    does not retry it; raises TransientBackendError (and storage errors) so it does retry.
    """
    s = ctx.settings
    if not is_trusted(event, s.workspace_resource_id):
        log.warning(
            "job event ignored: topic %r is not the trusted workspace %r (event id %s, run %s)",
            event.topic,
            s.workspace_resource_id,
            event.event_id,
            event.run_id,
        )
        return Outcome("ignored", "untrusted topic", event.run_id)
    if not event.is_run_event:
        log.info("job event ignored: type %r is not a run event (id %s)", event.event_type, event.event_id)
        return Outcome("ignored", "not a run event", event.run_id)
    parent = event.parent_run_id
    if parent:
        log.info("job event ignored: run %s is a step of pipeline run %s", event.run_id, parent)
        return Outcome("ignored", "pipeline child step", event.run_id)
    if _foreign_run_tags(event.run_tags):
        log.info("job event ignored: run %s does not carry tag %s=%s", event.run_id, MANAGED_BY_TAG, MANAGED_BY_VALUE)
        return Outcome("ignored", "not managed by this app", event.run_id)

    try:
        record = ctx.ledger.get(R.JOB, event.run_id)
    except ValueError:  # a run id that cannot even be a ledger key is not one of our jobs
        record = None
    if record is None:
        log.info("job event ignored: run %s is not a job this app submitted (no ledger record)", event.run_id)
        return Outcome("ignored", "unknown job", event.run_id)
    log.info(
        "job event %s for job %s (status hint %s)", event.event_type.rsplit(".", 1)[-1], event.run_id, event.run_status or "-"
    )
    return drive_job(record, ctx)


def drive_job(record: Record, ctx: Context) -> Outcome:
    """Drive one of our jobs as far as its real state allows (shared by events and reconcile)."""
    name = record.id
    if record.state in {FAILED, CANCELED}:
        return Outcome("done", f"already recorded {record.state}", name)
    if record.state == R.JOB_SUBMITTED:
        try:
            info = ctx.backend.get_job(name)  # the event is only a hint: the workspace decides
        except NotFoundError:
            log.warning("job %s is in the ledger but the workspace does not know it; nothing done", name)
            return Outcome("ignored", "job not found in the workspace", name)
        if info.parent:
            log.info("job %s is a step of %s; ignored", name, info.parent)
            return Outcome("ignored", "pipeline child step", name)
        if not _managed_tags_ok(info.tags):
            log.warning("job %s does not carry tag %s=%s in the workspace; ignored", name, MANAGED_BY_TAG, MANAGED_BY_VALUE)
            return Outcome("ignored", "not managed by this app", name)
        if info.state not in JOB_FINAL_STATES:
            log.info("job %s is still %s; nothing to do yet", name, info.state)
            return Outcome("pending", f"job is {info.state}", name)
        ended = iso(info.ended_at) or _now_iso()
        if info.state in {FAILED, CANCELED}:
            moved = ctx.ledger.transition(R.JOB, name, {R.JOB_SUBMITTED}, info.state, error=info.error, ended_at=ended)
            if moved is not None:
                log.warning("job %s %s: %s; nothing deployed", name, info.state, info.error or "no reason given")
            return Outcome(info.state, info.error or info.state, name)
        ctx.ledger.transition(R.JOB, name, {R.JOB_SUBMITTED}, COMPLETED, metrics=dict(info.metrics), ended_at=ended)
        fresh = ctx.ledger.get(R.JOB, name)
        if fresh is None or fresh.state != COMPLETED:
            return Outcome("done", f"job recorded {fresh.state if fresh else 'missing'} meanwhile", name)
        record = fresh
    if record.state != COMPLETED:
        return Outcome("ignored", f"unexpected job state {record.state!r}", name)
    return _finish_completed_job(record, ctx)


def _quality_gate(metrics: dict[str, Any]) -> tuple[bool, str]:
    """(passes, why): deploy only when the fine-tuned test loss beat the base model's."""
    lowered = {str(k).lower(): v for k, v in (metrics or {}).items()}
    try:
        test_loss = float(lowered["test_loss"])
        base_loss = float(lowered["base_test_loss"])
    except (KeyError, TypeError, ValueError):
        return True, "no test_loss/base_test_loss reported; gate not applied"
    if test_loss < base_loss:
        return True, f"test_loss {test_loss:.4f} < base_test_loss {base_loss:.4f}"
    return False, f"test_loss {test_loss:.4f} did not beat base_test_loss {base_loss:.4f}"


def _finish_completed_job(record: Record, ctx: Context) -> Outcome:
    name = record.id
    if record.get("gated"):
        return Outcome("gated", record.get("gate_reason") or "quality gate", name)
    if record.get("register_error"):
        return Outcome("done", f"registration failed earlier: {record.get('register_error')}", name)
    if ctx.settings.quality_gate:
        passes, why = _quality_gate(record.get("metrics") or {})
        if not passes:
            ctx.ledger.merge(R.JOB, name, gated=True, gate_reason=why)
            log.warning("job %s held back by the quality gate: %s; nothing deployed", name, why)
            return Outcome("gated", why, name)
        log.info("job %s passes the quality gate: %s", name, why)

    model = model_of(record, ctx.settings)
    if model is None:
        model = _register_once(record, ctx)
        if model is None:
            current = ctx.ledger.get(R.JOB, name)
            if current is not None and current.get("register_error"):
                return Outcome("error", f"registration failed: {current.get('register_error')}", name)
            return Outcome("in_progress", "another delivery is registering the model", name)
    ctx.ledger.create(R.MODEL, model.ref, R.MODEL_REGISTERED, job_name=name, base_model=model.base_model, registered_at=_now_iso())
    return deploy_registered_model(model, ctx, reason=f"job {name} completed")


def model_of(record: Record, settings: Settings) -> ModelRef | None:
    if not record.get("model_version"):
        return None
    return ModelRef(
        name=record.get("registered_model_name") or record.get("model_name") or settings.model_name,
        version=str(record.get("model_version")),
        job_name=record.id,
        base_model=record.get("base_model") or settings.base_model_name,
    )


def _register_once(record: Record, ctx: Context) -> ModelRef | None:
    """Register the job's model under an ETag claim on the job record; None when someone else holds it."""
    name = record.id

    def claim() -> Record | None:
        current = ctx.ledger.get(R.JOB, name)
        if current is None or current.state != COMPLETED or model_of(current, ctx.settings) is not None:
            return None
        since = parse_iso(current.get("registering_since"))
        if since is not None and utcnow() - since < REGISTRATION_CLAIM_TTL:
            return None
        return ctx.ledger.update(current, registering_since=_now_iso())

    claimed = retry_on_conflict(claim, f"job/{name} registration claim")
    if claimed is None:
        current = ctx.ledger.get(R.JOB, name)
        return model_of(current, ctx.settings) if current is not None else None

    model_name = claimed.get("model_name") or ctx.settings.model_name
    try:
        registered = ctx.backend.register_model(name, model_name)
    except TransientBackendError:
        ctx.ledger.merge(R.JOB, name, registering_since=None)  # let the retry claim it at once
        raise
    except BackendError as exc:
        ctx.ledger.merge(R.JOB, name, registering_since=None, register_error=str(exc))
        log.error("job %s: registering model %s failed: %s; nothing deployed", name, model_name, exc)
        return None
    model = ModelRef(
        name=registered.name,
        version=str(registered.version),
        job_name=name,
        base_model=registered.base_model or claimed.get("base_model") or ctx.settings.base_model_name,
    )
    ctx.ledger.merge(
        R.JOB,
        name,
        registering_since=None,
        registered_model_name=model.name,
        model_version=model.version,
        model=model.ref,
        registered_at=_now_iso(),
    )
    log.info("job %s: registered model %s", name, model.ref)
    return model


def start_deployment(model: ModelRef, ctx: Context, *, reason: str) -> tuple[bool, str]:
    """Start the deployment of a freshly registered model, exactly once: (started by this call, endpoint name)."""
    ep_name = endpoint_name(model.name, model.version)
    won = ctx.ledger.transition(R.MODEL, model.ref, {R.MODEL_REGISTERED}, R.MODEL_DEPLOYING, endpoint=ep_name)
    if won is None:
        return False, ep_name
    candidate = deploy_beside_champion(model, ctx, reason=reason)
    if candidate is not None:
        return True, str(candidate.get("endpoint"))
    deploy_model(model, ctx=ctx, reason=reason)
    return True, ep_name


def deploy_beside_champion(model: ModelRef, ctx: Context, *, reason: str) -> Record | None:
    """A newer version of a model that an endpoint serves goes into that endpoint as a candidate
    deployment (:mod:`shared.rollout`); None when there is no such endpoint (deploy it as its own)."""
    return begin_candidate(model, ctx, reason=reason)


def deploy_registered_model(model: ModelRef, ctx: Context, *, reason: str) -> Outcome:
    """Start the deployment of a registered model, exactly once (see :func:`start_deployment`)."""
    try:
        started, ep_name = start_deployment(model, ctx, reason=reason)
    except CapacityError as exc:  # left "deploying": reconcile starts it once there is room
        return Outcome("refused", str(exc), model.job_name, model.ref, None)
    if not started:
        return Outcome("done", "deployment already started", model.job_name, model.ref, ep_name)
    return Outcome("deploying", reason, model.job_name, model.ref, ep_name)
