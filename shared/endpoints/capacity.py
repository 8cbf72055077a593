"""The cap on live endpoints and deployments (``MAX_LIVE_ENDPOINTS``), enforced where deployments start.

Every endpoint the app creates or revives (:func:`shared.endpoints.lifecycle.deploy_model`: a new
model version, scale from zero, a heal, a rollback) and every candidate deployment started beside
a champion (:func:`shared.rollout.flow.begin_candidate`) asks :func:`ensure_room` first. Live
means what bills: each endpoint the ledger has in ``provisioning`` or ``succeeded`` counts its
serving deployment, plus each candidate deployment listed on its record (``deployments``).
At the cap the start is refused with :class:`CapacityError`; its reason is recorded on the
model's record (``deploy_refused_reason`` / ``deploy_refused_at``, shown by ``status`` and the
dashboard) and logged. Nothing is started, so a refused version is deployed by the next
caller once room is freed (the janitor deletes an idle endpoint, reconcile retries a model left
``deploying``).

The count is read from the ledger just before the endpoint record is claimed; two deployments
started in the same instant by two workers can both see the last free place (the cap is then
passed by at most the number of concurrent starters minus one, until one of them is deleted).
"""

from __future__ import annotations

import logging

from shared.backends.base import EP_PROVISIONING, EP_SUCCEEDED, BackendError
from shared.context import Context
from shared.ledger import ENDPOINT, MODEL, Ledger, iso, utcnow

log = logging.getLogger(__name__)

LIVE_STATES = frozenset({EP_PROVISIONING, EP_SUCCEEDED})


class CapacityError(BackendError):
    """Starting one more endpoint or deployment would pass ``MAX_LIVE_ENDPOINTS``; says which are live."""


def live_deployments(ledger: Ledger) -> list[str]:
    """``endpoint`` / ``endpoint/deployment`` of every live deployment, per the ledger (module doc)."""
    live: list[str] = []
    for record in ledger.list(ENDPOINT, states=LIVE_STATES):
        live.append(record.id)
        champion = record.get("deployment")
        live.extend(f"{record.id}/{d}" for d in sorted(set(record.get("deployments") or []) - {champion}))
    return live


def ensure_room(ctx: Context, *, what: str, model_ref: str | None = None) -> None:
    """Raise :class:`CapacityError` (and record why on ``model_ref``'s record) when ``what`` would be
    one live endpoint or deployment more than ``MAX_LIVE_ENDPOINTS`` allows."""
    cap = ctx.settings.max_live_endpoints
    live = live_deployments(ctx.ledger)
    if len(live) < cap:
        return
    shown = ", ".join(live[:10]) + (f" and {len(live) - 10} more" if len(live) > 10 else "")
    reason = (f"not started: {what} would pass MAX_LIVE_ENDPOINTS={cap} "
              f"({len(live)} live: {shown}); it starts once one of them is deleted")
    log.warning("deployment refused: %s", reason)
    if model_ref:
        ctx.ledger.annotate(MODEL, model_ref, deploy_refused_reason=reason, deploy_refused_at=iso(utcnow()))
    raise CapacityError(reason)
