"""One in-memory ML workspace behind the MLBackend interface, for every test that needs a backend.

Jobs, a model registry, endpoints and scoring targets held in dicts; long operations finish when
a test says so. Stricter than the real backends where that exposes bugs in the flow:

* ``register_model`` gives a NEW version on every call (as MLflow's log_model does), so a double
  registration by concurrent deliveries shows up as a second version;
* ``list_endpoints`` lists every endpoint, ours or not: callers must check the managed-by tag;
* every call is counted (``calls``; per job or endpoint in ``calls_on``), and ``fail_next[op]``
  makes the next call of ``op`` raise.

Jobs carry what a test gives them (run times, ``progress``) and their training curves
(``curves``: a MetricsHistory, or the error an unreachable tracking raises).

Deletion behaves like Azure (the endpoint stays "deleting" until ``finish_deletions``) or, with
``removes_at_once``, like the local workspace. Scoring targets point at ``target_url`` (a stub
endpoint) with per-endpoint overrides, and cache each endpoint's key like the real backends, so
a key rotated on the stub really produces a 401 with the cached key.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections import Counter
from typing import Any

from shared.backends import use_backend
from shared.backends.base import (
    COMPLETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    HEALTH_HEALTHY,
    HEALTH_MISSING,
    HEALTH_STARTING,
    HEALTH_UNHEALTHY,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
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
    check_traffic,
)
from shared.ledger import Ledger
from shared.settings import use_settings

OUR_TAGS = {MANAGED_BY_TAG: MANAGED_BY_VALUE}
DEFAULT_WORKSPACE_ID = "/subscriptions/x/resourceGroups/y/providers/Microsoft.MachineLearningServices/workspaces/in-memory"


class InMemoryWorkspace:
    name = "in-memory"

    def __init__(self, workspace_id: str = DEFAULT_WORKSPACE_ID, base_model: str = "base-model", call_delay_s: float = 0.0,
                 *, endpoints: list[EndpointInfo] | None = None, removes_at_once: bool = False,
                 target_url: str = "http://127.0.0.1:1", key: str | Any = "k", timeout_s: float = 5.0,
                 assume_healthy: bool = False):
        self._workspace_id = workspace_id
        self._base_model = base_model
        self._delay = call_delay_s  # widens race windows in the concurrency tests
        self._lock = threading.Lock()
        self.jobs: dict[str, JobInfo] = {}
        self.versions: dict[str, list[str]] = {}  # model name -> versions, in order
        self.endpoints: dict[str, EndpointInfo] = {e.name: e for e in endpoints or []}
        self.calls: Counter[str] = Counter()
        self.calls_on: Counter[tuple[str, str]] = Counter()  # (operation, job or endpoint name) -> calls
        self.fail_next: dict[str, Exception] = {}  # operation name -> error raised once
        # submissions
        self.requests: list[FineTuneRequest] = []
        self.fail_submissions = 0  # the next N submissions raise BackendError
        # deployments and deletions
        self.deploys: list[tuple[ModelRef, str, dict[str, str]]] = []
        self.delete_calls: list[str] = []
        self.removes_at_once = removes_at_once
        self.failing_deletes: set[str] = set()  # endpoint names whose deletion is refused
        self.list_error: Exception | None = None
        # scoring targets
        self.target_url = target_url
        self.key = key  # a str, or an object with a ``key`` attribute (a stub endpoint that rotates it)
        self.timeout_s = timeout_s
        self.urls: dict[str, str] = {}  # per-endpoint URL overrides (e.g. a closed port)
        self.missing: set[str] = set()  # endpoints whose scoring target is gone
        self.keys: dict[str, str] = {}
        self.target_calls: list[tuple[str, bool]] = []
        # health: what ``endpoint_health`` reports; ``assume_healthy`` (scoring against a stub, where
        # the endpoints live only in the ledger): healthy unless told otherwise or ``missing``
        self.health: dict[str, EndpointHealth] = {}
        self.assume_healthy = assume_healthy
        # further deployments of an endpoint (a candidate beside the champion) and their live figures
        self.deployments: dict[tuple[str, str], DeploymentInfo] = {}
        self.metrics: dict[str, dict[str, DeploymentMetrics]] = {}
        self.traffic_calls: list[tuple[str, dict[str, int] | None]] = []
        # training curves by job name: what ``job_metrics_history`` returns, or an error it raises
        self.curves: dict[str, MetricsHistory | Exception] = {}

    # --- test controls
    def add_job(self, name: str, state: str = RUNNING, **kw: Any) -> None:
        kw.setdefault("tags", dict(OUR_TAGS))
        self.jobs[name] = JobInfo(name=name, state=state, **kw)

    def set_job(self, name: str, state: str, **kw: Any) -> None:
        old = self.jobs[name]
        self.jobs[name] = JobInfo(name=name, state=state, tags=old.tags, **kw)

    def add_endpoint(self, info: EndpointInfo) -> None:
        self.endpoints[info.name] = info

    def add_ready_endpoint(self, name: str) -> None:
        """An endpoint of ours that serves now (its one deployment ``default``)."""
        self.add_endpoint(EndpointInfo(name=name, state=EP_SUCCEEDED, tags=dict(OUR_TAGS), deployment="default"))

    def finish_deployment(self, endpoint: str, ok: bool = True, error: str | None = None) -> None:
        ep = self.endpoints[endpoint]
        self.endpoints[endpoint] = dataclasses.replace(
            ep, state=EP_SUCCEEDED if ok else EP_FAILED, error=None if ok else (error or "deployment failed"))

    def finish_deletion(self, endpoint: str) -> None:
        self.endpoints.pop(endpoint, None)

    def finish_deletions(self) -> None:
        self.endpoints = {n: e for n, e in self.endpoints.items() if e.state != EP_DELETING}

    def _enter(self, op: str, subject: str | None = None) -> None:
        with self._lock:
            self.calls[op] += 1
            if subject is not None:
                self.calls_on[(op, subject)] += 1
            error = self.fail_next.pop(op, None)
        if error is not None:
            raise error
        if self._delay:
            time.sleep(self._delay)

    # --- MLBackend
    @property
    def workspace_id(self) -> str:
        return self._workspace_id

    def submit_finetune(self, request: FineTuneRequest) -> str:
        self._enter("submit_finetune")
        with self._lock:
            if self.fail_submissions:
                self.fail_submissions -= 1
                raise BackendError("workspace unavailable (503)")
            self.requests.append(request)
            name = f"ftjob-{len(self.requests):03d}"
        self.add_job(name, RUNNING, tags=dict(request.tags))
        return name

    def get_job(self, job_name: str) -> JobInfo:
        self._enter("get_job", job_name)
        try:
            return self.jobs[job_name]
        except KeyError:
            raise NotFoundError(f"job {job_name} not found") from None

    def job_metrics_history(self, job_name: str) -> MetricsHistory:
        self._enter("job_metrics_history", job_name)
        curve = self.curves.get(job_name)
        if isinstance(curve, Exception):
            raise curve
        if curve is not None:
            return curve
        if job_name not in self.jobs:
            raise NotFoundError(f"job {job_name} not found")
        return MetricsHistory(job_name)  # a job that logged nothing yet

    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        self._enter("register_model")
        if self.jobs[job_name].state != COMPLETED:
            raise NotFoundError(f"job {job_name} has no trained model")
        with self._lock:
            versions = self.versions.setdefault(model_name, [])
            versions.append(str(len(versions) + 1))
            return ModelRef(model_name, versions[-1], job_name, self._base_model)

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        self._enter("begin_deploy")
        with self._lock:
            self.deploys.append((model, endpoint_name, dict(tags)))
            self.endpoints[endpoint_name] = EndpointInfo(
                name=endpoint_name, state=EP_PROVISIONING, tags=dict(tags), model=model.ref, deployment="default"
            )

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        self._enter("get_endpoint")
        return self.endpoints.get(endpoint_name)

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        self._enter("set_traffic")
        self.traffic_calls.append((endpoint_name, traffic))
        if endpoint_name not in self.endpoints:
            raise NotFoundError(endpoint_name)
        ep = self.endpoints[endpoint_name]
        if traffic is None:
            self.endpoints[endpoint_name] = dataclasses.replace(ep, traffic={ep.deployment or "default": 100})
            return
        names = {ep.deployment or "default"} | {d for (e, d) in self.deployments if e == endpoint_name}
        check_traffic(endpoint_name, traffic, names, mirror)
        full = [d for d, pct in traffic.items() if pct == 100]
        changes: dict[str, Any] = {"traffic": {d: p for d, p in traffic.items() if p}}
        if full and full[0] != ep.deployment:
            promoted = self.deployments.pop((endpoint_name, full[0]))
            if ep.deployment:  # the old champion stays a deployment (at 0%) until deleted
                self.deployments[(endpoint_name, ep.deployment)] = DeploymentInfo(ep.deployment, EP_SUCCEEDED, ep.model)
            changes.update(deployment=full[0], model=promoted.model)
        self.endpoints[endpoint_name] = dataclasses.replace(ep, **changes)

    # --- further deployments
    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        self._enter("begin_deploy_deployment")
        ep = self.endpoints.get(endpoint_name)
        if ep is None or ep.state in (EP_DELETING, EP_FAILED):
            raise NotFoundError(endpoint_name)
        current = self.deployments.get((endpoint_name, deployment))
        if current is not None and current.model == model.ref and current.state != EP_FAILED:
            return
        self.deployments[(endpoint_name, deployment)] = DeploymentInfo(deployment, EP_PROVISIONING, model.ref)

    def finish_candidate(self, endpoint: str, deployment: str, ok: bool = True, error: str | None = None) -> None:
        dep = self.deployments[(endpoint, deployment)]
        self.deployments[(endpoint, deployment)] = dataclasses.replace(
            dep, state=EP_SUCCEEDED if ok else EP_FAILED, error=None if ok else (error or "deployment failed"))

    def get_deployment(self, endpoint_name: str, deployment: str) -> DeploymentInfo | None:
        self._enter("get_deployment")
        ep = self.endpoints.get(endpoint_name)
        if ep is None:
            return None
        if ep.deployment == deployment:
            return DeploymentInfo(deployment, ep.state, ep.model, (ep.traffic or {}).get(deployment, 0), ep.error)
        dep = self.deployments.get((endpoint_name, deployment))
        return dataclasses.replace(dep, traffic=(ep.traffic or {}).get(deployment, 0)) if dep else None

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        self._enter("begin_delete_deployment")
        ep = self.endpoints.get(endpoint_name)
        if ep is None or (endpoint_name, deployment) not in self.deployments:
            raise NotFoundError(f"{endpoint_name}/{deployment}")
        if (ep.traffic or {}).get(deployment):
            raise BackendError(f"deployment {deployment} takes traffic")
        del self.deployments[(endpoint_name, deployment)]

    def deployment_metrics(self, endpoint_name: str, since: Any) -> dict[str, DeploymentMetrics]:
        self._enter("deployment_metrics")
        return dict(self.metrics.get(endpoint_name, {}))

    def list_endpoints(self) -> list[EndpointInfo]:
        self._enter("list_endpoints")
        if self.list_error:
            raise self.list_error
        return list(self.endpoints.values())

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        self._enter("begin_delete_endpoint")
        self.delete_calls.append(endpoint_name)
        if endpoint_name in self.failing_deletes:
            raise BackendError(f"quota service said no to {endpoint_name}")
        ep = self.endpoints.get(endpoint_name)
        if ep is None:
            raise NotFoundError(endpoint_name)
        if self.removes_at_once:
            del self.endpoints[endpoint_name]
        else:
            self.endpoints[endpoint_name] = dataclasses.replace(ep, state=EP_DELETING)

    def endpoint_health(self, endpoint_name: str) -> EndpointHealth:
        if endpoint_name in self.health:
            return self.health[endpoint_name]
        if endpoint_name in self.missing:
            return EndpointHealth(HEALTH_MISSING, f"endpoint {endpoint_name} not found")
        ep = self.endpoints.get(endpoint_name)
        if ep is None:
            return EndpointHealth(HEALTH_HEALTHY, "stub") if self.assume_healthy else EndpointHealth(
                HEALTH_MISSING, f"endpoint {endpoint_name} not found")
        status = {EP_SUCCEEDED: HEALTH_HEALTHY, EP_PROVISIONING: HEALTH_STARTING}.get(ep.state, HEALTH_UNHEALTHY)
        return EndpointHealth(status, ep.error or ep.state)

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        self.target_calls.append((endpoint_name, refresh))
        if endpoint_name in self.missing:
            raise NotFoundError(f"endpoint {endpoint_name} not found")
        if refresh or endpoint_name not in self.keys:
            self.keys[endpoint_name] = self.key if isinstance(self.key, str) else self.key.key
        url = self.urls.get(endpoint_name, self.target_url)
        return ScoringTarget(url=f"{url}/score", key=self.keys[endpoint_name], timeout_s=self.timeout_s,
                             deployment=deployment or f"{endpoint_name}-dep")


def install_workspace(settings, **workspace_kw):
    """An in-memory workspace installed as the backend, with these settings: (settings, ledger, workspace)."""
    workspace = InMemoryWorkspace(settings.workspace_resource_id, base_model=settings.base_model_name, **workspace_kw)
    use_settings(settings)
    use_backend(workspace, settings)
    return settings, Ledger.from_settings(settings), workspace
