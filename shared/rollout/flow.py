"""A new version beside the serving one: deploy, judge, canary, then promote or roll back.

The one owner of ``rollout/<name:version>`` records (states in :mod:`shared.ledger.records`).
Every step is an ETag-conditional transition, and every backend call is made so that repeating it
is harmless (traffic splits are set to a value, deletions of what is gone are done), so the
follow-up queue, ``reconcile`` and a redelivered event can all call :func:`advance` at any time:

- ``deploying``: the candidate's deployment starts at 0% in the champion's endpoint; ready ->
  ``evaluating``; failed -> ``failed`` (deployment deleted).
- ``evaluating``: :func:`shared.evaluation.judge_candidate` with the two answer callables
  (:mod:`shared.rollout.answers`); promote -> traffic split champion ``100 - CANARY_PERCENT`` /
  candidate ``CANARY_PERCENT``, then ``canary``; reject -> ``rejected``, deployment deleted (it
  never took traffic; the model stays registered with the reason).
- ``canary``: the deployments' own figures (:meth:`MLBackend.deployment_metrics`) through
  :mod:`shared.rollout.canary`; regression -> traffic 100% back to the champion, then
  ``rolled_back`` with the figures, deployment deleted; window over -> 100% to the candidate, then
  ``promoted`` (route, endpoint and model records through :mod:`shared.endpoints.lifecycle`), old
  deployment deleted.

Traffic always moves before the record: a crash in between leaves a state whose next step sets
the same traffic again. Deletions after a final state are finished by the next call (the record
keeps ``cleanup_done`` until they are).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from shared.backends.base import (
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    BackendError,
    DeploymentMetrics,
    ModelRef,
    NotFoundError,
)
from shared.context import Context
from shared.endpoints import capacity
from shared.endpoints.naming import slug
from shared.endpoints.versions import is_newer
from shared.ledger import ConflictError, Record, iso, parse_iso, utcnow
from shared.ledger import records as R
from shared.rollout.answers import deployment_answerer
from shared.rollout.canary import PROMOTE, ROLL_BACK, judge_canary
from shared.rollout.first import collection_of_model, model_rejected

log = logging.getLogger(__name__)

RESTART_GRACE = timedelta(seconds=60)  # a "deploying" candidate the backend does not know lost its call
Judge = Callable[..., Any]  # shared.evaluation.judge_candidate's signature

SUMMARY_KEYS = ("rollouts_started", "rollouts_evaluated", "rollouts_canary", "rollouts_promoted", "rollouts_rejected",
                "rollouts_rolled_back", "rollouts_failed")


def deployment_name_for(version: str) -> str:
    """The candidate deployment of a version: Azure ML's deployment name rule (3-32 characters)."""
    return f"version-{slug(str(version), 24) or 'x'}"


def _now() -> str:
    return iso(utcnow()) or ""


def champion_endpoint(ctx: Context, model_name: str) -> Record | None:
    """The live endpoint that serves ``model_name`` now (its route's), or None."""
    route = ctx.ledger.get(R.ROUTE, model_name)
    if route is None or not route.get("endpoint") or route.get("rollback_to"):
        return None
    endpoint = ctx.ledger.get(R.ENDPOINT, str(route.get("endpoint")))
    if endpoint is None or endpoint.state != EP_SUCCEEDED:
        return None
    return endpoint


# --------------------------------------------------------------------------- start


