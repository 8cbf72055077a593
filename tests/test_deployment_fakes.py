"""An in-memory workspace behind the MLBackend interface, and event helpers, for the job-event tests.

Stricter than the real backends where that exposes bugs in the flow: ``register_model`` gives a
NEW version on every call (as MLflow's log_model does), so any double registration by
concurrent deliveries shows up as a second version; every call is counted.
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from shared import ledger as L
from shared.backends.base import (
    COMPLETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    RUNNING,
    EndpointInfo,
    FineTuneRequest,
    JobInfo,
    ModelRef,
    NotFoundError,
    ScoringTarget,
)
from shared.ledger import Ledger
from shared.settings import Settings

OUR_TAGS = {MANAGED_BY_TAG: MANAGED_BY_VALUE}


class InMemoryWorkspace:
    """Jobs, a model registry and endpoints held in dicts; long operations finish when a test says so."""

    name = "in-memory"

    def __init__(self, workspace_id: str, base_model: str = "base-model", call_delay_s: float = 0.0):
        self._workspace_id = workspace_id
        self._base_model = base_model
        self._delay = call_delay_s  # widens race windows in the concurrency tests
        self._lock = threading.Lock()
        self.jobs: dict[str, JobInfo] = {}
        self.versions: dict[str, list[str]] = {}  # model name -> versions, in order
        self.endpoints: dict[str, EndpointInfo] = {}
        self.calls: Counter[str] = Counter()
        self.deploy_calls: list[tuple[str, str, dict[str, str]]] = []
        self.fail_next: dict[str, Exception] = {}  # operation name -> error raised once

    # --- test controls
    def add_job(self, name: str, state: str = RUNNING, **kw: Any) -> None:
        kw.setdefault("tags", dict(OUR_TAGS))
        self.jobs[name] = JobInfo(name=name, state=state, **kw)

    def set_job(self, name: str, state: str, **kw: Any) -> None:
        old = self.jobs[name]
        self.jobs[name] = JobInfo(name=name, state=state, tags=old.tags, **kw)

    def finish_deployment(self, endpoint: str, ok: bool = True, error: str | None = None) -> None:
        ep = self.endpoints[endpoint]
        self.endpoints[endpoint] = EndpointInfo(
            name=ep.name,
            state=EP_SUCCEEDED if ok else EP_FAILED,
            tags=ep.tags,
            model=ep.model,
            deployment=ep.deployment,
            traffic=ep.traffic,
            error=None if ok else (error or "deployment failed"),
        )

    def finish_deletion(self, endpoint: str) -> None:
        self.endpoints.pop(endpoint, None)

    def _enter(self, op: str) -> None:
        with self._lock:
            self.calls[op] += 1
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
        raise NotImplementedError("submission is not part of these tests")

    def get_job(self, job_name: str) -> JobInfo:
        self._enter("get_job")
        try:
            return self.jobs[job_name]
        except KeyError:
            raise NotFoundError(f"job {job_name} not found") from None

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
            self.deploy_calls.append((model.ref, endpoint_name, dict(tags)))
            self.endpoints[endpoint_name] = EndpointInfo(
                name=endpoint_name, state=EP_PROVISIONING, tags=dict(tags), model=model.ref, deployment="default"
            )

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        self._enter("get_endpoint")
        return self.endpoints.get(endpoint_name)

    def set_traffic(self, endpoint_name: str) -> None:
        self._enter("set_traffic")
        ep = self.endpoints[endpoint_name]
        self.endpoints[endpoint_name] = EndpointInfo(
            name=ep.name,
            state=ep.state,
            tags=ep.tags,
            model=ep.model,
            deployment=ep.deployment,
            traffic={ep.deployment or "default": 100},
        )

    def list_endpoints(self) -> list[EndpointInfo]:
        self._enter("list_endpoints")
        return [e for e in self.endpoints.values() if e.managed]

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        self._enter("begin_delete_endpoint")
        ep = self.endpoints.get(endpoint_name)
        if ep is None:
            raise NotFoundError(endpoint_name)
        self.endpoints[endpoint_name] = EndpointInfo(name=ep.name, state=EP_DELETING, tags=ep.tags, model=ep.model)

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False) -> ScoringTarget:
        return ScoringTarget(url=f"http://127.0.0.1:1/{endpoint_name}/score", key="k", timeout_s=5)


# --------------------------------------------------------------------------- events


def load_sample(fixtures_dir: Path, name: str) -> dict[str, Any]:
    return json.loads((fixtures_dir / "eventgrid" / name).read_text(encoding="utf-8"))


def ours(sample: dict[str, Any], settings: Settings, run_id: str, **data_changes: Any) -> dict[str, Any]:
    """A copy of an official sample re-addressed to our workspace and one of our jobs."""
    event = copy.deepcopy(sample)
    topic_key = "source" if "source" in event else "topic"
    event[topic_key] = settings.workspace_resource_id
    experiment = event["data"]["experimentId"]
    event["subject"] = f"experiments/{experiment}/runs/{run_id}"
    event["data"]["runId"] = run_id
    event["data"].update(data_changes)
    return event


def submit_job(
    ledger: Ledger, settings: Settings, workspace: InMemoryWorkspace, name: str, state: str = RUNNING, **job_kw: Any
) -> None:
    """What the preparation module leaves behind: a submitted job in the ledger and the workspace."""
    ledger.create(
        L.JOB,
        name,
        "submitted",
        dataset_id=f"ds-{name}",
        model_name=settings.model_name,
        base_model=settings.base_model_name,
        backend=workspace.name,
        tags=dict(OUR_TAGS),
    )
    workspace.add_job(name, state, **job_kw)
