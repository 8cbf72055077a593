"""The delivery of a scheduled submission (:mod:`shared.training.due`): advance the collection now.

Called by the queue-triggered function ``submit_due_collection`` when a collection's window
closes. It decides and acts as every other delivery does
(:func:`shared.training.submission.advance_collection`: the policy, then the ledger claim), so a
message delivered twice, two workers at once, or a ``reconcile`` run at the same moment submit
the collection's corpus once; the others find it submitted (or the claim taken) and do nothing.
"""

from __future__ import annotations

import logging

from shared.context import context
from shared.ledger import Ledger, iso, utcnow
from shared.settings import Settings, get_settings
from shared.training import policy as P
from shared.training.due import MAX_ATTEMPTS, DueSubmission, schedule
from shared.training.submission import advance_collection

log = logging.getLogger(__name__)


def submit_when_due(body: bytes, settings: Settings | None = None) -> str:
    """Handle one message; returns what happened (for the log and tests): ``submitted``,
    ``rescheduled`` (it came early: sent again for the rest of the window), ``other_ledger``,
    ``off`` (upload mode) or the policy's reason for not submitting (``nothing``, ``waiting_for_job``,
    ``submission_in_progress``, ``held``, ``pending``): those are someone else's to finish
    (the job's end, the claimant, ``reconcile``)."""
    s = settings or get_settings()
    message = DueSubmission.decode(body)
    if message.ledger and message.ledger != s.ledger_table:
        log.info("submission of collection %s is for ledger %s, not %s: ignored", message.collection, message.ledger, s.ledger_table)
        return "other_ledger"
    if s.training_mode != "corpus":
        return "off"
    outcome = advance_collection(message.collection, context(settings=s, ledger=Ledger.from_settings(s)))
    if outcome.action == "submitted":
        log.info("collection %s: due at %s, submitted as job %s", message.collection, iso(message.due_at), outcome.job_name)
        return "submitted"
    early = outcome.action == P.WAIT and outcome.due_at is not None and outcome.due_at > utcnow()
    if early and outcome.due_at == message.due_at and message.attempt < MAX_ATTEMPTS:
        # (a different due time was recorded, and scheduled, by whoever moved the window)
        schedule(message.collection, message.due_at, s, message.attempt + 1)
        return "rescheduled"
    log.info("collection %s: not submitted by its scheduled delivery: %s", message.collection, outcome.reason)
    return outcome.action