def begin_candidate(model: ModelRef, ctx: Context, *, reason: str) -> Record | None:
    """Deploy ``model`` beside the version that serves its name, in the same endpoint, at 0%.

    None when there is nothing to deploy beside (no live champion endpoint, rollouts off, or a
    version not newer than the champion's): the caller deploys it as its own endpoint. Called
    once the model's ``registered -> deploying`` claim is won; a redelivery finds the record.
    """
    if not ctx.settings.rollout_candidates:
        return None
    existing = ctx.ledger.get(R.ROLLOUT, model.ref)
    if existing is not None:
        return existing
    champion = champion_endpoint(ctx, model.name)
    if champion is None:
        return None
    champion_version = str(champion.get("model_version") or "")
    if not is_newer(model.version, champion_version):
        return None
    deployment = deployment_name_for(model.version)
    capacity.ensure_room(ctx, what=f"candidate deployment {deployment} of endpoint {champion.id} for {model.ref}",
                         model_ref=model.ref)
    record = ctx.ledger.create(
        R.ROLLOUT, model.ref, R.ROLLOUT_DEPLOYING, model_name=model.name, version=model.version,
        job_name=model.job_name, base_model=model.base_model, collection=collection_of_model(ctx, model),
        endpoint=champion.id, deployment=deployment, champion_version=champion_version,
        champion_deployment=champion.get("deployment") or None, reason=reason, started_at=_now(),
        cleanup_done=False)
    if record is None:
        return ctx.ledger.get(R.ROLLOUT, model.ref)
    for other in ctx.ledger.list(R.ROLLOUT, states=R.ROLLOUT_LIVE):  # one candidate per model at a time
        if other.get("model_name") == model.name and other.id != model.ref:
            _supersede(other, ctx, f"a newer version {model.version} is deployed beside the champion")
    _annotate_endpoint_deployments(ctx, champion.id, add=deployment)
    ctx.ledger.annotate(R.MODEL, model.ref, endpoint=champion.id, deployment=deployment)
    _start_deployment(record, ctx)
    log.info("version %s of %s deploys as %s beside version %s in endpoint %s", model.version, model.name, deployment,
             champion_version, champion.id)
    _follow(champion.id, ctx)
    return record


def _start_deployment(record: Record, ctx: Context) -> None:
    try:
        ctx.backend.begin_deploy_deployment(_model_of(record), record.get("endpoint"), record.get("deployment"))
    except NotFoundError as exc:
        _supersede(record, ctx, f"the champion's endpoint is gone: {exc}")
    except BackendError as exc:  # transient or not: the next advance retries after the grace
        log.warning("starting candidate deployment %s failed: %s", record.id, exc)
        ctx.ledger.annotate(R.ROLLOUT, record.id, error=str(exc))


def _model_of(record: Record) -> ModelRef:
    return ModelRef(record.get("model_name") or "", str(record.get("version") or ""), record.get("job_name") or "",
                    record.get("base_model") or "")


def _follow(endpoint: str, ctx: Context) -> None:
    from shared.endpoints.followup import schedule

    schedule(endpoint, ctx.settings)


def roll_back_in_endpoint(model: ModelRef, endpoint: Record, ctx: Context) -> str:
    """``cli rollback`` to a version that lived as a deployment of the serving endpoint: traffic moves
    to its deployment at once when it still exists ("active"), else it is deployed there again at 0%
    and takes 100% once ready ("redeploying"; a ``rollout`` record with ``mode`` rollback, no judge,
    no canary: an operator asked for it)."""
    record = ctx.ledger.get(R.MODEL, model.ref)
    deployment = (record.get("deployment") if record else None) or deployment_name_for(model.version)
    info = ctx.backend.get_deployment(endpoint.id, deployment)
    if info is not None and info.state == EP_SUCCEEDED and info.model == model.ref:
        ctx.backend.set_traffic(endpoint.id, {deployment: 100})
        from shared.endpoints.lifecycle import promote_deployment

        promote_deployment(ctx, endpoint.id, model, deployment)
        return "active"
    deployment = deployment_name_for(model.version)
    capacity.ensure_room(ctx, what=f"rollback deployment {deployment} of endpoint {endpoint.id} for {model.ref}",
                         model_ref=model.ref)
    rollback_id = f"{model.ref}@rollback-{utcnow().strftime('%Y%m%dT%H%M%S')}"
    created = ctx.ledger.create(
        R.ROLLOUT, rollback_id, R.ROLLOUT_DEPLOYING, mode="rollback", model_name=model.name, version=model.version,
        job_name=model.job_name, base_model=model.base_model, collection=collection_of_model(ctx, model),
        endpoint=endpoint.id, deployment=deployment, champion_version=str(endpoint.get("model_version") or ""),
        champion_deployment=endpoint.get("deployment") or None, reason="rollback requested by an operator",
        started_at=_now(), cleanup_done=False)
    if created is not None:
        _annotate_endpoint_deployments(ctx, endpoint.id, add=deployment)
        _start_deployment(created, ctx)
        _follow(endpoint.id, ctx)
    return "redeploying"


