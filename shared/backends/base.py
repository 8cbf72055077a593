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
class DeploymentInfo:
    """One deployment of an endpoint (an endpoint holds several: the champion, a candidate)."""

    name: str
    state: str  # EP_PROVISIONING, EP_SUCCEEDED, EP_FAILED (EP_DELETING while Azure deletes it)
    model: str | None = None  # "name:version"
    traffic: int = 0  # its percentage of the endpoint's live traffic
    error: str | None = None


@dataclasses.dataclass(frozen=True)
class DeploymentMetrics:
    """A deployment's live figures over a window (local: the router's counters; Azure: Azure
    Monitor's ``RequestsPerMinute`` and ``RequestLatency_P95`` split by deployment, with errors
    from the 5xx ``StatusCodeClass``)."""

    requests: int
    errors: int
    p95_ms: float | None

    @property
    def error_rate(self) -> float | None:
        return self.errors / self.requests if self.requests else None

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "errors": self.errors, "error_rate": self.error_rate, "p95_ms": self.p95_ms}


# The request header that pins one deployment of an endpoint (and, on answers, names the one that served).
DEPLOYMENT_HEADER = "azureml-model-deployment"

# Deployment names: Azure ML's rule (3-32 characters, letters, digits and hyphens, starting with a letter).
DEPLOYMENT_NAME_PATTERN = r"^[a-zA-Z][a-zA-Z0-9-]{1,30}[a-zA-Z0-9]$"


def check_traffic(endpoint_name: str, traffic: dict[str, int], deployments: Any,
                  mirror: dict[str, int] | None = None) -> None:
    """Azure ML's rules for a traffic split: known deployments, whole percentages 0-100 summing to
    100 (or 0); a mirrored deployment takes no live traffic and mirrors at most 50%."""
    names = set(deployments)
    unknown = sorted(set(traffic) - names) + sorted(set(mirror or {}) - names)
    if unknown:
        raise BackendError(f"endpoint {endpoint_name} has no deployment {', '.join(unknown)}")
    values = list(traffic.values()) + list((mirror or {}).values())
    if any(not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= 100 for v in values):
        raise BackendError(f"traffic of endpoint {endpoint_name} must be whole percentages 0-100: {traffic}")
    if sum(traffic.values()) not in (0, 100):
        raise BackendError(f"traffic of endpoint {endpoint_name} must sum to 100 (or 0), got {sum(traffic.values())}")
    for name, pct in (mirror or {}).items():
        if pct and (traffic.get(name) or pct > 50):
            raise BackendError(f"deployment {name} of endpoint {endpoint_name} cannot be mirrored {pct}% "
                               "(a mirrored deployment takes no live traffic, at most 50%)")


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
    deployments: tuple[DeploymentInfo, ...] = ()  # every deployment (``deployment`` is the champion's)
    mirror_traffic: dict[str, int] = dataclasses.field(default_factory=dict)

    def deployment_info(self, name: str) -> DeploymentInfo | None:
        return next((d for d in self.deployments if d.name == name), None)

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
            h[DEPLOYMENT_HEADER] = self.deployment
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

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        """Route 100% of the endpoint's traffic to its deployment (once it has succeeded); with
        ``traffic``, that split between its deployments (``check_traffic``'s rules), the one given
        100% becoming the endpoint's deployment; ``mirror``: mirrored shares (None: unchanged)."""

    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        """Start ``model`` as a further deployment of a live endpoint at 0% traffic; return at
        once (idempotent; raises NotFoundError when the endpoint does not exist)."""

    def get_deployment(self, endpoint_name: str, deployment: str) -> DeploymentInfo | None:
        """One deployment's state, None when it (or its endpoint) does not exist."""

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        """Start deleting one deployment that takes no traffic; return at once (NotFoundError when gone)."""

    def deployment_metrics(self, endpoint_name: str, since: datetime) -> dict[str, DeploymentMetrics]:
        """Each deployment's requests, errors and p95 latency since ``since`` (TransientBackendError
        when the figures cannot be read now)."""

    def list_endpoints(self) -> list[EndpointInfo]:
        """Endpoints this app manages (carrying the managed-by tag)."""

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        """Start deleting an endpoint; return at once."""

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        """Scoring URI and key/token (cached; ``refresh`` re-reads them, e.g. after a 401); with
        ``deployment`` the target pins it (header ``azureml-model-deployment``), without it the
        endpoint's traffic split picks the deployment."""

    def job_metrics_history(self, job_name: str) -> MetricsHistory:
        """The job's training curves from its tracking (MLflow); empty when it logged none yet
        (raises NotFoundError for an unknown job, TransientBackendError when unreachable)."""

    def endpoint_health(self, endpoint_name: str) -> EndpointHealth:
        """Whether the endpoint can serve now (local: process and ``/health``; Azure: provisioning
        states). Never raises for a missing endpoint (HEALTH_MISSING); bounded in time."""
