"""Settle one endpoint record in flight: a provisioning endpoint gets its traffic, succeeds or
fails; a deleting one is recorded deleted, or its lost delete call is started again.

Written once, used twice: by :func:`shared.reconcile.run.reconcile` for every endpoint in flight,
and by :func:`follow_up` (the queue-triggered ``follow_up_endpoint``) for one endpoint, within
seconds of the deployment or deletion starting (:mod:`shared.endpoints.followup` schedules the
messages). The endpoint records themselves are written by :mod:`shared.endpoints.lifecycle` and
:mod:`shared.endpoints.deletion`, their only owners.
"""

from __future__ import annotations

import logging
from collections import Counter

from shared import rollout
from shared.backends.base import EP_DELETING, EP_PROVISIONING
from shared.context import Context, context
from shared.endpoints import deletion, lifecycle
from shared.endpoints.followup import MAX_CHECKS, FollowUp, schedule
from shared.ledger import ENDPOINT, Record, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

IN_FLIGHT = (EP_PROVISIONING, EP_DELETING)


def settle_endpoint(record: Record, ctx: Context, summary: Counter[str]) -> None:
    """One step for an endpoint record in flight (``provisioning`` or ``deleting``); other states are left alone.

    A finished deletion is recorded at once (so scale-from-zero can revive the endpoint); a lost
    delete call is started again (the janitor does the same, claimed by ETag).
    """
    if record.state == EP_PROVISIONING:
        lifecycle.settle_provisioning(record, ctx, summary)
    elif record.state == EP_DELETING:
        info = deletion.current_endpoint(ctx.backend, record.id)
        done = deletion.settle_deletion(record, info, ctx.backend, ctx.ledger, utcnow())
        if done == "deleted":
            summary["endpoints_deleted"] += 1
        elif done == "restarted":
            summary["endpoints_deleting"] += 1


def follow_up(body: bytes, settings: Settings | None = None) -> str:
    """Handle one follow-up message; returns what happened (for the log and tests):
    ``settled`` (no longer in flight), ``rescheduled``, ``gave_up`` or ``gone``."""
    ctx = context(settings)
    message = FollowUp.decode(body)
    record = ctx.ledger.get(ENDPOINT, message.endpoint)
    if record is None:
        return "gone"
    summary: Counter[str] = Counter()
    settle_endpoint(record, ctx, summary)
    # A candidate beside the endpoint's champion (shared.rollout): judged, canaried, decided here too.
    rollouts = rollout.advance_all(ctx, summary, endpoint=message.endpoint)
    after = ctx.ledger.get(ENDPOINT, message.endpoint)
    if (after is None or after.state not in IN_FLIGHT) and not rollouts:
        log.info("follow-up %d: endpoint %s is %s", message.check, message.endpoint, after.state if after else "gone")
        return "settled"
    if message.check >= MAX_CHECKS:
        log.warning("endpoint %s is still %s after %d follow-ups; reconcile keeps checking it",
                    message.endpoint, after.state if after else "gone", message.check)
        return "gave_up"
    schedule(message.endpoint, ctx.settings, message.check + 1)
    return "rescheduled"