def _finish_rollback(record: Record, ctx: Context, summary: Counter[str]) -> Record:
    """A rollback's deployment is ready: it takes everything (no judge, no canary)."""
    endpoint, deployment = record.get("endpoint"), record.get("deployment")
    ctx.backend.set_traffic(endpoint, {deployment: 100})
    from shared.endpoints.lifecycle import promote_deployment

    promote_deployment(ctx, endpoint, _model_of(record), deployment)
    moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_DEPLOYING}, R.ROLLOUT_PROMOTED,
                                  reason="rolled back to this version by an operator", decided_at=_now())
    if moved is not None:
        summary["rollouts_promoted"] += 1
    return moved or _reread(record, ctx)


# --------------------------------------------------------------------------- advance


def advance(record: Record, ctx: Context, summary: Counter[str] | None = None, *, judge: Judge | None = None) -> Record:
    """One step of ``record``'s rollout (as many as can be taken now); returns its current record."""
    summary = summary if summary is not None else Counter()
    for _ in range(4):  # deploying -> evaluating -> canary in one call when each is ready
        before = record.state
        if record.state == R.ROLLOUT_DEPLOYING:
            record = _settle_deploying(record, ctx, summary)
        elif record.state == R.ROLLOUT_EVALUATING:
            record = _evaluate(record, ctx, summary, judge)
        elif record.state == R.ROLLOUT_CANARY:
            record = _watch_canary(record, ctx, summary)
        if record.state == before:
            break
    if record.state not in R.ROLLOUT_LIVE and not record.get("cleanup_done"):
        record = _cleanup(record, ctx)
    return record


def advance_all(ctx: Context, summary: Counter[str] | None = None, *, endpoint: str | None = None,
                judge: Judge | None = None) -> int:
    """Advance every rollout in flight (or still cleaning up), of one endpoint when given; how many are in flight after."""
    in_flight = 0
    for record in ctx.ledger.list(R.ROLLOUT):
        if endpoint is not None and record.get("endpoint") != endpoint:
            continue
        if record.state == R.ROLLOUT_REJECTED and record.get("cleanup_done"):
            try:
                record = _forced_on(record, ctx) or record
            except Exception:  # noqa: BLE001 - retried next call
                log.warning("rollout %s: forced promotion failed; retried next call", record.id, exc_info=True)
        if record.state in R.ROLLOUT_LIVE or not record.get("cleanup_done"):
            try:
                record = advance(record, ctx, summary, judge=judge)
            except ConflictError:
                log.info("rollout %s moved meanwhile; the next call goes on", record.id)
            except Exception:  # one rollout must not stop the others; the next call retries it
                log.warning("rollout %s: step failed; retried next call", record.id, exc_info=True)
            if record.state in R.ROLLOUT_LIVE:
                in_flight += 1
    return in_flight


