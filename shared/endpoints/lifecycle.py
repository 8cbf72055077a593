"""Online endpoints, the only owner of endpoint and route (``active/<model>``) records.

Deploy (create or revive an endpoint and start its deployment, never waiting), settle a
provisioning endpoint (traffic, succeeded, the model deployed), activate it (the route of its
model, unless a newer version already serves), retire the endpoint it replaced, start and finish
deletions (for the janitor and for replaced endpoints alike). Every change is an ETag-conditional
transition of :mod:`shared.ledger.records`' state machine, so repeated or concurrent callers act
once.
"""

from __future__ import annotations

import dataclasses
import logging
import sys
from collections import Counter
from datetime import datetime, timedelta
from typing import Any

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
    MLBackend,
    ModelRef,
    NotFoundError,
    TransientBackendError,
)
from shared.context import Context, context
from shared.endpoints import capacity
from shared.endpoints.naming import endpoint_name
from shared.endpoints.serving import lived_in
from shared.endpoints.versions import is_newer, version_key
from shared.ledger import ConflictError, Ledger, Record, iso, parse_iso, retry_on_conflict, utcnow
from shared.ledger import records as R
from shared.settings import Settings, get_settings

log = logging.getLogger(__name__)

# An endpoint record in "provisioning" that the backend still does not know after this long
# lost its begin_deploy call (crash or error between the ledger write and the call).
DEPLOY_RESTART_GRACE = timedelta(seconds=60)


def _now_iso() -> str:
    return iso(utcnow()) or ""


def start_deployment(model: ModelRef, ctx: Context, *, reason: str) -> tuple[bool, str]:
    """Start the deployment of a freshly registered model, exactly once: (started by this call, endpoint name)."""
    ep_name = endpoint_name(model.name, model.version)
    won = ctx.ledger.transition(R.MODEL, model.ref, {R.MODEL_REGISTERED}, R.MODEL_DEPLOYING, endpoint=ep_name)
    if won is None:
        return False, ep_name
    candidate = deploy_beside_champion(model, ctx, reason=reason)
    if candidate is not None:
        return True, str(candidate.get("endpoint"))
    deploy_model(model, reason=reason, settings=ctx.settings, ledger=ctx.ledger, backend=ctx.backend)
    return True, ep_name


def deploy_beside_champion(model: ModelRef, ctx: Context, *, reason: str) -> Record | None:
    """A newer version of a model that an endpoint serves goes into that endpoint as a candidate
    deployment (:mod:`shared.rollout`); None when there is no such endpoint (deploy it as its own)."""
    from shared.rollout import begin_candidate  # the rollout calls back into this module

    return begin_candidate(model, ctx, reason=reason)


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
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    backend: MLBackend | None = None,
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
    ctx = context(settings, ledger, backend)
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
    _follow(ep_name, ctx.settings)
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


def _follow(ep_name: str, settings: Settings) -> None:
    """Have the endpoint checked within seconds while it is in flight (reconcile is the safety net)."""
    from shared.endpoints.followup import schedule  # followup calls back into this module

    schedule(ep_name, settings)


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
    _clear_replaced_mark(record.id, ctx)
    summary["endpoints_activated"] += 1
    log.info("endpoint %s is now the active endpoint for %s (version %s)", record.id, model_name, version)
    if previous and previous != record.id:
        _retire_replaced(previous, record.id, ctx, summary)


def _clear_replaced_mark(ep_name: str, ctx: Context) -> None:
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
    _follow(previous, ctx.settings)
    try:
        ctx.backend.begin_delete_endpoint(previous)
    except NotFoundError:
        if finish_deletion(ctx.ledger, previous, utcnow()):
            summary["endpoints_deleted"] += 1
        return
    summary["endpoints_deleting"] += 1


# --------------------------------------------------------------------------- deletions

# A "deleting" record the backend still shows as live after this long lost its delete call
# (a crash or an error between the ledger claim and the backend call).
LOST_DELETE_AFTER = timedelta(minutes=2)


