"""The embedded local workspace behind the ``MLBackend`` interface.

Jobs are ``localworkspace.job_runner`` processes, endpoints are ``localworkspace.serve``
processes on 127.0.0.1, models live in the workspace's MLflow registry (SQLite). This module
starts and reads those; it never imports torch or transformers, and imports mlflow only for
registration (``warm_up`` pre-imports it so the job-event handler answers fast).
State is kept in files under ``LOCAL_WORKSPACE_DIR`` (see localworkspace.workspace), so it
survives a restart of the app; a process that died is reported as failed, never as healthy.
Jobs and the registry are here; endpoints and deployments in ``local_endpoints``, the processes'
start and watch in ``local_processes``.
"""

from __future__ import annotations

import logging
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

from localworkspace.job_queue import enqueue
from localworkspace.workspace import (
    Workspace,
    now_iso,
    read_json,
    read_pid_file,
    stop_process_group,
    write_json,
)
from shared.backends.base import (
    COMPLETED,
    FAILED,
    JOB_FINAL_STATES,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    QUEUED,
    RUNNING,
    BackendError,
    FineTuneRequest,
    JobInfo,
    MetricsHistory,
    ModelRef,
    NotFoundError,
    lineage_tags,
)
from shared.backends.local_endpoints import ENDPOINT_STARTUP_TIMEOUT_S, LocalEndpoints
from shared.backends.local_processes import is_running, spawn
from shared.clock import parse_iso  # the one ISO reader: 'Z' or '+00:00', a naive time is UTC
from shared.settings import Settings

log = logging.getLogger(__name__)

EVENT_RETRY_TOTAL_S = 120.0
SUBMIT_GRACE_S = 30.0


