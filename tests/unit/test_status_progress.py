"""Progress of running jobs in `status`: step, loss and ETA, from the backend's own progress
(the local workspace) or, where a backend reports none (Azure ML), from the job's training curve."""

from __future__ import annotations

from datetime import timedelta

from shared.backends.base import MetricsHistory, TransientBackendError
from shared.ledger import Record, iso, utcnow
from shared.observability.status import _running_progress, job_progress
from tests.fakes.workspace import InMemoryWorkspace


def running(name: str) -> Record:
    return Record("job", name, "submitted", {}, "", "")


def test_eta_from_the_pace_so_far() -> None:
    now = utcnow()
    raw = {"step": 25, "total_steps": 100, "loss": 1.5, "training_started_at": iso(now - timedelta(seconds=50))}
    assert job_progress(raw, now) == {"step": 25, "total_steps": 100, "loss": 1.5, "eta_s": 150, "at": None}
    assert job_progress({"step": 0}, now) is None and job_progress(None, now) is None


def test_a_backend_with_its_own_progress() -> None:
    now = utcnow()
    ws = InMemoryWorkspace()
    ws.add_job("j1", progress={"step": 3, "total_steps": 10, "loss": 2.0})
    found = _running_progress([running("j1")], ws, now)
    assert found["j1"]["step"] == 3 and found["j1"]["loss"] == 2.0


def test_a_backend_without_progress_shows_the_training_curve_last_point() -> None:
    now = utcnow()
    ws = InMemoryWorkspace()
    for name in ("j2", "j3", "j4", "j5"):
        ws.add_job(name)
    ws.curves["j2"] = MetricsHistory("j2", series={"train_loss": [(10, 2.5), (20, 1.25)]})
    found = _running_progress([running("j2")], ws, now)
    assert found == {"j2": {"step": 20, "total_steps": None, "loss": 1.25, "eta_s": None, "at": None}}
    # nothing to show, or the tracking unreachable: no progress, and status still works
    ws.curves["j3"] = MetricsHistory("j3", series={"train_loss": []})
    assert _running_progress([running("j3")], ws, now) == {}
    ws.curves["j4"] = TransientBackendError("tracking unreachable")
    assert _running_progress([running("j4")], ws, now) == {}
    assert _running_progress([running("j5")], ws, now) == {}  # logged nothing yet
