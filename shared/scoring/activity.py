"""Endpoint activity for the idle janitor, recorded cheaply from the scoring hot path.

A ledger write per request would cost a Table Storage round trip on every call and turn
busy endpoints into write hot spots. Instead each worker writes an endpoint's
``last_activity`` at most once per ``activity_flush_s`` (the first call of each window is
written; the janitor's idle threshold is minutes to hours, so that precision is plenty), and
the write runs on a background thread so it adds no latency to the request.

Requests are also counted per endpoint and UTC hour, in memory (one dict increment per call),
and the counts are added to the record's ``requests_by_hour`` (``{"2026-12-01T23": 17, ...}``,
the last :data:`REQUEST_HISTORY_HOURS` hours) by the same throttled write: the dashboard's
requests-per-hour and idle periods come from there.

When a write fails (storage down), nothing is lost: the endpoint's latest activity time is kept
in memory (one entry per endpoint) and written again every ``RETRY_S`` seconds until storage
takes it, so the janitor never sees an endpoint that was in use as idle once storage is back.
Later activity of the same endpoint replaces the kept time (only the latest one matters).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import datetime, timedelta

from shared.backends.base import EP_SUCCEEDED
from shared.ledger import ENDPOINT, ConflictError, Ledger, iso, parse_iso, retry_on_conflict, utcnow

log = logging.getLogger(__name__)

REQUEST_HISTORY_HOURS = 24 * 7
RETRY_S = 5.0  # how often activity kept during a storage outage is written again



def hour_key(at: datetime) -> str:
    """The ``requests_by_hour`` key of ``at``'s UTC hour (ISO 8601, sorts as text)."""
    return iso(at)[:13]  # type: ignore[index]


def add_request_counts(current: dict[str, int] | None, counts: dict[str, int], now: datetime) -> dict[str, int]:
    """``current`` plus ``counts``, hour by hour, keeping the last REQUEST_HISTORY_HOURS hours."""
    merged = dict(current or {})
    for hour, n in counts.items():
        merged[hour] = int(merged.get(hour, 0)) + int(n)
    oldest = hour_key(now - timedelta(hours=REQUEST_HISTORY_HOURS))
    return {h: merged[h] for h in sorted(merged) if h > oldest}


def record_last_activity(ledger: Ledger, endpoint_name: str, at: datetime, counts: dict[str, int] | None = None) -> bool:
    """Move the endpoint record's ``last_activity`` forward to ``at``; True when written.

    Only a live (succeeded) endpoint record is touched: activity must never revive a record
    the janitor has meanwhile marked deleting or deleted. A later time written by another
    worker is never overwritten with an earlier one. ``counts`` (requests by hour key) are added
    to the record's ``requests_by_hour``.
    """

    def attempt() -> bool:
        record = ledger.get(ENDPOINT, endpoint_name)
        if record is None or record.state != EP_SUCCEEDED:
            return False
        current = parse_iso(record.get("last_activity"))
        later = current is None or at > current
        if not later and not counts:
            return False
        fields: dict[str, object] = {"last_activity": iso(at)} if later else {}
        if counts:
            fields["requests_by_hour"] = add_request_counts(record.get("requests_by_hour"), counts, at)
        ledger.update(record, **fields)
        return later

    try:
        return retry_on_conflict(attempt, f"endpoint/{endpoint_name} last activity", attempts=5)
    except ConflictError:
        return False  # others kept writing a later time meanwhile


