"""The embedded local workspace behind the ``MLBackend`` interface.

Jobs are ``localworkspace.job_runner`` processes, endpoints are ``localworkspace.serve``
processes on 127.0.0.1, models live in the workspace's MLflow registry (SQLite). This module
starts and reads those; it never imports torch or transformers, and imports mlflow only for
registration (``warm_up`` pre-imports it so the job-event handler answers fast).
State is kept in files under ``LOCAL_WORKSPACE_DIR`` (see localworkspace.workspace), so it
survives a restart of the app; a process that died is reported as failed, never as healthy.
"""

from __future__ import annotations

import logging
import os
import secrets
import subprocess
import sys
import time
import uuid
import warnings
from datetime import datetime
from pathlib import Path
from typing import Any

from localworkspace import PROCESS_ENV
from localworkspace.job_queue import enqueue
from localworkspace.ports import free_port
from localworkspace.workspace import (
    Workspace,
    now_iso,
    process_alive,
    read_json,
    read_pid_file,
    stop_process_group,
    write_json,
    write_pid_file,
)
from shared.backends.base import (
    COMPLETED,
    EP_DELETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    FAILED,
    HEALTH_HEALTHY,
    HEALTH_MISSING,
    HEALTH_STARTING,
    HEALTH_UNHEALTHY,
    JOB_FINAL_STATES,
    LOCAL_INSTANCE_TYPE,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    QUEUED,
    RUNNING,
    BackendError,
    DeploymentInfo,
    DeploymentMetrics,
    EndpointHealth,
    EndpointInfo,
    FineTuneRequest,
    JobInfo,
    MetricsHistory,
    ModelRef,
    NotFoundError,
    ScoringTarget,
    TransientBackendError,
    check_traffic,
    lineage_tags,
)
from shared.ledger.store import parse_iso  # the one ISO reader: 'Z' or '+00:00', a naive time is UTC
from shared.settings import PROJECT_ROOT, Settings

log = logging.getLogger(__name__)

DEPLOYMENT_NAME = "default"
INSTANCE_TYPE = LOCAL_INSTANCE_TYPE
SCORING_TIMEOUT_S = 90.0
ENDPOINT_STARTUP_TIMEOUT_S = 600.0  # a cold SmolLM2 server on a busy 2-core CPU can be slow
EVENT_RETRY_TOTAL_S = 120.0
SUBMIT_GRACE_S = 30.0
HEALTH_TIMEOUT_S = 3.0  # GET /health of an endpoint server (a busy CPU server still answers it)
DRAIN_TIMEOUT_S = SCORING_TIMEOUT_S  # a deployment being deleted finishes its requests in flight first, this long at most


# Forks the workspace process, prints its pid and exits: the process is re-parented to init.
_LAUNCHER = """
import os, sys
log_path, args = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid:
    print(pid, flush=True)
    os._exit(0)
os.setsid()
fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
os.dup2(fd, 1)
os.dup2(fd, 2)
os.close(fd)
os.execv(sys.executable, [sys.executable, *args])
"""





def webhook_with_key(url: str, function_key: str) -> str:
    """The job-event webhook URL with the local host's key as ``code=`` (as Azure's Event Grid
    subscription URL carries the eventgrid_extension key), unless it carries a code already."""
    from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

    parts = urlsplit(url)
    if not function_key or not url or "code" in parse_qs(parts.query):
        return url
    query = f"{parts.query}&{urlencode({'code': function_key})}" if parts.query else urlencode({"code": function_key})
    return urlunsplit(parts._replace(query=query))