def claim_deletion(ledger: Ledger, record: Record, *, reason: str, at: datetime, **fields: Any) -> Record:
    """``succeeded`` -> ``deleting``, conditional on ``record`` being unchanged since it was read
    (raises ConflictError otherwise: a request recorded meanwhile wins)."""
    claimed = ledger.update(record, EP_DELETING, delete_reason=reason, delete_requested_at=iso(at), error=None, **fields)
    _follow(record.id, get_settings())
    return claimed


def undo_deletion_claim(ledger: Ledger, name: str, *, error: str, at: datetime) -> None:
    """The delete call failed: back to ``succeeded`` so it keeps serving and the next run tries again."""
    ledger.transition(R.ENDPOINT, name, [EP_DELETING], EP_SUCCEEDED, error=error, delete_failed_at=iso(at))


def finish_deletion(ledger: Ledger, name: str, at: datetime) -> bool:
    """``deleting`` -> ``deleted`` once the backend no longer has the endpoint; True when this call recorded it."""
    return ledger.transition(R.ENDPOINT, name, [EP_DELETING], EP_DELETED, deleted_at=iso(at)) is not None


def settle_deletion(record: Record, info: Any, backend: MLBackend, ledger: Ledger, now: datetime) -> str | None:
    """Follow one ``deleting`` record, given the backend's current view of it (``info``, None when gone).

    Returns ``"deleted"`` when this call recorded the deletion, ``"restarted"`` when the delete
    call had been lost and was started again (claimed by ETag, so concurrent callers restart it
    once), None when the deletion is still running or someone else acted. Raises BackendError
    when the restart fails.
    """
    if info is None or info.state == EP_DELETED:
        if finish_deletion(ledger, record.id, now):
            log.info("endpoint %s is deleted (%s)", record.id, record.get("delete_reason"))
            return "deleted"
        return None
    claimed_at = parse_iso(record.updated_at)
    if info.state == EP_DELETING or claimed_at is None or now - claimed_at <= LOST_DELETE_AFTER:
        return None
    try:
        ledger.update(record, delete_restarted_at=iso(now))
    except ConflictError:
        return None
    log.warning("endpoint %s is deleting in the ledger but %s in the backend; deleting it again", record.id, info.state)
    try:
        backend.begin_delete_endpoint(record.id)
    except NotFoundError:
        finish_deletion(ledger, record.id, now)
        return "deleted"
    return "restarted"


def current_endpoint(backend: MLBackend, name: str, listed: dict[str, Any] | None = None) -> Any:
    """The backend's view of one endpoint (from ``listed`` when given), None when it does not exist."""
    if listed and name in listed:
        return listed[name]
    try:
        return backend.get_endpoint(name)
    except NotFoundError:
        return None


# --------------------------------------------------------------------------- rollback


class RollbackError(ValueError):
    """The rollback cannot be done as asked (unknown model or version, nothing older); says why."""


@dataclasses.dataclass(frozen=True)
class Rollback:
    model_name: str
    from_version: str | None
    to_version: str
    endpoint: str
    state: str  # "active": serving now; "redeploying": its endpoint is being redeployed, active when ready