def _forced_on(record: Record, ctx: Context) -> Record | None:
    """An operator's ``cli promote --force`` of a rejected candidate (its evaluation record turned
    "promoted"): its deployment is started again beside the champion and it goes on to the canary
    (the evaluation then returns the operator's verdict at once)."""
    evaluation = ctx.ledger.get(R.EVALUATION, record.id)
    if evaluation is None or evaluation.state != R.EVAL_PROMOTED or record.get("mode") == "rollback":
        return None
    if _champion_gone(record, ctx):
        return None  # nothing serves beside which to canary it; a newer version will be judged instead
    capacity.ensure_room(ctx, what=f"forced candidate deployment {record.get('deployment')} of endpoint "
                                   f"{record.get('endpoint')} for {record.id}", model_ref=record.id)
    moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_REJECTED}, R.ROLLOUT_DEPLOYING, cleanup_done=False,
                                  forced_at=_now(), reason="promoted by an operator after its rejection",
                                  verdict=None, decided_at=None)
    if moved is None:
        return None
    ctx.ledger.transition(R.MODEL, record.id, {R.MODEL_REJECTED}, R.MODEL_DEPLOYING)
    _annotate_endpoint_deployments(ctx, record.get("endpoint"), add=record.get("deployment"))
    _start_deployment(moved, ctx)
    log.info("rollout %s: forced on by an operator; redeploying %s beside the champion", record.id, record.get("deployment"))
    return ctx.ledger.get(R.ROLLOUT, record.id) or moved


def _champion_gone(record: Record, ctx: Context) -> str | None:
    endpoint = ctx.ledger.get(R.ENDPOINT, record.get("endpoint") or "")
    if endpoint is None or endpoint.state != EP_SUCCEEDED:
        return f"endpoint {record.get('endpoint')} is {endpoint.state if endpoint else 'gone'}"
    if str(endpoint.get("model_version") or "") != str(record.get("champion_version") or ""):
        return f"the champion of endpoint {endpoint.id} changed to version {endpoint.get('model_version')}"
    return None


def _settle_deploying(record: Record, ctx: Context, summary: Counter[str]) -> Record:
    gone = _champion_gone(record, ctx)
    if gone:
        return _supersede(record, ctx, gone)
    info = ctx.backend.get_deployment(record.get("endpoint"), record.get("deployment"))
    if info is None:
        updated = parse_iso(record.updated_at)
        if updated is not None and utcnow() - updated > RESTART_GRACE:
            claimed = ctx.ledger.update(record, restarted_at=_now())  # ETag: one restart per grace
            _start_deployment(claimed, ctx)
            return ctx.ledger.get(R.ROLLOUT, record.id) or claimed
        return record
    if info.state == EP_PROVISIONING:
        return record
    if info.state == EP_FAILED:
        moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_DEPLOYING}, R.ROLLOUT_FAILED,
                                      reason=f"candidate deployment failed: {info.error or 'no reason given'}",
                                      decided_at=_now())
        if moved is not None:
            summary["rollouts_failed"] += 1
            model_rejected(ctx, record.id, moved.get("reason"))
        return moved or _reread(record, ctx)
    if record.get("mode") == "rollback":
        return _finish_rollback(record, ctx, summary)
    moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_DEPLOYING}, R.ROLLOUT_EVALUATING, ready_at=_now())
    return moved or _reread(record, ctx)


def _judge_function(judge: Judge | None) -> Judge:
    if judge is not None:
        return judge
    from shared.evaluation import judge_candidate  # helper F1's half of #24

    return judge_candidate


