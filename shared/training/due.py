"""A due collection submits itself: its submission is scheduled for its due time on a queue.

When a collection becomes pending (its first accepted upload opens the coalescing window, or a
retirement moves the window), :mod:`shared.training.submission` enqueues one message on
:data:`SUBMISSION_QUEUE`, invisible until the window closes (``due_at``). The queue-triggered
function ``submit_due_collection`` then advances the collection (:mod:`shared.training.delivery`):
the submission is claimed in the ledger as any other delivery's, so a redelivered message,
concurrent workers and ``reconcile`` still submit the corpus once. Data arriving during the window
changes nothing here: the due time is fixed by the first pending upload and the message is sent
only when the recorded due time changes. ``reconcile`` stays the safety net: a lost message only
costs time (until its next run), never state.

The queue lives in the Function App's storage (connection ``AzureWebJobsStorage``, identity-based
in Azure: the identity needs *Storage Queue Data Contributor*); the infrastructure creates it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from datetime import datetime

import orjson

from shared.ledger import iso, parse_iso, utcnow
from shared.settings import Settings

log = logging.getLogger(__name__)

SUBMISSION_QUEUE = "collection-submissions"
# A message that arrives before its due time (clock skew, a window longer than the queue's 7-day
# limit) is sent again for the rest of the window, at most this many times.
MAX_ATTEMPTS = 20


@dataclasses.dataclass(frozen=True)
class DueSubmission:
    """The message: which collection, due when, for which ledger (tests and stacks may share a storage account)."""

    collection: str
    due_at: datetime
    ledger: str
    attempt: int = 1

    def encode(self) -> bytes:
        return orjson.dumps({"collection": self.collection, "due_at": iso(self.due_at), "ledger": self.ledger,
                             "attempt": self.attempt})

    @classmethod
    def decode(cls, body: bytes) -> DueSubmission:
        try:
            data = orjson.loads(body)
            due = parse_iso(str(data["due_at"]))
            if due is None:
                raise ValueError("due_at is empty")
            return cls(str(data["collection"]), due, str(data.get("ledger") or ""), int(data.get("attempt", 1)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError("collection submission message is not {'collection': NAME, 'due_at': ISO TIME, "
                             f"'ledger': TABLE, 'attempt': N}}: {exc}") from None


def delay_s(due_at: datetime, now: datetime | None = None) -> int:
    """Whole seconds until ``due_at`` (rounded up, so the message is never visible before it; 0 when past)."""
    return max(0, math.ceil((due_at - (now or utcnow())).total_seconds()))


def schedule(collection: str, due_at: datetime, settings: Settings, attempt: int = 1) -> bool:
    """Enqueue the collection's submission, visible at ``due_at``; False when switched off
    (``COLLECTION_SUBMISSIONS=false``) or when it could not be sent (logged: ``reconcile`` submits it)."""
    if not settings.collection_submissions or settings.training_mode != "corpus":
        return False
    from azure.core.exceptions import AzureError

    from shared.storage import send_queue_message

    message = DueSubmission(collection, due_at, settings.ledger_table, attempt)
    try:
        send_queue_message(SUBMISSION_QUEUE, message.encode(), settings, delay_s(due_at))
    except AzureError as exc:
        log.warning("could not schedule the submission of collection %s due %s (%s); reconcile will submit it",
                    collection, iso(due_at), type(exc).__name__)
        return False
    log.info("collection %s: submission scheduled for %s (queue %s)", collection, iso(due_at), SUBMISSION_QUEUE)
    return True
