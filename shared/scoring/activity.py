"""Endpoint activity for the idle janitor, recorded cheaply from the scoring hot path.

A ledger write per request would cost a Table Storage round trip on every call and turn
busy endpoints into write hot spots. Instead each worker writes an endpoint's
``last_activity`` at most once per ``activity_flush_s`` (the first call of each window is
written; the janitor's idle threshold is minutes to hours, so that precision is plenty), and
the write runs on a background thread so it adds no latency to the request.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime

from shared.backends.base import EP_SUCCEEDED
from shared.ledger import ENDPOINT, ConflictError, Ledger, iso, parse_iso, retry_on_conflict, utcnow

log = logging.getLogger(__name__)


def record_last_activity(ledger: Ledger, endpoint_name: str, at: datetime) -> bool:
    """Move the endpoint record's ``last_activity`` forward to ``at``; True when written.

    Only a live (succeeded) endpoint record is touched: activity must never revive a record
    the janitor has meanwhile marked deleting or deleted. A later time written by another
    worker is never overwritten with an earlier one.
    """

    def attempt() -> bool:
        record = ledger.get(ENDPOINT, endpoint_name)
        if record is None or record.state != EP_SUCCEEDED:
            return False
        current = parse_iso(record.get("last_activity"))
        if current is not None and current >= at:
            return False
        ledger.update(record, last_activity=iso(at))
        return True

    try:
        return retry_on_conflict(attempt, f"endpoint/{endpoint_name} last activity", attempts=5)
    except ConflictError:
        return False  # others kept writing a later time meanwhile


class ActivityRecorder:
    """Per-worker throttle in front of :func:`record_last_activity`."""

    def __init__(self, ledger_factory: Callable[[], Ledger], flush_s: float, clock: Callable[[], float] = time.monotonic):
        self._ledger_factory = ledger_factory
        self._flush_s = flush_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_flush: dict[str, float] = {}
        self._pending: set[Future[bool]] = set()
        self._executor: ThreadPoolExecutor | None = None

    def touch(self, endpoint_name: str) -> bool:
        """Note a successful call; schedule a ledger write when this window has none yet."""
        now = self._clock()
        with self._lock:
            last = self._last_flush.get(endpoint_name)
            if last is not None and now - last < self._flush_s:
                return False
            self._last_flush[endpoint_name] = now
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-activity")
            future = self._executor.submit(self._write, endpoint_name, utcnow())
            self._pending.add(future)
        future.add_done_callback(self._done)
        return True

    def _write(self, endpoint_name: str, at: datetime) -> bool:
        try:
            written = record_last_activity(self._ledger_factory(), endpoint_name, at)
            log.debug("activity of %s at %s recorded=%s", endpoint_name, iso(at), written)
            return written
        except Exception:
            # Losing one activity mark is harmless (the next window writes again); make the
            # next call retry sooner rather than wait a whole window.
            log.warning("could not record activity of endpoint %s", endpoint_name, exc_info=True)
            with self._lock:
                self._last_flush.pop(endpoint_name, None)
            return False

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the writes scheduled so far (tests, shutdown)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout_s)

    def close(self) -> None:
        self.drain()
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
