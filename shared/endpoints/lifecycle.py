"""The life of an endpoint record, from deploy to serving: the owner of endpoint and route
(``active/<model>``) records, with :mod:`.deletion` (claim, delete, record deleted) and
:mod:`.rollback` (an earlier version serves again).

Deploy (create or revive an endpoint and start its deployment, never waiting), settle a
provisioning endpoint (traffic, succeeded, the model deployed), activate it (the route of its
model, unless a newer version already serves), promote a candidate that took all of its endpoint
(:mod:`shared.rollout`), retire the endpoint it replaced. Every change is an ETag-conditional
transition of :mod:`shared.ledger.records`' state machine, so repeated or concurrent callers act
once. Nothing here calls the rollout, which calls in (the endpoint side of the two never imports
:mod:`shared.rollout`; a first version's gate is :mod:`shared.rollout.first`).
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import timedelta

from shared.backends.base import (
    EP_DELETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    LOCAL_INSTANCE_TYPE,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    BackendError,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)
from shared.context import Context
from shared.endpoints import capacity
from shared.endpoints.deletion import claim_deletion, finish_deletion
from shared.endpoints.followup import schedule
from shared.endpoints.naming import endpoint_name
from shared.endpoints.versions import is_newer
from shared.ledger import ConflictError, Ledger, Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R

log = logging.getLogger(__name__)

# An endpoint record in "provisioning" that the backend still does not know after this long
# lost its begin_deploy call (crash or error between the ledger write and the call).
DEPLOY_RESTART_GRACE = timedelta(seconds=60)


def _now_iso() -> str:
    return iso(utcnow()) or ""


def promote_deployment(ctx: Context, ep_name: str, model: ModelRef, deployment: str) -> None:
    """A candidate took 100% of its endpoint (:mod:`shared.rollout`): the endpoint record now serves
    its model, the route names its version, the model is deployed. Idempotent."""
    now = _now_iso()

    def endpoint_attempt() -> None:
        current = ctx.ledger.get(R.ENDPOINT, ep_name)
        if current is None or current.get("model") == model.ref:
            return
        ctx.ledger.update(current, model=model.ref, model_name=model.name, model_version=model.version,
                          job_name=model.job_name, base_model=model.base_model, deployment=deployment,
                          previous_model=current.get("model"), previous_deployment=current.get("deployment"),
                          promoted_at=now)

    retry_on_conflict(endpoint_attempt, f"endpoint/{ep_name}")

    def route_attempt() -> None:
        route = ctx.ledger.get(R.ROUTE, model.name)
        if route is None:
            if ctx.ledger.create(R.ROUTE, model.name, R.ROUTE_SET, endpoint=ep_name, model_version=model.version,
                                 since=now) is None:
                raise ConflictError(f"route/{model.name} created concurrently")
            return
        if route.get("endpoint") == ep_name and str(route.get("model_version") or "") == model.version:
            return
        ctx.ledger.update(route, R.ROUTE_SET, endpoint=ep_name, model_version=model.version, since=now,
                          previous_endpoint=route.get("endpoint"), previous_version=route.get("model_version"),
                          rollback_to=None)

    retry_on_conflict(route_attempt, f"active/{model.name}")
    ctx.ledger.transition(R.MODEL, model.ref, {R.MODEL_REGISTERED, R.MODEL_DEPLOYING}, R.MODEL_DEPLOYED,
                          endpoint=ep_name, deployment=deployment, deployed_at=now)
    log.info("version %s of %s serves all of endpoint %s (deployment %s)", model.version, model.name, ep_name, deployment)


def deploy_model(
    model: ModelRef,
    *,
    reason: str,
    ctx: Context,
    endpoint: str | None = None,
) -> Record:
    """Create (or revive) ``model``'s endpoint and start its deployment; never waits.

    Idempotent: the endpoint name is derived from the model (:func:`home_endpoint`; ``endpoint``
    names it instead: the health loop redeploys the failed endpoint itself); the endpoint record is
    created in "provisioning" (or moved there from "deleted"/"failed") by exactly one caller, and
    only that caller starts the deployment. Everyone gets the endpoint's current record back.

    Raises :class:`shared.endpoints.capacity.CapacityError` (reason recorded on the model's record)
    instead of starting an endpoint that would pass ``MAX_LIVE_ENDPOINTS``.
    """
    ep_name = endpoint or home_endpoint(model, ctx.ledger)
    existing = ctx.ledger.get(R.ENDPOINT, ep_name)
    if existing is None or existing.state in {EP_DELETED, EP_FAILED}:  # this call would start one more
        capacity.ensure_room(ctx, what=f"endpoint {ep_name} for {model.ref} ({reason})", model_ref=model.ref)
    fields = {
        "model": model.ref,
        "model_name": model.name,
        "model_version": model.version,
        "base_model": model.base_model,
        "job_name": model.job_name,
        "instance_type": LOCAL_INSTANCE_TYPE if ctx.settings.ml_backend == "local" else ctx.settings.inference_instance_type,
        "deploy_reason": reason,
        "deploy_requested_at": _now_iso(),
        "error": None,
        # A new deployment: an earlier decision to stop healing (not needed, attempts spent) no
        # longer holds; the health loop decides again from its route (serving.endpoint_need).
        "heal_stopped_at": None,
        "heal_stopped_reason": None,
    }
    record = ctx.ledger.create(R.ENDPOINT, ep_name, EP_PROVISIONING, **fields)
    if record is None:
        record = ctx.ledger.transition(
            R.ENDPOINT,
            ep_name,
            {EP_DELETED, EP_FAILED},
            EP_PROVISIONING,
            **fields,
            active_since=None,
            deleted_at=None,
            delete_reason=None,
        )
    if record is None:  # somebody else created it, or it is live / being deleted
        current = ctx.ledger.get(R.ENDPOINT, ep_name)
        if current is None:  # deleted between our two writes: extremely rare; let the caller retry
            raise ConflictError(f"endpoint/{ep_name} vanished while deploying")
        return current
    ctx.ledger.transition(R.MODEL, model.ref, {R.MODEL_REGISTERED}, R.MODEL_DEPLOYING, endpoint=ep_name)
    _clear_refusal(model.ref, ctx)
    failed = _begin_deploy(model, ep_name, ctx)
    if failed is not None:
        return failed
    log.info("deploying %s to endpoint %s (%s)", model.ref, ep_name, reason)
    schedule(ep_name, ctx.settings)  # checked within seconds while in flight (reconcile is the safety net)
    return record


def _clear_refusal(model_ref: str, ctx: Context) -> None:
    """A deployment starts: an earlier refusal at the cap (shared.endpoints.capacity) is history."""
    record = ctx.ledger.get(R.MODEL, model_ref)
    if record is not None and record.get("deploy_refused_reason"):
        ctx.ledger.annotate(R.MODEL, model_ref, deploy_refused_reason=None, deploy_refused_at=None)


def home_endpoint(model: ModelRef, ledger: Ledger) -> str:
    """The endpoint a version is (re)deployed to: the one it was promoted into beside an earlier
    version (its model record's ``endpoint``, while that endpoint's record names it), else the
    name derived from the version."""
    record = ledger.get(R.MODEL, model.ref)
    home = record.get("endpoint") if record is not None and record.get("deployment") else None
    if home:
        endpoint = ledger.get(R.ENDPOINT, str(home))
        if endpoint is not None and endpoint.get("model") == model.ref:
            return str(home)
    return endpoint_name(model.name, model.version)


def _deploy_tags(model: ModelRef) -> dict[str, str]:
    return {MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model.ref, "job_name": model.job_name}


def _begin_deploy(model: ModelRef, ep_name: str, ctx: Context) -> Record | None:
    """Start the deployment; on failure record it and return the failed endpoint record."""
    try:
        ctx.backend.begin_deploy(model, ep_name, _deploy_tags(model))
    except TransientBackendError as exc:
        # Undo the claims so the retry (Event Grid's, reconcile's or scoring's) redoes this step:
        # a failed endpoint can be revived, a registered model is deployed by whoever comes next.
        ctx.ledger.transition(R.ENDPOINT, ep_name, {EP_PROVISIONING}, EP_FAILED, error=f"transient: {exc}")
        ctx.ledger.transition(R.MODEL, model.ref, {R.MODEL_DEPLOYING}, R.MODEL_REGISTERED)
        raise
    except BackendError as exc:
        log.error("starting deployment of %s to %s failed: %s", model.ref, ep_name, exc)
        ctx.ledger.annotate(R.MODEL, model.ref, deploy_error=str(exc))
        return ctx.ledger.transition(R.ENDPOINT, ep_name, {EP_PROVISIONING}, EP_FAILED, error=str(exc))
    return None


def model_ref_of(record: Record) -> ModelRef:
    """ModelRef of a model record (id name:version) or an endpoint record (its fields)."""
    if record.kind == R.MODEL:
        name, _, version = record.id.rpartition(":")
        return ModelRef(name, version, record.get("job_name") or "", record.get("base_model") or "")
    return ModelRef(
        record.get("model_name") or "",
        str(record.get("model_version") or ""),
        record.get("job_name") or "",
        record.get("base_model") or "",
    )


def settle_provisioning(record: Record, ctx: Context, summary: Counter[str], *, evaluate: bool = True) -> None:
    """``evaluate`` False (a client's request settling it): a first version not judged yet waits
    for the follow-up or reconcile to judge it (:mod:`shared.rollout.first`)."""
    name = record.id
    info = ctx.backend.get_endpoint(name)
    if info is None or info.state in {EP_DELETED, EP_DELETING}:
        updated = parse_iso(record.updated_at)
        if updated is not None and utcnow() - updated < DEPLOY_RESTART_GRACE:
            summary["endpoints_provisioning"] += 1
            return
        # The begin_deploy call was lost: claim the restart (ETag) so concurrent runs do it once.
        try:
            claimed = ctx.ledger.update(record, deploy_restarted_at=_now_iso())
        except ConflictError:
            return
        model = model_ref_of(claimed)
        log.warning("endpoint %s is provisioning in the ledger but unknown to the workspace; starting it again", name)
        _begin_deploy(model, name, ctx)
        summary["endpoints_restarted"] += 1
        return
    if info.state == EP_PROVISIONING:
        summary["endpoints_provisioning"] += 1
        return
    if info.state == EP_FAILED:
        moved = ctx.ledger.transition(R.ENDPOINT, name, {EP_PROVISIONING}, EP_FAILED, error=info.error or "deployment failed")
        if moved is not None:
            model_ref = record.get("model")
            if model_ref:
                ctx.ledger.annotate(R.MODEL, model_ref, deploy_error=info.error or "deployment failed")
            log.error("endpoint %s failed to deploy %s: %s", name, record.get("model"), info.error or "no reason given")
            summary["endpoints_failed"] += 1
        return
    if info.state == EP_SUCCEEDED:
        from shared.rollout.first import REJECTED, WAIT, first_version_gate  # a collection's first version: the floors

        gate = first_version_gate(ctx, record, info.deployment, evaluate=evaluate)
        if gate == WAIT:
            summary["endpoints_provisioning"] += 1
            return
        if gate == REJECTED:
            _delete_rejected(name, ctx, summary)
            return
        # Traffic first: the endpoint must serve before anyone is pointed at it.
        ctx.backend.set_traffic(name)
        now = _now_iso()
        moved = ctx.ledger.transition(
            R.ENDPOINT, name, {EP_PROVISIONING}, EP_SUCCEEDED, active_since=now, deployment=info.deployment, error=None
        )
        if moved is None:
            return
        log.info("endpoint %s succeeded and serves %s", name, record.get("model"))
        model_ref = record.get("model")
        if model_ref:
            ctx.ledger.transition(
                R.MODEL, model_ref, {R.MODEL_REGISTERED, R.MODEL_DEPLOYING}, R.MODEL_DEPLOYED, endpoint=name, deployed_at=now,
                deployment=info.deployment,
            )
        activate(moved, ctx, summary)


def _delete_rejected(name: str, ctx: Context, summary: Counter[str]) -> None:
    """A first version rejected by evaluation: its endpoint (which never took traffic) is deleted."""
    why = "its model was rejected by evaluation (first version below the floors)"
    failed = ctx.ledger.transition(R.ENDPOINT, name, {EP_PROVISIONING}, EP_FAILED, error=why)
    if failed is None:
        return
    try:
        claim_deletion(ctx.ledger, failed, reason=why, at=utcnow())
    except ConflictError:
        return
    try:
        ctx.backend.begin_delete_endpoint(name)
    except NotFoundError:
        finish_deletion(ctx.ledger, name, utcnow())
    except BackendError as exc:  # the deletion's follow-up starts it again (settle_deletion)
        log.warning("deleting endpoint %s of a rejected first version failed: %s", name, exc)
    summary["endpoints_rejected"] += 1


def activate(record: Record, ctx: Context, summary: Counter[str]) -> None:
    """Make ``record`` the endpoint that serves its model (its route) unless a newer version already does."""
    model_name = record.get("model_name")
    version = str(record.get("model_version") or "")
    if not model_name:
        return

    def attempt() -> tuple[bool, str | None]:  # (changed, previous endpoint)
        route = ctx.ledger.get(R.ROUTE, model_name)
        now = _now_iso()
        if route is None:
            if ctx.ledger.create(R.ROUTE, model_name, R.ROUTE_SET, endpoint=record.id, model_version=version, since=now) is None:
                raise ConflictError(f"route/{model_name} created concurrently")
            return True, None
        if route.get("endpoint") == record.id:
            return False, None  # already serves
        serving = ctx.ledger.get(R.ENDPOINT, str(route.get("endpoint") or ""))
        if version == str(route.get("model_version") or "") and (serving is None or serving.state != EP_SUCCEEDED):
            pass  # the route's own version, redeployed (scale from zero, heal) to another endpoint: it takes over
        elif str(route.get("rollback_to") or "") == version:
            pass  # the version a rollback asked for is ready now: it takes over
        elif not is_newer(version, route.get("model_version")) or (
            route.get("rolled_back_from") and not is_newer(version, route.get("rolled_back_from"))
        ):
            # An older endpoint that still runs (the janitor deals with it), or a version a rollback
            # stepped back from: only a version newer than that one takes over automatically.
            return False, None
        ctx.ledger.update(route, R.ROUTE_SET, endpoint=record.id, model_version=version, since=now,
                          previous_endpoint=route.get("endpoint"), rollback_to=None,
                          rolled_back_from=route.get("rolled_back_from") if route.get("rollback_to") else None)
        return True, route.get("endpoint")

    changed, previous = retry_on_conflict(attempt, f"active/{model_name}")
    if not changed:
        return
    clear_replaced_mark(record.id, ctx)
    summary["endpoints_activated"] += 1
    log.info("endpoint %s is now the active endpoint for %s (version %s)", record.id, model_name, version)
    if previous and previous != record.id:
        _retire_replaced(previous, record.id, ctx, summary)


def clear_replaced_mark(ep_name: str, ctx: Context) -> None:
    """The route serves ``ep_name`` (again: a rollback, or a reactivation): a ``replaced_by`` mark
    left from when a newer version took over is stale; drop it so nobody reads it as current."""
    record = ctx.ledger.get(R.ENDPOINT, ep_name)
    if record is not None and (record.get("replaced_by") or record.get("replaced_at")):
        ctx.ledger.annotate(R.ENDPOINT, ep_name, replaced_by=None, replaced_at=None)


def _retire_replaced(previous: str, replacement: str, ctx: Context, summary: Counter[str]) -> None:
    summary["endpoints_replaced"] += 1
    if not ctx.settings.delete_replaced_endpoints:
        ctx.ledger.annotate(R.ENDPOINT, previous, replaced_by=replacement, replaced_at=_now_iso())
        log.info("endpoint %s was replaced by %s; left for the idle janitor", previous, replacement)
        return
    won = ctx.ledger.transition(
        R.ENDPOINT,
        previous,
        {EP_SUCCEEDED, EP_PROVISIONING, EP_FAILED},
        EP_DELETING,
        delete_reason=R.DELETE_REASON_REPLACED,
        replaced_by=replacement,
        delete_requested_at=_now_iso(),
    )
    if won is None:
        return
    log.info("endpoint %s was replaced by %s; deleting it", previous, replacement)
    schedule(previous, ctx.settings)
    try:
        ctx.backend.begin_delete_endpoint(previous)
    except NotFoundError:
        if finish_deletion(ctx.ledger, previous, utcnow()):
            summary["endpoints_deleted"] += 1
        return
    summary["endpoints_deleting"] += 1