def webhook_with_key(url: str, function_key: str) -> str:
    """The job-event webhook URL with the local host's key as ``code=`` (as Azure's Event Grid
    subscription URL carries the eventgrid_extension key), unless it carries a code already."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if not function_key or not url or "code" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&{urlencode({'code': function_key})}" if parts.query else urlencode({"code": function_key})
    return urlunsplit(parts._replace(query=query))


class LocalBackend(LocalEndpoints):
    """``MLBackend`` on the local workspace folder ``settings.local_workspace_dir`` (its endpoint calls: ``LocalEndpoints``)."""

    name = "local"

    def __init__(self, settings: Settings, *, event_retry_total_s: float = EVENT_RETRY_TOTAL_S,
                 endpoint_startup_timeout_s: float = ENDPOINT_STARTUP_TIMEOUT_S) -> None:
        self.settings = settings
        self.ws = Workspace(settings.local_workspace_dir)
        self.event_retry_total_s = event_retry_total_s
        self.endpoint_startup_timeout_s = endpoint_startup_timeout_s

    @property
    def workspace_id(self) -> str:
        return self.settings.local_workspace_id

    @property
    def base_model_name(self) -> str:
        return self.settings.base_model_name

    def warm_up(self) -> None:
        """Pre-import mlflow and open its store once (seconds on a cold process, more on a new
        database), so the job-event handler's registration answers in milliseconds later."""
        from mlflow.tracking import MlflowClient

        with self.ws.lock("mlflow"):
            MlflowClient(self.ws.tracking_uri, registry_uri=self.ws.tracking_uri).search_registered_models(max_results=1)

    def shutdown(self) -> list[str]:
        """Stop every job runner and endpoint server of the workspace."""
        return self.ws.shutdown()

    # --- jobs -----------------------------------------------------------------------------------

    def submit_finetune(self, request: FineTuneRequest) -> str:
        from localworkspace.trainer import ParamError, resolve_params

        try:
            params = resolve_params(self.settings.finetune_params, request.params)
        except ParamError as exc:
            raise BackendError(str(exc)) from None
        self.ws.ensure()
        job_name = f"ftjob-{uuid.uuid4().hex[:12]}"
        job_dir = self.ws.job_dir(job_name)
        job_dir.mkdir(parents=True)
        s = self.settings
        tags = {**request.tags, MANAGED_BY_TAG: MANAGED_BY_VALUE}
        spec = {
            "job_name": job_name,
            "workspace_dir": str(self.ws.root),
            "workspace_id": s.local_workspace_id,
            "experiment_name": s.experiment_name,
            "base_model": s.local_base_model,
            "base_model_name": self.base_model_name,
            "model_cache": str(Path(s.local_model_cache).resolve()),
            "model_name": request.model_name,
            "dataset_id": request.dataset_id,
            "train_blob": request.train_blob,
            "test_blob": request.test_blob,
            "storage": {
                "connection": s.storage_connection,
                "account_name": s.storage_account_name,
                "client_id": s.azure_client_id,
                "container": s.prepared_container,
            },
            "params": params,
            "tags": tags,
            "webhook_url": webhook_with_key(s.eventgrid_webhook_url, s.function_key),
            "event_retry_total_s": self.event_retry_total_s,
            "max_parallel_jobs": s.local_max_parallel_jobs,
            "submitted_at": now_iso(),
        }
        # The spec holds the storage connection string: readable by the owner only.
        write_json(job_dir / "spec.json", spec, mode=0o600)
        write_json(self.ws.job_state_path(job_name), {"state": QUEUED, "submitted_at": spec["submitted_at"], "tags": tags})
        enqueue(self.ws, job_name)  # trains when a slot is free, in submission order (localworkspace/job_queue.py)
        spawn(["-m", "localworkspace.job_runner", str(job_dir)], job_dir / "job.log", job_dir / "runner.pid")
        log.info("submitted local fine-tune %s (dataset %s)", job_name, request.dataset_id)
        return job_name

    def get_job(self, job_name: str) -> JobInfo:
        job_dir = self.ws.job_dir(job_name)
        state = read_json(self.ws.job_state_path(job_name))
        if state is None:
            raise NotFoundError(f"local job {job_name} not found")
        if state.get("state") not in JOB_FINAL_STATES and not is_running(job_dir / "runner.pid") \
                and not self._just_submitted(job_dir, state):
            # Written only if the runner did not finish meanwhile (it records under the same lock).
            updated = self.ws.update_job_state(
                job_name, expect={QUEUED, RUNNING}, state=FAILED, ended_at=now_iso(),
                error=f"process died (runner exited without recording an outcome; see {job_dir / 'job.log'})",
            )
            state = updated or read_json(self.ws.job_state_path(job_name)) or state
        return JobInfo(
            name=job_name,
            state=state.get("state", FAILED),
            tags=dict(state.get("tags") or {}),
            error=state.get("error"),
            metrics={k: float(v) for k, v in (state.get("metrics") or {}).items()},
            started_at=parse_iso(state.get("started_at")),
            ended_at=parse_iso(state.get("ended_at")),
            log_path=str(job_dir / "job.log"),
            progress=state.get("progress") if state.get("state") == RUNNING else None,
        )

    @staticmethod
    def _just_submitted(job_dir: Path, state: dict[str, Any]) -> bool:
        # Another worker may read the record between its creation and the runner's pid file.
        if state.get("state") != QUEUED or (job_dir / "runner.pid").exists():
            return False
        submitted = parse_iso(state.get("submitted_at"))
        return submitted is not None and time.time() - submitted.timestamp() < SUBMIT_GRACE_S

    def cancel_job(self, job_name: str) -> None:
        """Stop a running job; the runner records it as canceled."""
        proc = read_pid_file(self.ws.job_dir(job_name) / "runner.pid")
        if proc is None:
            raise NotFoundError(f"local job {job_name} not found")
        stop_process_group(proc)

    # Metrics the trainer logs per step (localworkspace.trainer.run_finetune_job); the rest are final.
    STEP_METRICS = ("train_loss", "learning_rate")

    def job_metrics_history(self, job_name: str) -> MetricsHistory:
        """The job's curves from the workspace's MLflow tracking store (the run tagged ``job``)."""
        state = read_json(self.ws.job_state_path(job_name))
        if state is None:
            raise NotFoundError(f"local job {job_name} not found")
        run_id, experiment_id = state.get("run_id"), state.get("experiment_id")
        if not run_id and not experiment_id:
            return MetricsHistory(job_name)  # queued: no MLflow run yet
        from mlflow.tracking import MlflowClient

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = MlflowClient(self.ws.tracking_uri)
            if not run_id:  # running: the run exists, its id is recorded when the job ends
                runs = client.search_runs([str(experiment_id)], filter_string=f"tags.job = '{job_name}'", max_results=1)
                if not runs:
                    return MetricsHistory(job_name)
                run_id = runs[0].info.run_id
            latest = client.get_run(run_id).data.metrics
            series = {}
            for key in self.STEP_METRICS:
                if key in latest:
                    points = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key))
                    series[key] = points
        final = {k: float(v) for k, v in latest.items() if k not in self.STEP_METRICS}
        return MetricsHistory(job_name, series=series, final=final)

    # --- registry -------------------------------------------------------------------------------

    def _mlflow(self):  # noqa: ANN202
        import mlflow

        mlflow.set_tracking_uri(self.ws.tracking_uri)
        mlflow.set_registry_uri(self.ws.tracking_uri)
        return mlflow

    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        info = self.get_job(job_name)
        state = read_json(self.ws.job_state_path(job_name)) or {}
        if info.state != COMPLETED or not state.get("model_uri"):
            raise BackendError(f"job {job_name} is {info.state}: it has no model to register")
        mlflow = self._mlflow()
        # One registration per job, across processes: look for the job's version under a lock.
        # (MLflow's SQL store emits a SQLAlchemy deprecation warning on first use: not ours to fix.)
        with self.ws.lock("mlflow"), warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            client = mlflow.MlflowClient()
            existing = client.search_model_versions(f"name = '{model_name}' and tag.job = '{job_name}'")
            if existing:
                version = min(existing, key=lambda v: int(v.version))
            else:
                version = mlflow.register_model(
                    state["model_uri"], model_name,
                    tags={"job": job_name, "base_model": self.base_model_name, MANAGED_BY_TAG: MANAGED_BY_VALUE,
                          **lineage_tags(state.get("tags"))},  # collection, corpus id, dataset ids
                )
        log.info("model %s:%s registered from job %s", model_name, version.version, job_name)
        return ModelRef(name=model_name, version=str(version.version), job_name=job_name, base_model=self.base_model_name)
