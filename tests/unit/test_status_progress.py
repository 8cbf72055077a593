"""Progress of running jobs in `status`: step, loss and ETA, from the backend's own progress
(the local workspace) or, where a backend reports none (Azure ML), from the job's training curve."""

from __future__ import annotations

from datetime import timedelta

from shared.backends.base import JobInfo, MetricsHistory
from shared.ledger import Record, iso, utcnow
from shared.observability.status import _running_progress, job_progress


def running(name: str) -> Record:
    return Record("job", name, "submitted", {}, "", "")


class Backend:
    def __init__(self, progress=None, curve=None):
        self.progress, self.curve = progress, curve

    def get_job(self, name):
        return JobInfo(name, "running", progress=self.progress)


class CurveBackend(Backend):
    def job_metrics_history(self, name):
        if self.curve is None:
            raise RuntimeError("tracking unreachable")
        return MetricsHistory(name, series={"train_loss": self.curve})


def test_eta_from_the_pace_so_far() -> None:
    now = utcnow()
    raw = {"step": 25, "total_steps": 100, "loss": 1.5, "training_started_at": iso(now - timedelta(seconds=50))}
    assert job_progress(raw, now) == {"step": 25, "total_steps": 100, "loss": 1.5, "eta_s": 150, "at": None}
    assert job_progress({"step": 0}, now) is None and job_progress(None, now) is None


def test_a_backend_with_its_own_progress() -> None:
    now = utcnow()
    found = _running_progress([running("j1")], Backend({"step": 3, "total_steps": 10, "loss": 2.0}), now)
    assert found["j1"]["step"] == 3 and found["j1"]["loss"] == 2.0


def test_a_backend_without_progress_shows_the_training_curve_last_point() -> None:
    now = utcnow()
    found = _running_progress([running("j2")], CurveBackend(curve=[(10, 2.5), (20, 1.25)]), now)
    assert found == {"j2": {"step": 20, "total_steps": None, "loss": 1.25, "eta_s": None, "at": None}}
    # nothing to show, or the tracking unreachable: no progress, and status still works
    assert _running_progress([running("j3")], CurveBackend(curve=[]), now) == {}
    assert _running_progress([running("j4")], CurveBackend(curve=None), now) == {}
    assert _running_progress([running("j5")], Backend(), now) == {}
