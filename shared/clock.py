"""Time, one way for the whole app: now in UTC, the one ISO 8601 format it writes, the one reader, and
the one back-off formula.

Every time written (the ledger, the local workspace's records, pid-free state files) is
``YYYY-MM-DDTHH:MM:SS[.ffffff]Z``; the reader takes ``Z``, ``+00:00`` or any offset, and a naive time
as UTC (never as the machine's local time). Stdlib only: the workspace's processes import it too.
"""

from __future__ import annotations

from datetime import UTC, datetime


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime | None) -> str | None:
    """``dt`` as the app writes times: ISO 8601 in UTC with ``Z`` (a naive ``dt`` is taken as UTC)."""
    if not dt:
        return None
    return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).astimezone(UTC).isoformat().replace("+00:00", "Z")


def now_iso() -> str:
    """Now, as the app writes times."""
    return iso(utcnow()) or ""


def parse_iso(value: str | None) -> datetime | None:
    """The time ``value`` names, timezone-aware (a naive time is UTC); None when empty. ValueError
    when it is not ISO 8601."""
    if not value:
        return None
    dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def backoff_s(first_s: float, doublings: int, cap_s: float | None = None) -> float:
    """The app's one back-off formula: ``first_s`` doubled ``doublings`` times (none when below 1),
    at most ``cap_s``."""
    delay = first_s * 2 ** max(doublings, 0)
    return delay if cap_s is None else min(delay, cap_s)
