"""How long until a deployment in flight serves: the Retry-After scoring sends with its 503.

The estimate comes from this app's own history: the median time its endpoints took from the
deployment request (``deploy_requested_at``) to serving (``active_since``), minus the time this
one has been deploying, plus the follow-up check that will notice it. With no history yet, the
configured ``SCORING_RETRY_AFTER_S``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable
from datetime import datetime

from shared.endpoints.followup import FIRST_DELAY_S, delay_before
from shared.ledger import Record, parse_iso

# Only recent deployments speak for the next one.
HISTORY = 20


def deploy_durations(endpoints: Iterable[Record]) -> list[float]:
    """Seconds from deployment request to serving, of the endpoints that got there (newest last)."""
    found = []
    for record in endpoints:
        requested, ready = parse_iso(record.get("deploy_requested_at")), parse_iso(record.get("active_since"))
        if requested is not None and ready is not None and ready > requested:
            found.append((ready, (ready - requested).total_seconds()))
    return [seconds for _, seconds in sorted(found)[-HISTORY:]]


def retry_after_s(endpoint: Record | None, history: Iterable[Record], now: datetime, fallback_s: int) -> int:
    """Seconds until ``endpoint`` (provisioning, or None: a redeploy starting now) likely serves."""
    durations = deploy_durations(history)
    if not durations:
        return fallback_s
    expected = statistics.median(durations)
    started = parse_iso(endpoint.get("deploy_requested_at")) if endpoint is not None else None
    elapsed = max(0.0, (now - started).total_seconds()) if started is not None else 0.0
    remaining = max(0.0, expected - elapsed)
    # The follow-up checks come at growing intervals: add the gap of the check after `expected`.
    check, at = 1, 0.0
    while at < expected and check < 100:
        at += delay_before(check)
        check += 1
    return max(1, math.ceil(remaining + min(delay_before(check), FIRST_DELAY_S * 2)))