class ActivityRecorder:
    """Per-worker throttle in front of :func:`record_last_activity`."""

    def __init__(self, ledger_factory: Callable[[], Ledger], flush_s: float, clock: Callable[[], float] = time.monotonic,
                 retry_s: float = RETRY_S):
        self._ledger_factory = ledger_factory
        self._retry_s = retry_s
        self._unwritten: dict[str, datetime] = {}  # endpoint -> latest activity storage did not take yet
        self._retrier: threading.Thread | None = None
        self._closing = threading.Event()
        self._flush_s = flush_s
        self._clock = clock
        self._lock = threading.Lock()
        self._last_flush: dict[str, float] = {}
        self._counts: dict[str, dict[str, int]] = {}  # endpoint -> hour key -> requests not written yet
        self._latest: dict[str, datetime] = {}  # endpoint -> time of its latest call (for the counts' last write)
        self._pending: set[Future[bool]] = set()
        self._executor: ThreadPoolExecutor | None = None

    def touch(self, endpoint_name: str) -> bool:
        """Note a successful call; schedule a ledger write when this window has none yet."""
        now = self._clock()
        at = utcnow()
        hour = hour_key(at)
        with self._lock:
            per_hour = self._counts.setdefault(endpoint_name, {})
            per_hour[hour] = per_hour.get(hour, 0) + 1
            self._latest[endpoint_name] = at
            last = self._last_flush.get(endpoint_name)
            if last is not None and now - last < self._flush_s:
                return False
            self._last_flush[endpoint_name] = now
            counts = self._counts.pop(endpoint_name)
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring-activity")
            future = self._executor.submit(self._write, endpoint_name, at, counts)
            self._pending.add(future)
        future.add_done_callback(self._done)
        return True

    def _write(self, endpoint_name: str, at: datetime, counts: dict[str, int] | None = None) -> bool:
        try:
            written = record_last_activity(self._ledger_factory(), endpoint_name, at, counts)
            log.debug("activity of %s at %s recorded=%s", endpoint_name, iso(at), written)
            return written
        except Exception as exc:
            # Kept and written again once storage is back (module doc).
            log.warning("could not record activity of endpoint %s (%s: %s); kept, retried every %.0f s",
                        endpoint_name, type(exc).__name__, exc, self._retry_s)
            with self._lock:
                self._last_flush.pop(endpoint_name, None)
                per_hour = self._counts.setdefault(endpoint_name, {})
                for hour, n in (counts or {}).items():  # counted again with the next write
                    per_hour[hour] = per_hour.get(hour, 0) + n
                kept = self._unwritten.get(endpoint_name)
                self._unwritten[endpoint_name] = at if kept is None or at > kept else kept
                if self._retrier is None:
                    self._retrier = threading.Thread(target=self._retry_loop, name="scoring-activity-retry", daemon=True)
                    self._retrier.start()
            return False

    @property
    def unwritten(self) -> dict[str, datetime]:
        """Activity storage has not taken yet (endpoint -> latest time)."""
        with self._lock:
            return dict(self._unwritten)

    def flush_unwritten(self) -> int:
        """Try to write the kept activity now; returns how many endpoints are still unwritten."""
        with self._lock:
            kept = dict(self._unwritten)
        for name, at in kept.items():
            try:
                record_last_activity(self._ledger_factory(), name, at)
            except Exception:  # noqa: BLE001 - still down: keep it
                log.debug("activity of %s still not written", name, exc_info=True)
                continue
            with self._lock:
                if self._unwritten.get(name) == at:  # not replaced by a later time meanwhile
                    del self._unwritten[name]
            log.info("activity of endpoint %s at %s recorded after a storage outage", name, iso(at))
        with self._lock:
            return len(self._unwritten)

    def _retry_loop(self) -> None:
        while not self._closing.wait(self._retry_s):
            self.flush_unwritten()
            with self._lock:  # decided under the lock that also starts a retrier: none is missed
                if not self._unwritten:
                    self._retrier = None
                    return

    def _done(self, future: Future[bool]) -> None:
        with self._lock:
            self._pending.discard(future)

    def drain(self, timeout_s: float = 10.0) -> None:
        """Wait for the writes scheduled so far (tests, shutdown)."""
        with self._lock:
            pending = list(self._pending)
        wait(pending, timeout=timeout_s)

    def flush_counts(self) -> None:
        """Write the request counts still held in memory (shutdown, tests)."""
        with self._lock:
            pending, self._counts = self._counts, {}
            latest = dict(self._latest)
        for name, counts in pending.items():
            # the time of the endpoint's latest call, not now: a shutdown is no activity
            self._write(name, latest.get(name) or utcnow(), counts)

    def close(self) -> None:
        self.drain()
        self.flush_counts()
        self._closing.set()
        if self.flush_unwritten():
            log.warning("activity not recorded (storage unreachable at shutdown): %s",
                        {k: iso(v) for k, v in self.unwritten.items()})
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