def _evaluate(record: Record, ctx: Context, summary: Counter[str], judge: Judge | None) -> Record:
    gone = _champion_gone(record, ctx)
    if gone:
        return _supersede(record, ctx, gone)
    endpoint, deployment = record.get("endpoint"), record.get("deployment")
    tokens = int(getattr(ctx.settings, "eval_max_new_tokens", 64))
    answer_candidate = deployment_answerer(ctx.backend, endpoint, deployment, max_new_tokens=tokens)
    champion_deployment = record.get("champion_deployment") or _champion_deployment(ctx, endpoint)
    answer_champion = deployment_answerer(ctx.backend, endpoint, champion_deployment, max_new_tokens=tokens)
    verdict = _judge_function(judge)(ctx, collection=record.get("collection") or "default",
                                     candidate_version=str(record.get("version")), answer_candidate=answer_candidate,
                                     answer_champion=answer_champion, champion_version=record.get("champion_version"))
    if not getattr(verdict, "decided", True):
        return ctx.ledger.annotate(R.ROLLOUT, record.id, evaluation_note=verdict.reason) or record
    summary["rollouts_evaluated"] += 1
    decision = {"promote": bool(verdict.promote), "reason": verdict.reason, "metrics": verdict.metrics,
                "report_blob": verdict.report_blob}
    if not verdict.promote:
        moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_EVALUATING}, R.ROLLOUT_REJECTED, verdict=decision,
                                      reason=f"rejected by evaluation: {verdict.reason}", decided_at=_now())
        if moved is not None:
            summary["rollouts_rejected"] += 1
            model_rejected(ctx, record.id, moved.get("reason"))
            log.warning("candidate %s rejected by evaluation: %s", record.id, verdict.reason)
        return moved or _reread(record, ctx)
    percent = ctx.settings.canary_percent
    # Traffic first: the record says "canary" only once the split is in place.
    ctx.backend.set_traffic(endpoint, {champion_deployment: 100 - percent, deployment: percent})
    started = utcnow()
    canary = {"percent": percent, "started_at": iso(started),
              "until": iso(started + timedelta(minutes=ctx.settings.canary_minutes)),
              "requests_target": ctx.settings.canary_requests or None, "figures": None}
    moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_EVALUATING}, R.ROLLOUT_CANARY, verdict=decision,
                                  canary=canary, champion_deployment=champion_deployment)
    if moved is not None:
        summary["rollouts_canary"] += 1
        log.info("candidate %s passed evaluation (%s); canary at %d%% until %s", record.id, verdict.reason, percent,
                 canary["until"])
    return moved or _reread(record, ctx)


def _champion_deployment(ctx: Context, endpoint: str) -> str:
    info = ctx.backend.get_endpoint(endpoint)
    if info is None or not info.deployment:
        raise NotFoundError(f"endpoint {endpoint} has no serving deployment")
    return info.deployment


def _watch_canary(record: Record, ctx: Context, summary: Counter[str]) -> Record:
    gone = _champion_gone(record, ctx)
    if gone:
        return _supersede(record, ctx, gone)
    endpoint, deployment = record.get("endpoint"), record.get("deployment")
    champion_deployment = record.get("champion_deployment")
    canary = dict(record.get("canary") or {})
    started = parse_iso(canary.get("started_at")) or utcnow()
    operator = _operator_rejected(ctx, record.id)
    info = ctx.backend.get_deployment(endpoint, deployment)
    failed = None if info is not None and info.state in {EP_SUCCEEDED, EP_PROVISIONING} else (
        (info.error if info is not None else None) or f"deployment {deployment} is {info.state if info else 'gone'}")
    figures = ctx.backend.deployment_metrics(endpoint, started)
    cand, champ = figures.get(deployment), figures.get(champion_deployment)
    until = parse_iso(canary.get("until"))
    target = canary.get("requests_target")
    window_over = (until is not None and utcnow() >= until) or bool(target and cand and cand.requests >= int(target))
    call = judge_canary(cand, champ, ctx.settings, deployment_failed=failed, window_over=window_over)
    if operator:
        call = type(call)(ROLL_BACK, operator)
    shown = {"candidate": _figures(cand), "champion": _figures(champ), "at": _now()}
    if call.action == ROLL_BACK:
        ctx.backend.set_traffic(endpoint, {champion_deployment: 100})  # traffic back first
        moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_CANARY}, R.ROLLOUT_ROLLED_BACK,
                                      canary={**canary, "figures": shown}, reason=f"rolled back: {call.reason}",
                                      decided_at=_now())
        if moved is not None:
            summary["rollouts_rolled_back"] += 1
            model_rejected(ctx, record.id, moved.get("reason"))
            log.warning("candidate %s rolled back: %s (figures %s)", record.id, call.reason, shown)
        return moved or _reread(record, ctx)
    if call.action == PROMOTE:
        ctx.backend.set_traffic(endpoint, {deployment: 100})
        from shared.endpoints.lifecycle import promote_deployment  # the owner of endpoint, route and model records

        promote_deployment(ctx, endpoint, _model_of(record), deployment)
        moved = ctx.ledger.transition(R.ROLLOUT, record.id, {R.ROLLOUT_CANARY}, R.ROLLOUT_PROMOTED,
                                      canary={**canary, "figures": shown}, reason=f"promoted: {call.reason}",
                                      decided_at=_now())
        if moved is not None:
            summary["rollouts_promoted"] += 1
            log.info("candidate %s promoted: %s", record.id, call.reason)
        return moved or _reread(record, ctx)
    try:
        return ctx.ledger.update(record, canary={**canary, "figures": shown})
    except ConflictError:
        return _reread(record, ctx)


