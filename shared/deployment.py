"""Job completed -> model registered -> endpoint deployed, and the reconciliation that finishes it.

Event Grid delivers at least once, out of order, and gives a handler 30 s, so:

* nothing is trusted or spent before the event's topic is our workspace and its run is a job
  this app submitted (a ``job/<runId>`` ledger record, carrying our managed-by tag);
* the job's state is re-read from the backend: the event is only a hint;
* every step is claimed in the ledger first (ETag-conditional ``create``/``transition``/
  ``update``), so repeated or concurrent deliveries register one model version and create one
  endpoint, and a retry after a crash or a transient error picks up where the last one stopped;
* long-running operations are only started (``begin_deploy``, ``begin_delete_endpoint``);
  :func:`reconcile` (a timer) reads their outcome later, routes traffic, makes the new endpoint
  the active one for its model, and also finishes anything whose event never came.

Ledger states used here (see the ledger conventions): job submitted -> completed | failed |
canceled (registration recorded on the completed job); model registered -> deploying ->
deployed; endpoint provisioning -> succeeded | failed, and -> deleting -> deleted for replaced
endpoints; active/<model_name> points at the endpoint that serves the model.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter
from datetime import timedelta
from typing import Any

from shared import ledger as L
from shared.backends import get_backend
from shared.backends.base import (
    CANCELED,
    COMPLETED,
    EP_DELETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    FAILED,
    JOB_FINAL_STATES,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    MLBackend,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)
from shared.events import JobEvent, MalformedEventError, is_trusted, parse_job_event
from shared.ledger import Ledger, Record
from shared.naming import endpoint_name
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

SUBMITTED = "submitted"
MODEL_REGISTERED, MODEL_DEPLOYING, MODEL_DEPLOYED = "registered", "deploying", "deployed"
ACTIVE = "active"

# A registration claim older than this is considered abandoned (its holder crashed) and may
# be taken over; registering a model takes seconds on either backend.
REGISTRATION_CLAIM_TTL = timedelta(minutes=5)
# An endpoint record in "provisioning" that the backend still does not know after this long
# lost its begin_deploy call (crash or error between the ledger write and the call).
DEPLOY_RESTART_GRACE = timedelta(seconds=60)


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What handling one event (or one job during reconciliation) did."""

    action: str  # ignored | pending | failed | canceled | gated | deploying | in_progress | done | error
    reason: str
    job_name: str | None = None
    model: str | None = None  # "name:version"
    endpoint: str | None = None


@dataclasses.dataclass
class _Context:
    settings: Settings
    ledger: Ledger
    backend: MLBackend


def _context(settings: Settings | None, ledger: Ledger | None, backend: MLBackend | None) -> _Context:
    s = settings or get_settings()
    return _Context(s, ledger or Ledger.from_settings(s), backend or get_backend(s))


def _now_iso() -> str:
    return L.iso(L.utcnow()) or ""


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
    event: JobEvent | Any,
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    backend: MLBackend | None = None,
) -> Outcome:
    """Act on one Azure ML run event (a ``JobEvent`` or a raw envelope of either schema).

    Returns normally for anything that is not ours or cannot be read (logged), so Event Grid
    does not retry it; raises TransientBackendError (and storage errors) so it does retry.
    """
    s = settings or get_settings()
    if not isinstance(event, JobEvent):
        try:
            event = parse_job_event(event)
        except MalformedEventError as exc:
            log.warning("job event ignored: malformed payload (%s)", exc)
            return Outcome("ignored", f"malformed: {exc}")
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

    ctx = _context(s, ledger, backend)
    try:
        record = ctx.ledger.get(L.JOB, event.run_id)
    except ValueError:  # a run id that cannot even be a ledger key is not one of our jobs
        record = None
    if record is None:
        log.info("job event ignored: run %s is not a job this app submitted (no ledger record)", event.run_id)
        return Outcome("ignored", "unknown job", event.run_id)
    log.info(
        "job event %s for job %s (status hint %s)", event.event_type.rsplit(".", 1)[-1], event.run_id, event.run_status or "-"
    )
    return _handle_job(record, ctx)


