"""Scoring while the ledger (Table Storage) is unreachable: known routes keep serving, bounded.

Every scoring call needs a route (model -> endpoint). A worker caches it for ``ROUTE_TTL_S`` and
then re-reads the ledger. When that read fails because storage is down (connection refused,
timeout, 5xx), the route read last is still used for up to ``SCORING_ROUTE_MAX_STALE_S``
seconds after it was read from the ledger (default 300 s): that is the most stale a route served
here can be. Meanwhile the ledger is asked again at most every ``OUTAGE_RECHECK_S`` seconds per
model, so an outage does not add a failed storage call to every request. A model with no known
route (or one older than the limit) gets 503 + ``Retry-After: OUTAGE_RETRY_AFTER_S``: storage
calls on this path never retry and time out after ``CONNECT_TIMEOUT_S`` / ``READ_TIMEOUT_S``
(:func:`shared.storage.bounded_table_service`), so that answer comes within a second when storage
refuses connections or does not answer them.

Activity seen while storage is down is kept and written when it is back
(:class:`shared.scoring.activity.ActivityRecorder`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.ledger import Ledger
from shared.scoring.contract import UNAVAILABLE, ScoringError
from shared.settings import Settings

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 0.5
READ_TIMEOUT_S = 2.0
OUTAGE_RECHECK_S = 5.0
OUTAGE_RETRY_AFTER_S = 10


def scoring_ledger(settings: Settings) -> Ledger:
    """The ledger as scoring reads it: no retries, short timeouts (module doc)."""
    from shared.storage import bounded_table_service

    service = bounded_table_service(settings, connect_s=CONNECT_TIMEOUT_S, read_s=READ_TIMEOUT_S)
    return Ledger(service.get_table_client(settings.ledger_table))


def is_storage_outage(exc: BaseException) -> bool:
    """Storage could not be reached or failed on its side (not: the request itself was wrong)."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        return status in (408, 429) or status >= 500
    return isinstance(exc, ConnectionError | TimeoutError)


def ledger_unavailable(what: str = "the model's route") -> ScoringError:
    return ScoringError(
        503,
        f"the app's storage is unreachable and {what} is not known to this worker; retry later",
        type=UNAVAILABLE,
        code="storage_unavailable",
        retry_after=OUTAGE_RETRY_AFTER_S,
    )


class RouteCache:
    """When each model's route was last read from the ledger, and the stale fallback (module doc)."""

    def __init__(self, max_stale_s: float, clock: Callable[[], float] = time.monotonic):
        self.max_stale_s = max_stale_s
        self._clock = clock
        self._read_at: dict[str, float] = {}
        self._lock = threading.Lock()

    def read(self, model_name: str) -> None:
        """The model's route was just read from the ledger."""
        with self._lock:
            self._read_at[model_name] = self._clock()

    def age_s(self, model_name: str) -> float | None:
        with self._lock:
            at = self._read_at.get(model_name)
        return None if at is None else self._clock() - at

    def fallback(self, model_name: str, route: Any, exc: BaseException) -> Any:
        """The cached ``route`` to use although the ledger read failed with ``exc``, or the 503 to answer.

        Re-raises ``exc`` when it is not a storage outage. The returned route is ``route`` with
        its expiry moved ``OUTAGE_RECHECK_S`` ahead (never past the staleness limit).
        """
        if not is_storage_outage(exc):
            raise exc
        age = self.age_s(model_name)
        if route is None or age is None or age > self.max_stale_s:
            log.warning("ledger unreachable (%s) and no route of model %s read in the last %.0f s: 503",
                        type(exc).__name__, model_name, self.max_stale_s)
            raise ledger_unavailable() from None
        left = self.max_stale_s - age
        log.warning("ledger unreachable (%s): serving model %s from its route read %.0f s ago (at most %.0f s more)",
                    type(exc).__name__, model_name, age, left)
        import dataclasses

        return dataclasses.replace(route, expires_at=self._clock() + min(OUTAGE_RECHECK_S, left))
