"""The first version of a collection: judged against the absolute floors before it takes traffic.

With no version serving there is nothing to compare with, so the promotion rule's other branch
applies (:func:`shared.evaluation.decision.decide`: every ``EVAL_FLOORS`` minimum met, every rule
of ``EVAL_RULES`` kept). The first version is deployed as its own endpoint (as always) and, once
its deployment answers, :func:`first_version_gate` asks it the collection's eval set through the
real serving path, pinned to its deployment (the endpoint routes nothing yet), before
:func:`shared.endpoints.lifecycle.settle_provisioning` gives it any traffic:

- ``OPEN``: judged and promoted (or not a first version: a route exists, so this is the champion
  coming back, e.g. scale from zero or a heal, which is never judged again);
- ``WAIT``: not decided yet (the time budget ran out, another worker judges it, or the caller
  must not block on an evaluation); the next settle goes on;
- ``REJECTED``: below a floor or breaking a rule; the model is recorded ``rejected`` with the
  reason and the caller deletes the endpoint. It never took traffic.
"""

from __future__ import annotations

import logging
from typing import Any

from shared.backends.base import ModelRef
from shared.context import Context
from shared.ledger import iso, utcnow
from shared.ledger import records as R
from shared.rollout.answers import deployment_answerer

log = logging.getLogger(__name__)

OPEN, WAIT, REJECTED = "open", "wait", "rejected"


def collection_of_model(ctx: Context, model: ModelRef) -> str:
    job = ctx.ledger.get(R.JOB, model.job_name) if model.job_name else None
    return str((job.get("collection") if job else None) or "default")


def model_rejected(ctx: Context, model_id: str, reason: str | None) -> None:
    """The model stays registered, with the reason it never took (or lost) traffic."""
    now = iso(utcnow())
    moved = ctx.ledger.transition(R.MODEL, model_id, {R.MODEL_DEPLOYING}, R.MODEL_REJECTED,
                                  rejected_reason=reason, rejected_at=now)
    if moved is None:
        ctx.ledger.annotate(R.MODEL, model_id, rejected_reason=reason, rejected_at=now)


def first_version_gate(ctx: Context, endpoint: Any, deployment: str | None, *, evaluate: bool = True,
                       judge: Any = None) -> str:
    """``endpoint``: the provisioning endpoint's ledger record, its deployment ready to answer."""
    if not ctx.settings.rollout_candidates or not deployment or not endpoint.get("model_name"):
        return OPEN
    model = ModelRef(str(endpoint.get("model_name")), str(endpoint.get("model_version") or ""),
                     str(endpoint.get("job_name") or ""), str(endpoint.get("base_model") or ""))
    if ctx.ledger.get(R.ROUTE, model.name) is not None:
        return OPEN  # a version of this model served before: not the first (the champion redeployed)
    from shared.evaluation import decision_for, judge_candidate

    verdict = decision_for(ctx.ledger, model.ref)
    if verdict is None or not verdict.decided:
        if not evaluate:
            return WAIT
        answer = deployment_answerer(ctx.backend, endpoint.id, deployment,
                                     max_new_tokens=int(ctx.settings.eval_max_new_tokens))
        verdict = (judge or judge_candidate)(ctx, collection=collection_of_model(ctx, model),
                                             candidate_version=model.version, answer_candidate=answer,
                                             answer_champion=None)
    if not verdict.decided:
        ctx.ledger.annotate(R.ENDPOINT, endpoint.id, evaluation_note=verdict.reason)
        return WAIT
    ctx.ledger.annotate(R.ENDPOINT, endpoint.id, first_version_verdict={"promote": bool(verdict.promote),
                                                                        "reason": verdict.reason})
    if verdict.promote:
        log.info("first version %s judged against the floors: %s", model.ref, verdict.reason)
        return OPEN
    reason = f"first version rejected by evaluation: {verdict.reason}"
    model_rejected(ctx, model.ref, reason)
    log.warning("%s: %s; its endpoint %s is deleted, it never took traffic", model.ref, reason, endpoint.id)
    return REJECTED