def _handle_job(record: Record, ctx: _Context) -> Outcome:
    """Drive one of our jobs as far as its real state allows (shared by events and reconcile)."""
    name = record.id
    if record.state in {FAILED, CANCELED}:
        return Outcome("done", f"already recorded {record.state}", name)
    if record.state == SUBMITTED:
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
        ended = L.iso(info.ended_at) or _now_iso()
        if info.state in {FAILED, CANCELED}:
            moved = ctx.ledger.transition(L.JOB, name, {SUBMITTED}, info.state, error=info.error, ended_at=ended)
            if moved is not None:
                log.warning("job %s %s: %s; nothing deployed", name, info.state, info.error or "no reason given")
            return Outcome(info.state, info.error or info.state, name)
        ctx.ledger.transition(L.JOB, name, {SUBMITTED}, COMPLETED, metrics=dict(info.metrics), ended_at=ended)
        fresh = ctx.ledger.get(L.JOB, name)
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


def _finish_completed_job(record: Record, ctx: _Context) -> Outcome:
    name = record.id
    if record.get("gated"):
        return Outcome("gated", record.get("gate_reason") or "quality gate", name)
    if record.get("register_error"):
        return Outcome("done", f"registration failed earlier: {record.get('register_error')}", name)
    if ctx.settings.quality_gate:
        passes, why = _quality_gate(record.get("metrics") or {})
        if not passes:
            ctx.ledger.merge(L.JOB, name, gated=True, gate_reason=why)
            log.warning("job %s held back by the quality gate: %s; nothing deployed", name, why)
            return Outcome("gated", why, name)
        log.info("job %s passes the quality gate: %s", name, why)

    model = _model_of(record, ctx.settings)
    if model is None:
        model = _register_once(record, ctx)
        if model is None:
            current = ctx.ledger.get(L.JOB, name)
            if current is not None and current.get("register_error"):
                return Outcome("error", f"registration failed: {current.get('register_error')}", name)
            return Outcome("in_progress", "another delivery is registering the model", name)
    ctx.ledger.create(L.MODEL, model.ref, MODEL_REGISTERED, job_name=name, base_model=model.base_model, registered_at=_now_iso())
    return _deploy_registered_model(model, ctx, reason=f"job {name} completed")


def _model_of(record: Record, settings: Settings) -> ModelRef | None:
    if not record.get("model_version"):
        return None
    return ModelRef(
        name=record.get("registered_model_name") or record.get("model_name") or settings.model_name,
        version=str(record.get("model_version")),
        job_name=record.id,
        base_model=record.get("base_model") or settings.base_model_name,
    )


def _register_once(record: Record, ctx: _Context) -> ModelRef | None:
    """Register the job's model under an ETag claim on the job record; None when someone else holds it."""
    name = record.id
    claimed: Record | None = None
    for _ in range(10):
        current = ctx.ledger.get(L.JOB, name)
        if current is None or current.state != COMPLETED:
            return None
        existing = _model_of(current, ctx.settings)
        if existing is not None:
            return existing
        since = L.parse_iso(current.get("registering_since"))
        if since is not None and L.utcnow() - since < REGISTRATION_CLAIM_TTL:
            return None
        try:
            claimed = ctx.ledger.update(current, registering_since=_now_iso())
            break
        except L.ConflictError:
            continue
    if claimed is None:
        return None

    model_name = claimed.get("model_name") or ctx.settings.model_name
    try:
        registered = ctx.backend.register_model(name, model_name)
    except TransientBackendError:
        ctx.ledger.merge(L.JOB, name, registering_since=None)  # let the retry claim it at once
        raise
    except BackendError as exc:
        ctx.ledger.merge(L.JOB, name, registering_since=None, register_error=str(exc))
        log.error("job %s: registering model %s failed: %s; nothing deployed", name, model_name, exc)
        return None
    model = ModelRef(
        name=registered.name,
        version=str(registered.version),
        job_name=name,
        base_model=registered.base_model or claimed.get("base_model") or ctx.settings.base_model_name,
    )
    ctx.ledger.merge(
        L.JOB,
        name,
        registering_since=None,
        registered_model_name=model.name,
        model_version=model.version,
        model=model.ref,
        registered_at=_now_iso(),
    )
    log.info("job %s: registered model %s", name, model.ref)
    return model


def _deploy_registered_model(model: ModelRef, ctx: _Context, *, reason: str) -> Outcome:
    """Start the deployment of a freshly registered model, exactly once."""
    ep_name = endpoint_name(model.name, model.version)
    won = ctx.ledger.transition(L.MODEL, model.ref, {MODEL_REGISTERED}, MODEL_DEPLOYING, endpoint=ep_name)
    if won is None:
        return Outcome("done", "deployment already started", model.job_name, model.ref, ep_name)
    deploy_model(model, reason=reason, settings=ctx.settings, ledger=ctx.ledger, backend=ctx.backend)
    return Outcome("deploying", reason, model.job_name, model.ref, ep_name)


