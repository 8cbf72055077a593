"""Follow-ups: check an in-flight deployment or deletion within seconds, not at the next reconcile.

Starting a deployment (or claiming a deletion) enqueues a message on :data:`FOLLOWUP_QUEUE`
with a short visibility delay; the queue-triggered function ``follow_up_endpoint`` settles the
endpoint through :mod:`shared.endpoints.lifecycle` (the owner of endpoint and route records) and,
while it is still in flight, enqueues the next check with a longer delay (backed off, capped),
until the endpoint is active, failed or deleted, or :data:`MAX_CHECKS` checks were made.
``reconcile`` stays the safety net: a lost message only costs time, never state.

The queue lives in the Function App's storage (connection ``AzureWebJobsStorage``, identity-based
in Azure: the identity needs *Storage Queue Data Contributor*); the infrastructure creates it.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import Counter

import orjson

from shared.backends.base import EP_DELETING, EP_PROVISIONING
from shared.clock import backoff_s
from shared.context import context
from shared.endpoints import lifecycle
from shared.ledger import ENDPOINT, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

FOLLOWUP_QUEUE = "endpoint-followups"
# Delay before check n (seconds): every 2 s for the first half minute (a local endpoint is up in
# seconds, and a check is one cheap queue message), then backed off to every 30 s (an Azure ML
# deployment takes minutes). 75 checks cover about half an hour.
FIRST_DELAY_S = 2.0
FAST_CHECKS = 15
MAX_DELAY_S = 30.0
MAX_CHECKS = 75


def delay_before(check: int) -> float:
    """Seconds before check number ``check`` (1-based): 2 (15 times), then 4, 8, 16, 30, 30, ..."""
    if check <= FAST_CHECKS:
        return FIRST_DELAY_S
    return backoff_s(FIRST_DELAY_S, check - FAST_CHECKS, MAX_DELAY_S)


@dataclasses.dataclass(frozen=True)
class FollowUp:
    endpoint: str
    check: int = 1  # which check this message is

    def encode(self) -> bytes:
        return orjson.dumps({"endpoint": self.endpoint, "check": self.check})

    @classmethod
    def decode(cls, body: bytes) -> FollowUp:
        try:
            data = orjson.loads(body)
            return cls(str(data["endpoint"]), int(data.get("check", 1)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"follow-up message is not {{'endpoint': NAME, 'check': N}}: {exc}") from None


def schedule(endpoint: str, settings: Settings, check: int = 1) -> bool:
    """Enqueue check ``check`` of ``endpoint``, visible after :func:`delay_before`; False when it
    could not be enqueued (logged: reconcile settles the endpoint anyway)."""
    if not settings.endpoint_followups:
        return False
    from azure.core.exceptions import AzureError

    from shared.storage import send_queue_message

    try:
        send_queue_message(FOLLOWUP_QUEUE, FollowUp(endpoint, check).encode(), settings, int(round(delay_before(check))))
    except AzureError as exc:
        log.warning("could not schedule follow-up %d of endpoint %s (%s); reconcile will settle it",
                    check, endpoint, type(exc).__name__)
        return False
    return True


def follow_up(body: bytes, settings: Settings | None = None) -> str:
    """Handle one follow-up message; returns what happened (for the log and tests):
    ``settled`` (no longer in flight), ``rescheduled``, ``gave_up`` or ``gone``."""
    ctx = context(settings)
    message = FollowUp.decode(body)
    record = ctx.ledger.get(ENDPOINT, message.endpoint)
    if record is None:
        return "gone"
    summary: Counter[str] = Counter()
    if record.state == EP_PROVISIONING:
        lifecycle.settle_provisioning(record, ctx, summary)
    elif record.state == EP_DELETING:
        info = lifecycle.current_endpoint(ctx.backend, record.id)
        lifecycle.settle_deletion(record, info, ctx.backend, ctx.ledger, utcnow())
    # A candidate beside the endpoint's champion (shared.rollout): judged, canaried, decided here too.
    from shared.rollout import advance_all  # the rollout schedules these follow-ups itself

    rollouts = advance_all(ctx, summary, endpoint=message.endpoint)
    after = ctx.ledger.get(ENDPOINT, message.endpoint)
    if (after is None or after.state not in (EP_PROVISIONING, EP_DELETING)) and not rollouts:
        log.info("follow-up %d: endpoint %s is %s", message.check, message.endpoint, after.state if after else "gone")
        return "settled"
    if message.check >= MAX_CHECKS:
        log.warning("endpoint %s is still %s after %d follow-ups; reconcile keeps checking it",
                    message.endpoint, after.state if after else "gone", message.check)
        return "gave_up"
    schedule(message.endpoint, ctx.settings, message.check + 1)
    return "rescheduled"


