"""The small interface the app's flow needs from an ML workspace.

Two implementations: ``azureml.AzureMLBackend`` (production, azure-ai-ml) and
``local.LocalBackend`` (the embedded offline workspace). Function code only sees this.
Long-running operations (``begin_*``) start the work and return at once; their state is
read back later with ``get_job`` / ``get_endpoint``.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

# Job states, normalised across backends.
QUEUED, RUNNING, COMPLETED, FAILED, CANCELED = "queued", "running", "completed", "failed", "canceled"
JOB_FINAL_STATES = frozenset({COMPLETED, FAILED, CANCELED})

# Endpoint (with its single deployment) states.
EP_PROVISIONING, EP_SUCCEEDED, EP_FAILED, EP_DELETING, EP_DELETED = (
    "provisioning", "succeeded", "failed", "deleting", "deleted")

# Tag put on every job and endpoint this app creates; the janitor and the event handler
# only ever act on resources that carry it.
MANAGED_BY_TAG = "managed-by"
MANAGED_BY_VALUE = "finetune-autopilot"

# The local workspace's one "instance type" (its jobs and endpoints run on this machine), the key of
# its row in INSTANCE_HOURLY_PRICES.
LOCAL_INSTANCE_TYPE = "local"

# Lineage tags of a corpus job (``shared.training``), copied onto the job (Azure ML job tags,
# MLflow run tags) and onto the model it registers (Azure ML model tags, MLflow version tags).
COLLECTION_TAG = "collection"
CORPUS_TAG = "corpus-id"
DATASET_IDS_TAG = "dataset-ids"  # comma-separated, sorted
LINEAGE_TAGS = (COLLECTION_TAG, CORPUS_TAG, DATASET_IDS_TAG)


def lineage_tags(tags: dict[str, str] | None) -> dict[str, str]:
    """The lineage tags among ``tags`` (a job's), to put on the model it registers."""
    return {k: str(v) for k, v in (tags or {}).items() if k in LINEAGE_TAGS}


class BackendError(RuntimeError):
    """A backend operation failed; the message says what and why (no secrets)."""


class NotFoundError(BackendError):
    """The job, model or endpoint does not exist."""


class TransientBackendError(BackendError):
    """Throttled or unavailable (429/5xx): safe to retry later."""


@dataclasses.dataclass(frozen=True)
class FineTuneRequest:
    dataset_id: str
    train_blob: str  # blob name in the prepared container, e.g. datasets/<id>/train.jsonl
    test_blob: str
    model_name: str  # registered name of the fine-tuned model
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    params: dict[str, Any] = dataclasses.field(default_factory=dict)  # overrides (component names)
    # Corpus mode (shared.training): the collection, the corpus id and the datasets the
    # train/test files were built from (also in ``tags``, see LINEAGE_TAGS). Empty: one upload.
    collection: str = ""
    corpus_id: str = ""
    dataset_ids: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True)
class StepInfo:
    """One step (child run) of a pipeline job, from the workspace's run history."""

    name: str  # the step's run id
    display_name: str  # e.g. finetune, model_evaluation
    state: str  # one of QUEUED..CANCELED
    started_at: datetime | None = None
    ended_at: datetime | None = None
    error: str | None = None
    # metric name -> [(step, value), ...] in logging order; filled when the backend read metrics
    metrics: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class JobInfo:
    name: str
    state: str  # one of QUEUED..CANCELED
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    error: str | None = None
    metrics: dict[str, float] = dataclasses.field(default_factory=dict)  # e.g. base_test_loss, test_loss
    started_at: datetime | None = None
    ended_at: datetime | None = None
    log_path: str | None = None
    parent: str | None = None  # set for pipeline child steps
    steps: tuple[StepInfo, ...] = ()  # pipeline steps (Azure ML, once the job is final)
    # A running job's progress where the backend reports it: step, total_steps (or None), loss,
    # training_started_at and at (ISO 8601).
    progress: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class MetricsHistory:
    """A job's training curves: each metric's (step, value) points in step order.

    ``series`` holds what the trainer logged per step (``train_loss`` at least, when it logs
    anything); ``final`` the metrics logged once (``base_test_loss``, ``test_loss``: the test loss
    of the base model and of the fine-tuned one, where the backend computes them).
    """

    job_name: str
    series: dict[str, list[tuple[int, float]]] = dataclasses.field(default_factory=dict)
    final: dict[str, float] = dataclasses.field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"series": {k: [[step, value] for step, value in points] for k, points in self.series.items()},
                "final": dict(self.final)}


