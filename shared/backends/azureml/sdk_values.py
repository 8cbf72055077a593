"""Values as azure-ai-ml hands them back: str-based enums or plain strings, times as text or datetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from shared.ledger.store import parse_iso


def text(value: Any) -> str:
    """An SDK status as text: the SDK hands back str-based enums (``JobStatus.COMPLETED``) or plain strings."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return parse_iso(value)
        except ValueError:
            return None
    return None

