"""A fine-tuning job's state, steps and logged metrics: ARM's job plus the run history of its steps."""

from __future__ import annotations

import dataclasses
import logging
import time
from datetime import UTC, datetime
from typing import Any

from shared.backends.azureml import single_requests as rest
from shared.backends.azureml.errors import azure_errors
from shared.backends.azureml.recent_reads import REUSE_S, Cached
from shared.backends.azureml.sdk_values import parse_time, text
from shared.backends.base import (
    CANCELED,
    COMPLETED,
    FAILED,
    JOB_FINAL_STATES,
    QUEUED,
    RUNNING,
    BackendError,
    JobInfo,
    StepInfo,
)

log = logging.getLogger(__name__)

# Azure ML job statuses -> the app's job states. Statuses that are not final map to queued or
# running so that nothing acts on a job before Azure says it is over.
JOB_STATES = {
    "notstarted": QUEUED, "queued": QUEUED, "preparing": QUEUED, "starting": QUEUED,
    "provisioning": QUEUED, "paused": QUEUED,
    "running": RUNNING, "finalizing": RUNNING, "cancelrequested": RUNNING, "notresponding": RUNNING,
    "completed": COMPLETED, "failed": FAILED, "canceled": CANCELED,
}


def latest_metrics(steps: tuple[StepInfo, ...]) -> dict[str, float]:
    """Each step's last logged value, as ``<step>/<metric>`` and (first step wins) plain ``<metric>``."""
    found: dict[str, float] = {}
    plain: dict[str, float] = {}
    for step in steps:
        for name, points in step.metrics.items():
            if points:
                found[f"{step.display_name}/{name}"] = points[-1][1]
                plain.setdefault(name, points[-1][1])
    return {**plain, **found}


class JobReads:
    """The jobs part of :class:`~shared.backends.azureml.backend.AzureMLBackend` (its workspace, lock and caches)."""

    def _read_job(self, job_name: str) -> Any:
        with azure_errors(f"reading job {job_name}"):
            job = self.workspace.jobs.get(job_name)
        with self._lock:
            now = time.monotonic()
            self._jobs = {k: v for k, v in self._jobs.items() if now - v.at < REUSE_S}
            self._jobs[job_name] = Cached(job, now)
        return job

    def _final_job(self, job_name: str) -> Any:
        """The job ``get_job`` read moments ago when it was already final (it cannot change), else a fresh read."""
        with self._lock:
            cached = self._jobs.get(job_name)
        if cached is not None and time.monotonic() - cached.at < REUSE_S:
            if JOB_STATES.get(text(getattr(cached.value, "status", None)).lower()) in JOB_FINAL_STATES:
                return cached.value
        return self._read_job(job_name)

    def get_job(self, job_name: str) -> JobInfo:
        job = self._read_job(job_name)
        status = text(getattr(job, "status", None))
        state = JOB_STATES.get(status.lower())
        if state is None:
            log.warning("job %s has unknown status %r; treating it as running", job_name, status)
            state = RUNNING
        props = dict(getattr(job, "properties", None) or {})
        steps: tuple[StepInfo, ...] = ()
        if state in JOB_FINAL_STATES:
            steps = self.job_steps(job_name, metrics=self.settings.quality_gate and state == COMPLETED)
        error = None
        if state == FAILED:
            failed = [st for st in steps if st.state == FAILED]
            reason = next((str(v) for k, v in props.items() if "error" in k.lower() and v), None)
            if failed:
                reason = "; ".join(f"step {st.display_name} failed: {st.error or 'no reason given'}" for st in failed)
            error = reason or f"job {job_name} {status}"
        elif state == CANCELED:
            error = f"job {job_name} was canceled"
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        starts = [st.started_at for st in steps if st.started_at]
        ends = [st.ended_at for st in steps if st.ended_at]
        return JobInfo(
            name=str(job.name),
            state=state,
            tags={str(k): str(v) for k, v in (job.tags or {}).items()},
            error=error,
            metrics=latest_metrics(steps),
            started_at=min(starts, default=None) or parse_time(props.get("StartTimeUtc")) or parse_time(created),
            ended_at=max(ends, default=None) or parse_time(props.get("EndTimeUtc")),
            log_path=getattr(job, "studio_url", None),
            steps=steps,
        )

    def job_steps(self, job_name: str, *, metrics: bool = False) -> tuple[StepInfo, ...]:
        """The pipeline's steps from the run history (one request; plus the metric reads when ``metrics``).

        Run history is advisory: when it cannot be read the job state still comes from ARM, and the
        step details are simply missing (logged).
        """
        try:
            with azure_errors(f"reading the steps of job {job_name}"):
                self._prime_run_history()
                runs = rest.run_children(self.workspace, job_name)
        except BackendError as exc:
            log.warning("cannot read the steps of job %s: %s", job_name, exc)
            return ()
        steps = []
        for run in runs:
            state = JOB_STATES.get(text(getattr(run, "status", None)).lower(), RUNNING)
            root = getattr(getattr(run, "error", None), "error", None)
            error = None
            if root is not None and (getattr(root, "message", None) or getattr(root, "code", None)):
                code, message = getattr(root, "code", None), " ".join(str(getattr(root, "message", "") or "").split())
                error = f"{code}: {message}" if code and message else (message or str(code))
            run_id = str(getattr(run, "run_id", None) or getattr(run, "name", ""))
            step = StepInfo(
                name=run_id,
                display_name=str(getattr(run, "display_name", None) or getattr(run, "name", None) or run_id),
                state=state,
                started_at=parse_time(getattr(run, "start_time_utc", None)),
                ended_at=parse_time(getattr(run, "end_time_utc", None)),
                error=error,
            )
            if metrics and state == COMPLETED:
                step = dataclasses.replace(step, metrics=self._step_metrics(run_id))
            steps.append(step)
        steps.sort(key=lambda st: (st.started_at or datetime.max.replace(tzinfo=UTC), st.display_name))
        return tuple(steps)

    def _step_metrics(self, run_id: str) -> dict[str, list[tuple[int, float]]]:
        try:
            with azure_errors(f"reading the metrics of run {run_id}"):
                names = rest.metric_names(self.workspace, run_id)
                return {name: rest.metric_values(self.workspace, run_id, name) for name in names}
        except BackendError as exc:
            log.warning("cannot read the metrics of run %s: %s", run_id, exc)
            return {}

    def job_metrics_history(self, job_name: str) -> Any:
        """Training curves from the workspace's MLflow tracking (shared.backends.azureml.training_curves)."""
        from shared.backends.azureml.training_curves import job_metrics_history

        return job_metrics_history(self, job_name)
