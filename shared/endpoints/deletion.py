"""Deleting an endpoint, in three recorded steps: claim (``succeeded`` -> ``deleting``, ETag-
conditional, so one caller deletes), the backend's delete call, and the record of its end
(``deleting`` -> ``deleted``); a delete call lost in between is started again.

Used alike by the idle janitor, by a replaced endpoint's retirement and a rejected first
version (:mod:`shared.endpoints.lifecycle`), and by reconcile and the follow-ups
(:mod:`shared.reconcile.settle`).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

from shared.backends.base import EP_DELETED, EP_DELETING, EP_SUCCEEDED, MLBackend, NotFoundError
from shared.endpoints.followup import schedule
from shared.ledger import ConflictError, Ledger, Record, iso, parse_iso
from shared.ledger import records as R
from shared.settings import get_settings

log = logging.getLogger(__name__)

# A "deleting" record the backend still shows as live after this long lost its delete call
# (a crash or an error between the ledger claim and the backend call).
LOST_DELETE_AFTER = timedelta(minutes=2)


def claim_deletion(ledger: Ledger, record: Record, *, reason: str, at: datetime, **fields: Any) -> Record:
    """``succeeded`` -> ``deleting``, conditional on ``record`` being unchanged since it was read
    (raises ConflictError otherwise: a request recorded meanwhile wins)."""
    claimed = ledger.update(record, EP_DELETING, delete_reason=reason, delete_requested_at=iso(at), error=None, **fields)
    schedule(record.id, get_settings())  # followed within seconds (reconcile is the safety net)
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