@dataclasses.dataclass(frozen=True)
class ModelRef:
    name: str
    version: str
    job_name: str
    base_model: str = ""

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.version}"


@dataclasses.dataclass(frozen=True)
class EndpointInfo:
    name: str
    state: str  # EP_*
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    model: str | None = None  # "name:version"
    deployment: str | None = None
    traffic: dict[str, int] = dataclasses.field(default_factory=dict)
    instance_type: str | None = None
    instance_count: int = 1
    created_at: datetime | None = None
    last_activity: datetime | None = None  # the backend's own metric (None: unknown)
    error: str | None = None

    @property
    def managed(self) -> bool:
        return self.tags.get(MANAGED_BY_TAG) == MANAGED_BY_VALUE


@dataclasses.dataclass(frozen=True)
class ScoringTarget:
    """Where and how to call an endpoint: Azure ML's contract (POST JSON, bearer auth)."""

    url: str
    key: str | None
    timeout_s: float
    deployment: str | None = None

    def headers(self) -> dict[str, str]:
        h = {"Content-Type": "application/json"}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        if self.deployment:
            h["azureml-model-deployment"] = self.deployment
        return h


# Endpoint health (``MLBackend.endpoint_health``): is the endpoint able to serve right now?
HEALTH_HEALTHY = "healthy"  # serving
HEALTH_STARTING = "starting"  # being created or updated: not serving yet, nothing to heal
HEALTH_UNHEALTHY = "unhealthy"  # exists but cannot serve (process died, deployment failed, ...)
HEALTH_MISSING = "missing"  # the backend has no such endpoint
HEALTH_UNKNOWN = "unknown"  # could not tell (the backend itself is unreachable): act on nothing


@dataclasses.dataclass(frozen=True)
class EndpointHealth:
    """One look at an endpoint's health, with the reason in words."""

    status: str  # HEALTH_*
    reason: str = ""
    # True when the evidence is conclusive at once (the process is gone, the deployment is
    # Failed); False when one look is not enough (a health probe timed out on a busy server):
    # the health loop acts only when it persists.
    definite: bool = True


@runtime_checkable
class MLBackend(Protocol):
    name: str

    @property
    def workspace_id(self) -> str:
        """Resource id used as the topic of the workspace's job events."""

    def submit_finetune(self, request: FineTuneRequest) -> str:
        """Submit the fine-tune; return the job name. Never waits for the job."""

    def get_job(self, job_name: str) -> JobInfo:
        """Current state of a job (raises NotFoundError)."""

    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        """Register the job's trained model; the same job always gives the same version."""

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        """Start creating endpoint + deployment for ``model``; return at once (idempotent)."""

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        """Endpoint and deployment state, or None when it does not exist."""

    def set_traffic(self, endpoint_name: str) -> None:
        """Route 100% of the endpoint's traffic to its deployment (once it has succeeded)."""

    def list_endpoints(self) -> list[EndpointInfo]:
        """Endpoints this app manages (carrying the managed-by tag)."""

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        """Start deleting an endpoint; return at once."""

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False) -> ScoringTarget:
        """Scoring URI and key/token (cached; ``refresh`` re-reads them, e.g. after a 401)."""

    def job_metrics_history(self, job_name: str) -> MetricsHistory:
        """The job's training curves from its tracking (MLflow); empty when it logged none yet
        (raises NotFoundError for an unknown job, TransientBackendError when unreachable)."""

    def endpoint_health(self, endpoint_name: str) -> EndpointHealth:
        """Whether the endpoint can serve now (local: process and ``/health``; Azure: provisioning
        states). Never raises for a missing endpoint (HEALTH_MISSING); bounded in time."""