# --------------------------------------------------------------------------- deployment


def deploy_model(
    model: ModelRef,
    *,
    reason: str,
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    backend: MLBackend | None = None,
) -> Record:
    """Create (or revive) ``model``'s endpoint and start its deployment; never waits.

    Idempotent: the endpoint name is derived from the model; the endpoint record is created in
    "provisioning" (or moved there from "deleted"/"failed") by exactly one caller, and only that
    caller starts the deployment. Everyone gets the endpoint's current record back.
    """
    ctx = _context(settings, ledger, backend)
    ep_name = endpoint_name(model.name, model.version)
    fields = {
        "model": model.ref,
        "model_name": model.name,
        "model_version": model.version,
        "base_model": model.base_model,
        "job_name": model.job_name,
        "instance_type": "local" if ctx.settings.ml_backend == "local" else ctx.settings.inference_instance_type,
        "deploy_reason": reason,
        "deploy_requested_at": _now_iso(),
        "error": None,
    }
    record = ctx.ledger.create(L.ENDPOINT, ep_name, EP_PROVISIONING, **fields)
    if record is None:
        record = ctx.ledger.transition(
            L.ENDPOINT,
            ep_name,
            {EP_DELETED, EP_FAILED},
            EP_PROVISIONING,
            **fields,
            active_since=None,
            deleted_at=None,
            delete_reason=None,
        )
    if record is None:  # somebody else created it, or it is live / being deleted
        current = ctx.ledger.get(L.ENDPOINT, ep_name)
        if current is None:  # deleted between our two writes: extremely rare; let the caller retry
            raise L.ConflictError(f"endpoint/{ep_name} vanished while deploying")
        return current
    ctx.ledger.transition(L.MODEL, model.ref, {MODEL_REGISTERED}, MODEL_DEPLOYING, endpoint=ep_name)
    failed = _begin_deploy(model, ep_name, ctx)
    if failed is not None:
        return failed
    log.info("deploying %s to endpoint %s (%s)", model.ref, ep_name, reason)
    return record


def _deploy_tags(model: ModelRef) -> dict[str, str]:
    return {MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model.ref, "job_name": model.job_name}


def _begin_deploy(model: ModelRef, ep_name: str, ctx: _Context) -> Record | None:
    """Start the deployment; on failure record it and return the failed endpoint record."""
    try:
        ctx.backend.begin_deploy(model, ep_name, _deploy_tags(model))
    except TransientBackendError as exc:
        # Undo the claims so the retry (Event Grid's, reconcile's or scoring's) redoes this step:
        # a failed endpoint can be revived, a registered model is deployed by whoever comes next.
        ctx.ledger.transition(L.ENDPOINT, ep_name, {EP_PROVISIONING}, EP_FAILED, error=f"transient: {exc}")
        ctx.ledger.transition(L.MODEL, model.ref, {MODEL_DEPLOYING}, MODEL_REGISTERED)
        raise
    except BackendError as exc:
        log.error("starting deployment of %s to %s failed: %s", model.ref, ep_name, exc)
        _annotate(ctx.ledger, L.MODEL, model.ref, deploy_error=str(exc))
        return ctx.ledger.transition(L.ENDPOINT, ep_name, {EP_PROVISIONING}, EP_FAILED, error=str(exc))
    return None


# --------------------------------------------------------------------------- reconcile

SUMMARY_KEYS = (
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
    "errors",
)