def _figures(m: DeploymentMetrics | None) -> dict[str, Any] | None:
    return m.as_dict() if m is not None else None


def _operator_rejected(ctx: Context, model_id: str) -> str | None:
    """An operator's ``cli reject`` of a candidate in its canary (F1's evaluation record)."""
    evaluation = ctx.ledger.get(getattr(R, "EVALUATION", "evaluation"), model_id)
    if evaluation is not None and evaluation.state == "rejected":
        return f"rejected by an operator during the canary: {evaluation.get('reason') or 'no reason given'}"
    return None


def _supersede(record: Record, ctx: Context, why: str) -> Record:
    if record.state == R.ROLLOUT_CANARY:
        champion_deployment = record.get("champion_deployment")
        try:
            ctx.backend.set_traffic(record.get("endpoint"), {champion_deployment: 100})
        except NotFoundError:
            pass
    moved = ctx.ledger.transition(R.ROLLOUT, record.id, R.ROLLOUT_LIVE, R.ROLLOUT_SUPERSEDED, reason=why,
                                  decided_at=_now())
    if moved is not None:
        log.info("rollout %s superseded: %s", record.id, why)
    return moved or _reread(record, ctx)


def _reread(record: Record, ctx: Context) -> Record:
    return ctx.ledger.get(R.ROLLOUT, record.id) or record


def _annotate_endpoint_deployments(ctx: Context, endpoint: str, *, add: str | None = None,
                                   remove: str | None = None) -> None:
    """The endpoint record's ``deployments``: its live candidate deployments (for the capacity cap and status)."""
    def attempt() -> None:
        current = ctx.ledger.get(R.ENDPOINT, endpoint)
        if current is None:
            return
        names = [n for n in (current.get("deployments") or []) if n != remove]
        if add and add not in names:
            names.append(add)
        ctx.ledger.update(current, deployments=names)

    from shared.ledger import retry_on_conflict

    retry_on_conflict(attempt, f"endpoint/{endpoint} deployments")


def _cleanup(record: Record, ctx: Context) -> Record:
    """After a final state: delete the deployment that lost (the candidate, or the old champion)."""
    endpoint = record.get("endpoint")
    doomed = record.get("champion_deployment") if record.state == R.ROLLOUT_PROMOTED else record.get("deployment")
    if doomed:
        try:
            ctx.backend.begin_delete_deployment(endpoint, doomed)
        except NotFoundError:
            pass  # gone already (or the whole endpoint is)
        _annotate_endpoint_deployments(ctx, endpoint, remove=record.get("deployment"))
    try:
        return ctx.ledger.update(record, cleanup_done=True, deleted_deployment=doomed, cleaned_at=_now())
    except ConflictError:
        return _reread(record, ctx)
