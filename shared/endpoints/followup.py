"""Follow-ups: check an in-flight deployment or deletion within seconds, not at the next reconcile.

Starting a deployment (or claiming a deletion) enqueues a message on :data:`FOLLOWUP_QUEUE`
with a short visibility delay (:func:`schedule`); the queue-triggered function
``follow_up_endpoint`` settles the endpoint (:func:`shared.reconcile.settle.follow_up`) and, while
it is still in flight, enqueues the next check with a longer delay (backed off, capped), until the
endpoint is active, failed or deleted, or :data:`MAX_CHECKS` checks were made.
``reconcile`` stays the safety net: a lost message only costs time, never state.

The queue lives in the Function App's storage (connection ``AzureWebJobsStorage``, identity-based
in Azure: the identity needs *Storage Queue Data Contributor*); the infrastructure creates it.
"""

from __future__ import annotations

import dataclasses
import logging

import orjson

from shared.clock import backoff_s
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
