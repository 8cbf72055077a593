"""One ISO 8601 reader: the ledger's ``parse_iso``, used by the backends too (issue #27 item 8)."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.backends import local
from shared.backends.azureml import sdk_values
from shared.ledger.store import iso, parse_iso


def test_z_offset_and_naive_times_read_the_same() -> None:
    expected = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for text in ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05"):
        assert parse_iso(text) == expected, text
        assert parse_iso(text).tzinfo is not None, text
    assert iso(expected) == "2026-01-02T03:04:05Z"
    assert parse_iso("") is None and parse_iso(None) is None


def test_the_backends_read_times_with_it() -> None:
    assert local.parse_iso is parse_iso  # the local workspace writes +00:00, old records may be naive
    assert sdk_values.parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert sdk_values.parse_time("not a time") is None