def rollback(
    model_name: str,
    version: str | None = None,
    *,
    settings: Settings | None = None,
    ledger: Ledger | None = None,
    backend: MLBackend | None = None,
) -> Rollback:
    """Make an earlier version of ``model_name`` the one its route serves (default: the newest
    version older than the active one).

    When that version's endpoint still serves, the route points at it at once; otherwise its
    endpoint is redeployed and the route records ``rollback_to``: the current version keeps serving
    until the old one is ready, then :func:`activate` switches. Either way the route keeps
    ``rolled_back_from`` (no version up to it takes over automatically again; a newer fine-tune
    does) and the rollback is appended to its ``rollbacks`` history.
    """
    ctx = context(settings, ledger, backend)
    prefix = f"{model_name}:"
    models = {r.id[len(prefix):]: r for r in ctx.ledger.list(R.MODEL) if r.id.startswith(prefix)}
    route = ctx.ledger.get(R.ROUTE, model_name)
    if not models:
        raise RollbackError(f"no registered model named {model_name!r}")
    current = str(route.get("model_version") or "") or None if route is not None else None
    if version is None:
        older = [v for v in models if current is None or is_newer(current, v)]
        if not older:
            raise RollbackError(f"model {model_name!r} has no version older than {current} to roll back to")
        version = max(older, key=version_key)
    if version not in models:
        known = ", ".join(sorted(models, key=version_key))
        raise RollbackError(f"model {model_name!r} has no version {version!r} (registered: {known})")
    if version == current and route is not None and not route.get("rollback_to"):
        raise RollbackError(f"version {version} of {model_name!r} is already the active one")
    serving_ep = ctx.ledger.get(R.ENDPOINT, str(route.get("endpoint") or "")) if route is not None else None
    if (serving_ep is not None and serving_ep.state == EP_SUCCEEDED
            and str(serving_ep.get("model_version") or "") != version
            and lived_in(serving_ep, models[version])):
        # The version lived (or lives) as a deployment of the serving endpoint: traffic moves between
        # that endpoint's deployments (shared.rollout), never to another endpoint.
        from shared.rollout import roll_back_in_endpoint

        state = roll_back_in_endpoint(model_ref_of(models[version]), serving_ep, ctx)
        log.info("rolling %s back from version %s to %s inside endpoint %s (%s)", model_name, current, version,
                 serving_ep.id, state)
        return Rollback(model_name, current, version, serving_ep.id, state)
    ep_name = endpoint_name(model_name, version)
    endpoint = ctx.ledger.get(R.ENDPOINT, ep_name)
    info = current_endpoint(ctx.backend, ep_name) if endpoint is not None and endpoint.state == EP_SUCCEEDED else None
    live = info is not None and info.state == EP_SUCCEEDED
    now = _now_iso()
    entry = {"at": now, "from_version": current, "to_version": version, "endpoint": ep_name,
             "redeployed": not live}

    def hold(existing: Record | None) -> str | None:
        held = [v for v in (current, existing.get("rolled_back_from") if existing else None) if v]
        return max(held, key=version_key) if held else None

    def attempt() -> None:
        existing = ctx.ledger.get(R.ROUTE, model_name)
        history = list((existing.get("rollbacks") if existing else None) or [])[-19:] + [entry]
        if live:
            fields = {"endpoint": ep_name, "model_version": version, "since": now, "rollback_to": None,
                      "previous_endpoint": existing.get("endpoint") if existing else None}
        else:
            fields = {"rollback_to": version}
        fields.update(rolled_back_from=hold(existing), rollbacks=history)
        if existing is None:
            fields.setdefault("endpoint", None)
            if ctx.ledger.create(R.ROUTE, model_name, R.ROUTE_SET, **fields) is None:
                raise ConflictError(f"route/{model_name} created concurrently")
        else:
            ctx.ledger.update(existing, R.ROUTE_SET, **fields)

    retry_on_conflict(attempt, f"active/{model_name}")
    if live:
        _clear_replaced_mark(ep_name, ctx)
        log.info("rolled %s back from version %s to %s (endpoint %s)", model_name, current, version, ep_name)
        return Rollback(model_name, current, version, ep_name, "active")
    model = model_ref_of(models[version])
    deploy_model(model, reason="rollback", settings=ctx.settings, ledger=ctx.ledger, backend=ctx.backend)
    log.info("rolling %s back from version %s to %s: redeploying it to %s", model_name, current, version, ep_name)
    return Rollback(model_name, current, version, ep_name, "redeploying")


def cli_rollback(args: Any) -> int:
    """``python -m shared.cli rollback MODEL [VERSION]`` (or ``MODEL:VERSION``, as ``model`` names it in scoring)."""
    model, version = args.model, args.version
    if version is None and ":" in model:
        model, _, version = model.rpartition(":")
    try:
        done = rollback(model, version or None)
    except (RollbackError, capacity.CapacityError) as exc:
        print(f"rollback: {exc}", file=sys.stderr)
        return 2
    if done.state == "active":
        print(f"{done.model_name}: version {done.to_version} is active again (was {done.from_version}), "
              f"served by endpoint {done.endpoint}")
    else:
        print(f"{done.model_name}: redeploying version {done.to_version} to endpoint {done.endpoint}; it becomes "
              f"active when ready (version {done.from_version} serves until then)")
    return 0
