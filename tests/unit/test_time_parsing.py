"""One ISO 8601 reader and one writer (``shared.clock``), used by the ledger, the backends and the local
workspace alike; one back-off formula (issue #27 item 8)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from localworkspace import job_queue
from localworkspace.event_publisher import backoff_delays
from localworkspace.workspace import Workspace, now_iso, write_json
from shared import clock
from shared.backends import local, local_endpoints
from shared.backends.azureml import sdk_values
from shared.endpoints.followup import delay_before
from shared.endpoints.healing import backoff
from shared.ledger.store import iso, parse_iso
from tests.support import make_settings


def test_z_offset_and_naive_times_read_the_same() -> None:
    expected = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    for text in ("2026-01-02T03:04:05Z", "2026-01-02T03:04:05+00:00", "2026-01-02T03:04:05"):
        assert parse_iso(text) == expected, text
        assert parse_iso(text).tzinfo is not None, text
    assert iso(expected) == "2026-01-02T03:04:05Z"
    assert parse_iso("") is None and parse_iso(None) is None


def test_the_backends_and_the_workspace_read_and_write_times_with_it() -> None:
    assert parse_iso is clock.parse_iso and iso is clock.iso  # the ledger's are the clock's
    assert local.parse_iso is local_endpoints.parse_iso is job_queue.parse_iso is clock.parse_iso
    assert sdk_values.parse_time("2026-01-02T03:04:05") == datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert sdk_values.parse_time("not a time") is None
    written = now_iso()  # the workspace's records: the ledger's format, 'Z' (it wrote '+00:00' before)
    assert written.endswith("Z") and abs(parse_iso(written) - clock.utcnow()) < timedelta(seconds=5)


@pytest.fixture
def far_from_utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The machine's local time 10 hours ahead of UTC: a naive time read as local time is 10 h off."""
    monkeypatch.setenv("TZ", "Etc/GMT-10")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_naive_times_are_utc_not_the_machines_local_time(far_from_utc: None, tmp_path: Path) -> None:
    naive_now = datetime.now(UTC).replace(tzinfo=None)
    assert iso(naive_now) == iso(naive_now.replace(tzinfo=UTC))
    # A job queued a second ago (an older record wrote a naive time) is still waiting for its runner:
    # read as local time, it would be 10 hours old and dropped from the queue.
    ws = Workspace(tmp_path / "ws")
    ws.ensure()
    ws.job_dir("ftjob-1").mkdir(parents=True)
    write_json(ws.job_state_path("ftjob-1"), {"state": "queued", "submitted_at": (naive_now - timedelta(seconds=1)).isoformat()})
    assert job_queue._still_waiting(ws, "ftjob-1", me="ftjob-2")
    write_json(ws.job_state_path("ftjob-1"), {"state": "queued", "submitted_at": (naive_now - timedelta(hours=1)).isoformat()})
    assert not job_queue._still_waiting(ws, "ftjob-1", me="ftjob-2")


def test_one_back_off_formula() -> None:
    assert [clock.backoff_s(2.0, n, 30.0) for n in (-1, 0, 1, 2, 3, 4)] == [2.0, 2.0, 4.0, 8.0, 16.0, 30.0]
    assert [delay_before(c) for c in (15, 16, 17, 18, 19, 75)] == [2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
    assert backoff_delays(120.0) == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]  # the job runner's event retries
    s = make_settings(ENDPOINT_HEAL_BACKOFF_S="30")
    assert [backoff(s, a) for a in (2, 3, 4)] == [timedelta(seconds=30), timedelta(seconds=60), timedelta(seconds=120)]
    assert backoff(s, 20) == timedelta(minutes=30)