class LocalBackend:
    """``MLBackend`` on the local workspace folder ``settings.local_workspace_dir``."""

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

    # --- processes ----------------------------------------------------------------------------

    def _child_env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(PROCESS_ENV)
        env.setdefault("HF_HOME", str(PROJECT_ROOT / ".local" / "hf"))
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        env["TQDM_DISABLE"] = "1"
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["TRANSFORMERS_VERBOSITY"] = "warning"
        env.update(extra or {})
        return env

    def _spawn(self, args: list[str], log_path: Path, pid_path: Path, extra_env: dict[str, str] | None = None) -> int:
        """Start ``python args...`` detached (own session, not our child), logging to ``log_path``.

        A launcher forks the real process and exits at once, so the app never holds child
        handles (no zombies, no Popen objects outliving it) and the process survives an app restart.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        launched = subprocess.run(
            [sys.executable, "-c", _LAUNCHER, str(log_path), *args], cwd=str(PROJECT_ROOT), env=self._child_env(extra_env),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, check=True, timeout=60,
        )
        pid = int(launched.stdout.decode().strip())
        write_pid_file(pid_path, pid)
        return pid

    @staticmethod
    def _alive(pid_path: Path) -> bool:
        proc = read_pid_file(pid_path)
        return proc is not None and process_alive(proc)

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
        self._spawn(["-m", "localworkspace.job_runner", str(job_dir)], job_dir / "job.log", job_dir / "runner.pid")
        log.info("submitted local fine-tune %s (dataset %s)", job_name, request.dataset_id)
        return job_name

    def get_job(self, job_name: str) -> JobInfo:
        job_dir = self.ws.job_dir(job_name)
        state = read_json(self.ws.job_state_path(job_name))
        if state is None:
            raise NotFoundError(f"local job {job_name} not found")
        if state.get("state") not in JOB_FINAL_STATES and not self._alive(job_dir / "runner.pid") \
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

    # --- endpoints ------------------------------------------------------------------------------

    def _record_path(self, endpoint_name: str) -> Path:
        return self.ws.endpoint_dir(endpoint_name) / "record.json"

    # Layout of a local endpoint (``endpoints/<name>/``): ``server.pid``/``server.log`` are the
    # endpoint's router (localworkspace.router, on the endpoint's port), each deployment is a
    # ``localworkspace.serve`` process under ``deployments/<deployment>/`` on its own port.
    # ``record.json`` holds the endpoint (``deployment``: the one that serves when traffic is
    # routed to "its deployment", the champion) and ``deployments`` with their states and ports.

    def _deployment_dir(self, endpoint_name: str, deployment: str) -> Path:
        return self.ws.endpoint_dir(endpoint_name) / "deployments" / deployment

    def _stop_endpoint_processes(self, ep_dir: Path) -> None:
        for pid_file in [ep_dir / "server.pid", *sorted(ep_dir.glob("deployments/*/server.pid"))]:
            proc = read_pid_file(pid_file)
            if proc is not None:
                stop_process_group(proc)

    def _spawn_deployment(self, model: ModelRef, endpoint_name: str, deployment: str, key: str) -> dict[str, Any]:
        """Start one deployment's model server; its entry for the record's ``deployments``."""
        dep_dir = self._deployment_dir(endpoint_name, deployment)
        dep_dir.mkdir(parents=True, exist_ok=True)
        port = free_port()
        self._spawn(
            ["-m", "localworkspace.serve", "--model-uri", f"models:/{model.name}/{model.version}",
             "--tracking-uri", self.ws.tracking_uri, "--port", str(port), "--activity-file", str(dep_dir / "activity"),
             "--max-new-tokens-cap", str(self.settings.scoring_max_new_tokens)],
            dep_dir / "server.log", dep_dir / "server.pid", extra_env={"LOCAL_ENDPOINT_KEY": key},
        )
        return {"name": deployment, "state": EP_PROVISIONING, "model": model.ref, "model_name": model.name,
                "model_version": model.version, "job_name": model.job_name, "base_model": model.base_model,
                "port": port, "deploy_started_at": now_iso(), "log_path": str(dep_dir / "server.log"), "error": None}

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if (record and record.get("model") == model.ref and record.get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
                    and self._alive(ep_dir / "server.pid")
                    and self._alive(self._deployment_dir(endpoint_name, record.get("deployment") or DEPLOYMENT_NAME)
                                    / "server.pid")):
                return  # already deploying or serving this model
            if record:  # a different model, or a dead process: replace the endpoint's processes
                self._stop_endpoint_processes(ep_dir)
            port = free_port()
            key = secrets.token_urlsafe(32)
            activity = ep_dir / "activity"
            activity.unlink(missing_ok=True)
            record = {
                "name": endpoint_name,
                "state": EP_PROVISIONING,
                "model": model.ref,
                "model_name": model.name,
                "model_version": model.version,
                "job_name": model.job_name,
                "base_model": model.base_model,
                "tags": {**tags, MANAGED_BY_TAG: MANAGED_BY_VALUE},
                "deployment": DEPLOYMENT_NAME,
                "traffic": {},
                "mirror_traffic": {},
                "deployments": {},
                "port": port,
                "key": key,
                "created_at": (record or {}).get("created_at") or now_iso(),
                "deploy_started_at": now_iso(),
                "log_path": str(ep_dir / "server.log"),
                "error": None,
            }
            record["deployments"][DEPLOYMENT_NAME] = self._spawn_deployment(model, endpoint_name, DEPLOYMENT_NAME, key)
            write_json(self._record_path(endpoint_name), record, mode=0o600)
            self._spawn(
                ["-m", "localworkspace.router", "--record", str(self._record_path(endpoint_name)), "--port", str(port),
                 "--activity-file", str(activity)],
                ep_dir / "server.log", ep_dir / "server.pid", extra_env={"LOCAL_ENDPOINT_KEY": key},
            )
        log.info("deploying %s to local endpoint %s on port %d", model.ref, endpoint_name, port)

    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        """Start ``model`` as deployment ``deployment`` of a live endpoint, at 0% of its traffic
        (idempotent: a live deployment of the same model is left alone)."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") in {EP_DELETED, EP_FAILED}:
                raise NotFoundError(f"local endpoint {endpoint_name} not found (or failed)")
            deployments = record.setdefault("deployments", {})
            current = deployments.get(deployment)
            dep_pid = self._deployment_dir(endpoint_name, deployment) / "server.pid"
            if (current and current.get("model") == model.ref and current.get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
                    and self._alive(dep_pid)):
                return
            if current and float((record.get("traffic") or {}).get(deployment, 0)) > 0:
                raise BackendError(f"deployment {deployment} of endpoint {endpoint_name} takes traffic: "
                                   "it cannot be replaced by another model")
            if current:
                stop_process_group(read_pid_file(dep_pid) or {})
            deployments[deployment] = self._spawn_deployment(model, endpoint_name, deployment, record["key"])
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deploying %s as deployment %s of local endpoint %s", model.ref, deployment, endpoint_name)

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        """Stop and remove one deployment that takes no traffic (refused while it takes some).

        Drained first: marked ``deleting`` (the router
        sends it nothing more), then stopped once the router counts none of its requests in flight
        (``DRAIN_TIMEOUT_S`` at most): a request it took just before the traffic moved away (the
        old champion at a promotion) is answered, not cut off."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") == EP_DELETED:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            if deployment not in (record.get("deployments") or {}):
                raise NotFoundError(f"deployment {deployment} of local endpoint {endpoint_name} not found")
            if float((record.get("traffic") or {}).get(deployment, 0)) > 0:
                raise BackendError(f"deployment {deployment} of endpoint {endpoint_name} still takes traffic: "
                                   "route it elsewhere before deleting it")
            draining = record["deployments"][deployment].get("state") in {EP_PROVISIONING, EP_SUCCEEDED}
            record["deployments"][deployment]["state"] = EP_DELETING
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        if draining:
            self._drain(record, deployment)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name)) or record
            if deployment not in (record.get("deployments") or {}):
                return  # deleted meanwhile
            proc = read_pid_file(self._deployment_dir(endpoint_name, deployment) / "server.pid")
            if proc is not None:  # (none: its server never started)
                stop_process_group(proc)
            del record["deployments"][deployment]
            record["mirror_traffic"] = {k: v for k, v in (record.get("mirror_traffic") or {}).items() if k != deployment}
            record["traffic"] = {k: v for k, v in (record.get("traffic") or {}).items() if k != deployment}
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deleted deployment %s of local endpoint %s", deployment, endpoint_name)

    def _drain(self, record: dict[str, Any], deployment: str) -> None:
        """Wait until the endpoint's router counts no request of ``deployment`` in flight."""
        import httpx

        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                reply = httpx.get(f"http://127.0.0.1:{record['port']}/metrics", params={"since": time.time()},
                                  headers={"Authorization": f"Bearer {record['key']}"}, timeout=HEALTH_TIMEOUT_S)
                in_flight = int(((reply.json().get("deployments") or {}).get(deployment) or {}).get("in_flight") or 0)
            except (httpx.HTTPError, ValueError):
                return  # no router to ask (it is gone, or stopping): nothing is forwarded to it either
            if in_flight == 0:
                return
            time.sleep(0.2)
        log.warning("deployment %s still had requests in flight after %.0f s; stopping it", deployment, DRAIN_TIMEOUT_S)

    def get_deployment(self, endpoint_name: str, deployment: str) -> DeploymentInfo | None:
        record = self._refresh_endpoint(endpoint_name)
        if record is None or record.get("state") == EP_DELETED:
            return None
        dep = (record.get("deployments") or {}).get(deployment)
        return _deployment_info(dep, record) if dep else None

    def deployment_metrics(self, endpoint_name: str, since: datetime) -> dict[str, DeploymentMetrics]:
        """Requests, errors and p95 latency per deployment since ``since``: the router's counters."""
        import httpx

        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") == EP_DELETED:
            raise NotFoundError(f"local endpoint {endpoint_name} not found")
        try:
            reply = httpx.get(f"http://127.0.0.1:{record['port']}/metrics", params={"since": since.timestamp()},
                              headers={"Authorization": f"Bearer {record['key']}"}, timeout=HEALTH_TIMEOUT_S)
            reply.raise_for_status()
        except httpx.HTTPError as exc:
            raise TransientBackendError(f"metrics of local endpoint {endpoint_name}: {type(exc).__name__}") from None
        return {name: DeploymentMetrics(requests=int(m["requests"]), errors=int(m["errors"]), p95_ms=m.get("p95_ms"))
                for name, m in (reply.json().get("deployments") or {}).items()}

    def _refresh_endpoint(self, endpoint_name: str) -> dict[str, Any] | None:
        """The record, with provisioning/succeeded checked against the real processes: the
        endpoint's router and its champion deployment for the endpoint's state, each
        deployment's own process for the deployment's."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") not in {EP_PROVISIONING, EP_SUCCEEDED}:
            return record
        now = time.time()
        primary = record.get("deployment") or DEPLOYMENT_NAME
        dep_changes: dict[str, dict[str, Any]] = {}
        dep_alive: dict[str, bool] = {}
        for name, dep in (record.get("deployments") or {}).items():
            if dep.get("state") not in {EP_PROVISIONING, EP_SUCCEEDED}:
                continue
            pid_file = self._deployment_dir(endpoint_name, name) / "server.pid"
            alive = dep_alive[name] = self._alive(pid_file)
            if not alive:
                dep_changes[name] = {"state": EP_FAILED,
                                     "error": f"deployment {name}: server process died; see {dep.get('log_path')}"}
            elif dep["state"] == EP_PROVISIONING:
                if self._healthy(dep["port"]):
                    dep_changes[name] = {"state": EP_SUCCEEDED, "ready_at": now_iso()}
                elif now - datetime.fromisoformat(dep["deploy_started_at"]).timestamp() > self.endpoint_startup_timeout_s:
                    stop_process_group(read_pid_file(pid_file) or {})
                    dep_changes[name] = {"state": EP_FAILED, "error": f"deployment {name} not healthy after "
                                         f"{self.endpoint_startup_timeout_s:.0f} s; see {dep.get('log_path')}"}
        router_alive = self._alive(ep_dir / "server.pid")
        primary_state = (dep_changes.get(primary) or {}).get("state") or (record.get("deployments") or {}).get(
            primary, {}).get("state")
        changes: dict[str, Any] = {}
        if not router_alive or primary_state == EP_FAILED or primary_state is None:
            which = "router" if not router_alive else f"deployment {primary}"
            changes = {"state": EP_FAILED, "error": (dep_changes.get(primary) or {}).get("error")
                       or f"{which} process died; see {ep_dir / 'server.log'}"}
        elif record["state"] == EP_PROVISIONING:
            if primary_state == EP_SUCCEEDED and self._healthy(record["port"]):
                changes = {"state": EP_SUCCEEDED, "ready_at": now_iso()}
            elif now - datetime.fromisoformat(record["deploy_started_at"]).timestamp() > self.endpoint_startup_timeout_s:
                self._stop_endpoint_processes(ep_dir)
                changes = {"state": EP_FAILED,
                           "error": f"server not healthy after {self.endpoint_startup_timeout_s:.0f} s; see {ep_dir / 'server.log'}"}
        if changes or dep_changes:
            with self.ws.lock("endpoint", ep_dir):
                current = read_json(self._record_path(endpoint_name)) or record
                # begin_deploy writes the record and the pid files under this lock: re-check here so
                # a deployment caught between the two is not taken for a dead one.
                same = current.get("state") == record["state"] and current.get("port") == record.get("port")
                if same and changes and (router_alive or not self._alive(ep_dir / "server.pid")):
                    current.update(changes)
                for name, change in dep_changes.items():
                    dep = (current.get("deployments") or {}).get(name)
                    before = (record.get("deployments") or {}).get(name) or {}
                    if (dep and dep.get("state") == before.get("state") and dep.get("port") == before.get("port")
                            and (dep_alive.get(name)
                                 or not self._alive(self._deployment_dir(endpoint_name, name) / "server.pid"))):
                        dep.update(change)
                write_json(self._record_path(endpoint_name), current, mode=0o600)
                record = current
        return record

    @staticmethod
    def _healthy(port: int) -> bool:
        import httpx

        try:
            return httpx.get(f"http://127.0.0.1:{port}/ping", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    def _info(self, record: dict[str, Any]) -> EndpointInfo:
        ep_dir = self.ws.endpoint_dir(record["name"])
        activity = None
        try:
            activity = datetime.fromisoformat((ep_dir / "activity").read_text(encoding="utf-8").strip())
        except (FileNotFoundError, ValueError):
            pass
        return EndpointInfo(
            name=record["name"],
            state=record["state"],
            tags=dict(record.get("tags") or {}),
            model=record.get("model"),
            deployment=record.get("deployment"),
            traffic={k: int(v) for k, v in (record.get("traffic") or {}).items()},
            instance_type=INSTANCE_TYPE,
            instance_count=1,
            created_at=parse_iso(record.get("created_at")),
            last_activity=activity,
            error=record.get("error"),
            deployments=tuple(_deployment_info(d, record) for _, d in sorted((record.get("deployments") or {}).items())),
            mirror_traffic={k: int(v) for k, v in (record.get("mirror_traffic") or {}).items()},
        )

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        record = self._refresh_endpoint(endpoint_name)
        if record is None or record.get("state") == EP_DELETED:
            return None
        return self._info(record)

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        """``traffic`` None: 100% to the endpoint's deployment. Otherwise the split (percentages of
        existing deployments summing to 100); the deployment given 100% becomes the endpoint's
        deployment (its model the endpoint's). ``mirror``: the mirrored share (None: unchanged)."""
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None or record.get("state") == EP_DELETED:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            deployments = record.get("deployments") or {}
            if traffic is None:
                traffic = {record.get("deployment") or DEPLOYMENT_NAME: 100}
            check_traffic(endpoint_name, traffic, deployments, mirror)
            record["traffic"] = {k: int(v) for k, v in traffic.items() if int(v) > 0}
            if mirror is not None:
                record["mirror_traffic"] = {k: int(v) for k, v in mirror.items() if int(v) > 0}
            full = [k for k, v in record["traffic"].items() if v == 100]
            if full and full[0] in deployments:
                dep = deployments[full[0]]
                record.update(deployment=full[0], **{k: dep.get(k) for k in
                                                     ("model", "model_name", "model_version", "job_name", "base_model")})
            write_json(self._record_path(endpoint_name), record, mode=0o600)

    def list_endpoints(self) -> list[EndpointInfo]:
        found = []
        if not self.ws.endpoints_dir.is_dir():
            return found
        for record_path in sorted(self.ws.endpoints_dir.glob("*/record.json")):
            record = self._refresh_endpoint(record_path.parent.name)
            if record is None or record.get("state") == EP_DELETED:
                continue
            info = self._info(record)
            if info.managed:
                found.append(info)
        return found

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        ep_dir = self.ws.endpoint_dir(endpoint_name)
        with self.ws.lock("endpoint", ep_dir):
            record = read_json(self._record_path(endpoint_name))
            if record is None:
                raise NotFoundError(f"local endpoint {endpoint_name} not found")
            if record.get("state") == EP_DELETED:
                return
            self._stop_endpoint_processes(ep_dir)
            record.update(state=EP_DELETED, deleted_at=now_iso(), traffic={}, mirror_traffic={}, deployments={})
            write_json(self._record_path(endpoint_name), record, mode=0o600)
        log.info("deleted local endpoint %s", endpoint_name)

    def endpoint_health(self, endpoint_name: str) -> EndpointHealth:
        """Process alive and ``GET /health`` answering 200 within HEALTH_TIMEOUT_S."""
        import httpx

        record = self._refresh_endpoint(endpoint_name)  # a dead server process is recorded as failed here
        if record is None or record.get("state") == EP_DELETED:
            return EndpointHealth(HEALTH_MISSING, f"local endpoint {endpoint_name} does not exist")
        if record.get("state") == EP_PROVISIONING:
            return EndpointHealth(HEALTH_STARTING, "server process is starting")
        if record.get("state") != EP_SUCCEEDED:
            return EndpointHealth(HEALTH_UNHEALTHY, record.get("error") or f"endpoint is {record.get('state')}")
        url = f"http://127.0.0.1:{record['port']}/health"
        try:
            status = httpx.get(url, timeout=HEALTH_TIMEOUT_S).status_code
        except httpx.HTTPError as exc:
            alive = self._alive(self.ws.endpoint_dir(endpoint_name) / "server.pid")
            # Refused with the process gone is conclusive; a timeout of a live process may be a busy CPU.
            return EndpointHealth(HEALTH_UNHEALTHY, f"GET {url} failed: {type(exc).__name__}",
                                  definite=not alive or isinstance(exc, httpx.ConnectError))
        if status != 200:
            return EndpointHealth(HEALTH_UNHEALTHY, f"GET {url} answered HTTP {status}", definite=False)
        return EndpointHealth(HEALTH_HEALTHY, "server process alive, /health answered 200")

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        """The endpoint's router; with ``deployment`` the target pins that deployment (the
        ``azureml-model-deployment`` header), without it the endpoint's traffic split applies."""
        record = read_json(self._record_path(endpoint_name))
        if record is None or record.get("state") == EP_DELETED:
            raise NotFoundError(f"local endpoint {endpoint_name} not found")
        if deployment is not None and deployment not in (record.get("deployments") or {}):
            raise NotFoundError(f"deployment {deployment} of local endpoint {endpoint_name} not found")
        return ScoringTarget(
            url=f"http://127.0.0.1:{record['port']}/score", key=record["key"], timeout_s=SCORING_TIMEOUT_S,
            deployment=deployment,
        )


def _deployment_info(dep: dict[str, Any], record: dict[str, Any]) -> DeploymentInfo:
    return DeploymentInfo(name=dep["name"], state=dep.get("state") or EP_FAILED, model=dep.get("model"),
                          traffic=int((record.get("traffic") or {}).get(dep["name"], 0)), error=dep.get("error"))