def reconcile(
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    backend: MLBackend | None = None,
) -> dict[str, int]:
    """Finish what events started or missed; safe at any time, repeatedly and concurrently.

    Returns counts per action (the keys of SUMMARY_KEYS). One record's error is logged and
    counted, never stops the run.
    """
    ctx = _context(settings, ledger, backend)
    summary: Counter[str] = Counter({k: 0 for k in SUMMARY_KEYS})

    for record in ctx.ledger.list(L.JOB, states={SUBMITTED, COMPLETED}):
        if record.state == COMPLETED and (_model_of(record, ctx.settings) or record.get("gated") or record.get("register_error")):
            continue  # finished; its model is followed through the model records below
        if record.state == SUBMITTED:
            summary["jobs_polled"] += 1
        _guarded(summary, f"job/{record.id}", lambda r=record: _count_outcome(summary, _handle_job(r, ctx)))

    for record in ctx.ledger.list(L.MODEL, states={MODEL_REGISTERED, MODEL_DEPLOYING}):
        _guarded(summary, f"model/{record.id}", lambda r=record: _reconcile_model(r, ctx, summary))

    for record in ctx.ledger.list(L.ENDPOINT, states={EP_PROVISIONING, EP_SUCCEEDED, EP_DELETING}):
        _guarded(summary, f"endpoint/{record.id}", lambda r=record: _reconcile_endpoint(r, ctx, summary))

    result = dict(summary)
    log.info("reconcile: %s", {k: v for k, v in result.items() if v})
    return result


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


def _model_ref_from(record: Record) -> ModelRef:
    """ModelRef of a model record (id name:version) or an endpoint record (its fields)."""
    if record.kind == L.MODEL:
        name, _, version = record.id.rpartition(":")
        return ModelRef(name, version, record.get("job_name") or "", record.get("base_model") or "")
    return ModelRef(
        record.get("model_name") or "",
        str(record.get("model_version") or ""),
        record.get("job_name") or "",
        record.get("base_model") or "",
    )


def _reconcile_model(record: Record, ctx: _Context, summary: Counter[str]) -> None:
    model = _model_ref_from(record)
    if record.state == MODEL_REGISTERED:  # its registrar stopped before the deployment started
        _count_outcome(summary, _deploy_registered_model(model, ctx, reason="reconcile: registered, not deployed"))
        return
    ep_name = record.get("endpoint") or endpoint_name(model.name, model.version)
    if ctx.ledger.get(L.ENDPOINT, ep_name) is None:  # claimed "deploying", then stopped before the endpoint record
        deploy_model(
            model, reason="reconcile: deployment never started", settings=ctx.settings, ledger=ctx.ledger, backend=ctx.backend
        )
        summary["models_deploying"] += 1


def _reconcile_endpoint(record: Record, ctx: _Context, summary: Counter[str]) -> None:
    if record.state == EP_PROVISIONING:
        _reconcile_provisioning(record, ctx, summary)
    elif record.state == EP_SUCCEEDED:
        # Normally activated when it succeeded; this covers a run that stopped in between.
        _activate(record, ctx, summary)
    elif record.state == EP_DELETING:
        # Any deletion that has finished is recorded (so scale-from-zero can revive the endpoint
        # at once); only deletions this module started are restarted here, the janitor restarts its own.
        _reconcile_deletion(record, ctx, summary)


def _reconcile_provisioning(record: Record, ctx: _Context, summary: Counter[str]) -> None:
    name = record.id
    info = ctx.backend.get_endpoint(name)
    if info is None or info.state in {EP_DELETED, EP_DELETING}:
        updated = L.parse_iso(record.updated_at)
        if updated is not None and L.utcnow() - updated < DEPLOY_RESTART_GRACE:
            summary["endpoints_provisioning"] += 1
            return
        # The begin_deploy call was lost: claim the restart (ETag) so concurrent runs do it once.
        try:
            claimed = ctx.ledger.update(record, deploy_restarted_at=_now_iso())
        except L.ConflictError:
            return
        model = _model_ref_from(claimed)
        log.warning("endpoint %s is provisioning in the ledger but unknown to the workspace; starting it again", name)
        _begin_deploy(model, name, ctx)
        summary["endpoints_restarted"] += 1
        return
    if info.state == EP_PROVISIONING:
        summary["endpoints_provisioning"] += 1
        return
    if info.state == EP_FAILED:
        moved = ctx.ledger.transition(L.ENDPOINT, name, {EP_PROVISIONING}, EP_FAILED, error=info.error or "deployment failed")
        if moved is not None:
            model_ref = record.get("model")
            if model_ref:
                _annotate(ctx.ledger, L.MODEL, model_ref, deploy_error=info.error or "deployment failed")
            log.error("endpoint %s failed to deploy %s: %s", name, record.get("model"), info.error or "no reason given")
            summary["endpoints_failed"] += 1
        return
    if info.state == EP_SUCCEEDED:
        # Traffic first: the endpoint must serve before anyone is pointed at it.
        ctx.backend.set_traffic(name)
        now = _now_iso()
        moved = ctx.ledger.transition(
            L.ENDPOINT, name, {EP_PROVISIONING}, EP_SUCCEEDED, active_since=now, deployment=info.deployment, error=None
        )
        if moved is None:
            return
        log.info("endpoint %s succeeded and serves %s", name, record.get("model"))
        model_ref = record.get("model")
        if model_ref:
            ctx.ledger.transition(
                L.MODEL, model_ref, {MODEL_REGISTERED, MODEL_DEPLOYING}, MODEL_DEPLOYED, endpoint=name, deployed_at=now
            )
        _activate(moved, ctx, summary)


