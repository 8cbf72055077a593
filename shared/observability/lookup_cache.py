"""The dashboard's slow look-ups (the backend's job times and curves, the prepared container's
reports), cached by key and bounded per page: final results are kept, live ones for ``LIVE_TTL_S``,
and one page spends at most its :class:`Budget` on look-ups not cached yet (the rest wait for the
next refresh)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

# A running job's curve and times are re-read after this long; final jobs' are kept.
LIVE_TTL_S = 10.0
CACHE_MAX = 2048


@dataclass
class _Entry:
    value: Any
    at: float
    final: bool


class LookupCache:
    """Results of slow look-ups (backend, blobs) by key; final ones kept, live ones for LIVE_TTL_S."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._lock = threading.Lock()
        self._entries: dict[str, _Entry] = {}

    def get(self, key: str) -> tuple[bool, Any]:
        with self._lock:
            entry = self._entries.get(key)
        if entry is None or (not entry.final and self._clock() - entry.at > LIVE_TTL_S):
            return False, None
        return True, entry.value

    def put(self, key: str, value: Any, final: bool) -> None:
        with self._lock:
            if len(self._entries) >= CACHE_MAX:
                self._entries.pop(next(iter(self._entries)))
            self._entries[key] = _Entry(value, self._clock(), final)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


CACHE = LookupCache()


@dataclass
class Budget:
    """Time one page may spend on look-ups that are not cached yet."""

    seconds: float
    started: float = field(default_factory=lambda: time.monotonic())  # read when made (tests set the clock)
    skipped: int = 0

    def allows(self) -> bool:
        if time.monotonic() - self.started < self.seconds:
            return True
        self.skipped += 1
        return False


def cached(key: str, final: bool, budget: Budget, fetch: Callable[[], Any]) -> tuple[str, Any]:
    """("ok", value) | ("pending", None) when over budget | ("error", message)."""
    hit, value = CACHE.get(key)
    if hit:
        return value
    if not budget.allows():
        return "pending", None
    try:
        result: tuple[str, Any] = ("ok", fetch())
    except Exception as exc:  # noqa: BLE001 - one job's curve failing must not break the page
        log.info("dashboard look-up %s failed: %s", key, exc)
        result = ("error", f"{type(exc).__name__}: {exc}"[:200])
    CACHE.put(key, result, final)
    return result