def _is_newer(version: str, than: str | None) -> bool:
    if than is None or than == "":
        return True
    if version.isdigit() and str(than).isdigit():
        return int(version) > int(than)
    return version > str(than)


def _activate(record: Record, ctx: _Context, summary: Counter[str]) -> None:
    """Make ``record`` the active endpoint for its model unless a newer version already is."""
    model_name = record.get("model_name")
    version = str(record.get("model_version") or "")
    if not model_name:
        return
    previous: str | None = None
    for _ in range(10):
        active = ctx.ledger.get(L.ACTIVE, model_name)
        now = _now_iso()
        if active is None:
            if ctx.ledger.create(L.ACTIVE, model_name, ACTIVE, endpoint=record.id, model_version=version, since=now) is None:
                continue
            break
        if active.get("endpoint") == record.id:
            return
        if not _is_newer(version, active.get("model_version")):
            return  # an older endpoint that still runs: the janitor deals with it
        try:
            ctx.ledger.update(
                active, ACTIVE, endpoint=record.id, model_version=version, since=now, previous_endpoint=active.get("endpoint")
            )
        except L.ConflictError:
            continue
        previous = active.get("endpoint")
        break
    else:
        raise L.ConflictError(f"active/{model_name}: too much contention")
    summary["endpoints_activated"] += 1
    log.info("endpoint %s is now the active endpoint for %s (version %s)", record.id, model_name, version)
    if previous and previous != record.id:
        _retire_replaced(previous, record.id, ctx, summary)


def _retire_replaced(previous: str, replacement: str, ctx: _Context, summary: Counter[str]) -> None:
    summary["endpoints_replaced"] += 1
    if not ctx.settings.delete_replaced_endpoints:
        _annotate(ctx.ledger, L.ENDPOINT, previous, replaced_by=replacement, replaced_at=_now_iso())
        log.info("endpoint %s was replaced by %s; left for the idle janitor", previous, replacement)
        return
    won = ctx.ledger.transition(
        L.ENDPOINT,
        previous,
        {EP_SUCCEEDED, EP_PROVISIONING, EP_FAILED},
        EP_DELETING,
        delete_reason="replaced",
        replaced_by=replacement,
        delete_requested_at=_now_iso(),
    )
    if won is None:
        return
    log.info("endpoint %s was replaced by %s; deleting it", previous, replacement)
    _begin_delete(previous, ctx, summary)


def _begin_delete(name: str, ctx: _Context, summary: Counter[str]) -> None:
    try:
        ctx.backend.begin_delete_endpoint(name)
    except NotFoundError:
        ctx.ledger.transition(L.ENDPOINT, name, {EP_DELETING}, EP_DELETED, deleted_at=_now_iso())
        summary["endpoints_deleted"] += 1
        return
    summary["endpoints_deleting"] += 1


def _reconcile_deletion(record: Record, ctx: _Context, summary: Counter[str]) -> None:
    info = ctx.backend.get_endpoint(record.id)
    if info is None or info.state == EP_DELETED:
        if ctx.ledger.transition(L.ENDPOINT, record.id, {EP_DELETING}, EP_DELETED, deleted_at=_now_iso()) is not None:
            summary["endpoints_deleted"] += 1
            log.info("endpoint %s is deleted (%s)", record.id, record.get("delete_reason"))
        return
    if record.get("delete_reason") == "replaced" and info.state != EP_DELETING:  # the delete call was lost: start it again
        _begin_delete(record.id, ctx, summary)


def _annotate(ledger: Ledger, kind: str, id_: str, **fields: Any) -> None:
    """Add fields to an existing record without changing its state (no-op when missing)."""
    for _ in range(10):
        current = ledger.get(kind, id_)
        if current is None:
            return
        try:
            ledger.update(current, **fields)
            return
        except L.ConflictError:
            continue
