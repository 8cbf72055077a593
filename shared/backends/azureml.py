"""Azure ML backend: the Phi-3 cookbook notebook "FineTuning_MLSDK", step by step, unattended.

Every notebook step has its place here, reshaped for an event-driven app that never waits:

======================================  ==================================================
notebook                                here
======================================  ==================================================
``MLClient.from_config`` / workspace    :attr:`AzureMLBackend.workspace` (settings or config.json)
``MLClient(registry_name="azureml")``   :attr:`AzureMLBackend.registry` (lazy: its constructor calls
                                        the registry discovery service)
``models.get(name, label="latest")``    :meth:`AzureMLBackend.foundation_model` (+ tags parsed safely,
                                        lifecycle dates: :meth:`check_foundation_model`)
compute checks, ``list_sizes()``        :meth:`AzureMLBackend.finetune_compute` (+ retired sizes; GPUs
                                        from a size table: the identity may not list sizes)
the datastore of the data               :meth:`AzureMLBackend.check_datastore`
fine-tune parameters, display name      :mod:`shared.backends.azureml_params`
``@pipeline`` + ``jobs.create_or_update``  :meth:`AzureMLBackend.submit_finetune` (``jobs.stream``
                                        is replaced by the job-completed event)
``Model(path=azureml://jobs/...)``      :meth:`AzureMLBackend.register_model`
endpoint, deployment "demo", traffic    :meth:`begin_deploy` / :meth:`get_endpoint` / :meth:`set_traffic`
``online_endpoints.begin_delete``       :meth:`begin_delete_endpoint`
"Review training metrics"               :meth:`AzureMLBackend.job_steps` (run history: steps, times,
                                        errors, metrics), used by :meth:`get_job`
======================================  ==================================================

Deployment state machine (every call returns at once; Azure does the long work):

1. ``begin_deploy`` checks the instance type against the model's inference allow list, then
   starts the endpoint PUT (``ManagedOnlineEndpoint``, tags carry the model ``name:version``).
2. ``get_endpoint`` (driven by the reconcile timer) reads the endpoint. While Azure is creating
   it: ``provisioning``. Once it has succeeded and has no deployment yet, it starts the
   deployment PUT (``ManagedOnlineDeployment`` of the model in the endpoint's tags) and still
   answers ``provisioning``: a deployment can only be created on an existing endpoint, and the
   endpoint's own tags make this step stateless (any worker, any time, exactly the same call).
3. The deployment succeeds: ``get_endpoint`` answers ``succeeded``; the caller then calls
   ``set_traffic`` (100% to the deployment, started, not waited on). Failures at any step
   answer ``failed`` with a reason.

Long operations are started with one request each and never polled (:mod:`azureml_rest`): the
SDK's ``begin_*`` pollers would keep polling in daemon threads of the function host (and print
dots); the ``reconcile`` timer re-reads the state instead. Reads are the minimum the step needs
(docs/azureml-backend.md lists the counts a test measures).

Before anything is submitted the registry model's lifecycle (``FinetuneRetirementDate`` /
``InferenceRetirementDate``), both instance types (allow lists, retired sizes) and the datastore
(``AZURE_ML_DATASTORE`` on the prepared container) are checked, so a job Azure would refuse after
queueing is never sent. Once a job is final, ``get_job`` reads its steps from the run history:
start and end times, the failing step's error, and, when ``QUALITY_GATE`` is on, the metrics the
steps logged.

``azure.ai.ml`` is imported only inside this module's methods (``get_backend`` imports this
module only when ``ML_BACKEND=azureml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.backends import azureml_rest as rest
from shared.backends.azureml_compute import (
    SERVERLESS,
    FinetuneCompute,
    check_cluster_state,
    check_finetune_size,
    check_size_current,
    known_gpus_per_node,
)
from shared.backends.azureml_health import serving_deployment
from shared.backends.azureml_model import VERSION_PROBES, FoundationModel, registered_model_version
from shared.backends.azureml_params import ComponentInterface, ParameterError, finetune_parameters, pipeline_display_name
from shared.backends.base import (
    CANCELED,
    COMPLETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    FAILED,
    JOB_FINAL_STATES,
    MANAGED_BY_TAG,
    MANAGED_BY_VALUE,
    QUEUED,
    RUNNING,
    BackendError,
    EndpointInfo,
    FineTuneRequest,
    JobInfo,
    ModelRef,
    NotFoundError,
    ScoringTarget,
    StepInfo,
    TransientBackendError,
    lineage_tags,  # model lineage tags (corpus mode)
)
from shared.ledger.store import parse_iso
from shared.settings import Settings

if TYPE_CHECKING:
    from azure.ai.ml import MLClient

log = logging.getLogger(__name__)

PIPELINE_COMPONENT = "chat_completion_pipeline"
TRAINED_MODEL_OUTPUT = "trained_model"  # the pipeline output the notebook maps mlflow_model_folder to
DEPLOYMENT_NAME = "demo"  # the notebook's deployment name; one deployment per endpoint
PROBE_INITIAL_DELAY_S = 600  # the model takes minutes to load: no liveness restarts before that
REQUEST_TIMEOUT_MS = 90_000
SCORING_TIMEOUT_S = 90.0
METRICS_NAMESPACE = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
ACTIVITY_METRIC = "RequestsPerMinute"
_METRICS_BATCH = 50  # resource ids per metrics:getBatch call (service limit)
_REGISTRY_CACHE_S = 3600.0  # the registry's "latest" model and component change rarely
_JOB_REUSE_S = 60.0  # register_model reuses the job get_job has just read (the same event)
_DATASTORE_TYPES = {"azureblob": "container_name", "azuredatalakegen2": "filesystem"}  # DatastoreType values, lower case

# Azure ML job statuses -> the app's job states. Statuses that are not final map to queued or
# running so that nothing acts on a job before Azure says it is over.
_JOB_STATES = {
    "notstarted": QUEUED, "queued": QUEUED, "preparing": QUEUED, "starting": QUEUED,
    "provisioning": QUEUED, "paused": QUEUED,
    "running": RUNNING, "finalizing": RUNNING, "cancelrequested": RUNNING, "notresponding": RUNNING,
    "completed": COMPLETED, "failed": FAILED, "canceled": CANCELED,
}


# --------------------------------------------------------------------------- errors

def _reason(exc: BaseException) -> str:
    """The service's error code and message, on one line, without request details."""
    error = getattr(exc, "error", None)
    code = getattr(error, "code", None)
    message = getattr(error, "message", None) or getattr(exc, "message", None) or str(exc)
    text = " ".join(str(message).split())
    if len(text) > 400:
        text = text[:400] + "..."
    return f"{code}: {text}" if code and code not in text else text


@contextlib.contextmanager
def azure_errors(action: str) -> Iterator[None]:
    """Map Azure SDK errors to the backend's: 404 NotFound, 429/5xx/network transient, the rest clear errors."""
    from azure.ai.ml.exceptions import MlException
    from azure.core.exceptions import (
        ClientAuthenticationError,
        HttpResponseError,
        ResourceNotFoundError,
        ServiceRequestError,
        ServiceResponseError,
    )

    try:
        yield
    except BackendError:
        raise
    except ResourceNotFoundError as exc:
        raise NotFoundError(f"{action}: not found ({_reason(exc)})") from exc
    except ClientAuthenticationError as exc:
        if exc.status_code is None:  # raised by the credential itself: no token at all
            raise BackendError(f"{action}: no Azure credential could get a token ({_reason(exc)})") from exc
        raise BackendError(f"{action}: not authorized ({_reason(exc)}); check the identity's role on the workspace") from exc
    except HttpResponseError as exc:
        status = exc.status_code or 0
        if status == 404:
            raise NotFoundError(f"{action}: not found ({_reason(exc)})") from exc
        if status == 429 or status >= 500:
            raise TransientBackendError(f"{action}: Azure ML answered HTTP {status}, retry later ({_reason(exc)})") from exc
        if status == 409:
            raise BackendError(f"{action}: conflict with the resource's current state (HTTP 409, {_reason(exc)})") from exc
        raise BackendError(f"{action}: HTTP {status or '?'} ({_reason(exc)})") from exc
    except (ServiceRequestError, ServiceResponseError) as exc:
        raise TransientBackendError(f"{action}: cannot reach Azure ML ({_reason(exc)})") from exc
    except MlException as exc:
        raise BackendError(f"{action}: {_reason(exc)}") from exc


# --------------------------------------------------------------------------- pipeline building

def pipeline_inputs(
    interface: ComponentInterface,
    *,
    model_id: str,
    compute: FinetuneCompute,
    train_uri: str,
    test_uri: str,
    params: Mapping[str, Any],
) -> dict[str, Any]:
    """The component inputs the notebook passes, plus serverless instance types when no cluster is named."""
    from azure.ai.ml import Input
    from azure.ai.ml.constants import AssetTypes

    inputs: dict[str, Any] = {
        "mlflow_model_path": model_id,
        "compute_model_import": compute.compute,
        "compute_preprocess": compute.compute,
        "compute_finetune": compute.compute,
        "compute_model_evaluation": compute.compute,
        "train_file_path": Input(type=AssetTypes.URI_FILE, path=train_uri),
        "test_file_path": Input(type=AssetTypes.URI_FILE, path=test_uri),
        "number_of_gpu_to_use_finetuning": compute.gpus_per_node,
    }
    if compute.serverless:
        # The component runs model import and preprocessing on its CPU default; training and
        # evaluation need the GPU size.
        for name in ("instance_type_finetune", "instance_type_model_evaluation"):
            if name in interface.inputs:
                inputs[name] = compute.size
    inputs.update(params)
    return inputs


def build_pipeline_job(
    component: Any,
    interface: ComponentInterface,
    inputs: Mapping[str, Any],
    *,
    display_name: str,
    tags: Mapping[str, str],
    experiment_name: str,
) -> Any:
    """The notebook's ``@pipeline`` around the registry component, checked against its interface first."""
    from azure.ai.ml.dsl import pipeline

    problems = interface.problems(inputs)
    if problems:
        raise BackendError(f"pipeline inputs do not match {interface.name} {interface.version}: " + "; ".join(problems))

    @pipeline(name=display_name)
    def create_pipeline() -> dict[str, Any]:
        chat_completion_pipeline = component(**inputs)
        # Exposed as a pipeline output so the model can be registered from azureml://jobs/<job>/outputs/trained_model.
        return {TRAINED_MODEL_OUTPUT: chat_completion_pipeline.outputs.mlflow_model_folder}

    job = create_pipeline()
    job.settings.force_rerun = True  # never reuse a cached run of another dataset's job
    job.settings.continue_on_step_failure = False
    job.tags = {str(k): str(v) for k, v in tags.items()}
    job.experiment_name = experiment_name
    return job


def datastore_uri(datastore: str, blob_name: str) -> str:
    return f"azureml://datastores/{datastore}/paths/{blob_name.lstrip('/')}"


def _dataset_label(dataset_id: str) -> str:
    return (dataset_id or "chat")[:12]


def _text(value: Any) -> str:
    """An SDK status as text: the SDK hands back str-based enums (``JobStatus.COMPLETED``) or plain strings."""
    if value is None:
        return ""
    return str(getattr(value, "value", value))


def _latest_metrics(steps: tuple[StepInfo, ...]) -> dict[str, float]:
    """Each step's last logged value, as ``<step>/<metric>`` and (first step wins) plain ``<metric>``."""
    found: dict[str, float] = {}
    plain: dict[str, float] = {}
    for step in steps:
        for name, points in step.metrics.items():
            if points:
                found[f"{step.display_name}/{name}"] = points[-1][1]
                plain.setdefault(name, points[-1][1])
    return {**plain, **found}


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return parse_iso(value)
        except ValueError:
            return None
    return None


@dataclasses.dataclass
class _Cached:
    value: Any
    at: float


@dataclasses.dataclass(frozen=True)
class _CachedTarget:
    target: ScoringTarget
    expires_at: float | None  # epoch seconds; None: a key, valid until regenerated


# --------------------------------------------------------------------------- backend

class AzureMLBackend:
    """The MLBackend protocol on an Azure ML workspace (see the module docstring)."""

    name = "azureml"

    def __init__(
        self,
        settings: Settings,
        *,
        credential: Any = None,
        client_kwargs: Mapping[str, Any] | None = None,
        today: Callable[[], date] | None = None,
    ) -> None:
        self.settings = settings
        self._credential_override = credential
        self._client_kwargs = dict(client_kwargs or {})
        self._today = today or (lambda: datetime.now(UTC).date())
        self._lock = threading.Lock()
        self._ws_entity: Any = None
        self._datastore_checked = False
        self._jobs: dict[str, _Cached] = {}
        self._deployment_models: dict[tuple[str, str], str] = {}  # (endpoint, deployment) -> model ref
        self._endpoints: dict[str, _Cached] = {}  # the last read of each endpoint (set_traffic reuses it)
        self._workspace: MLClient | None = None
        self._registry: MLClient | None = None
        self._foundation: _Cached | None = None
        self._component: _Cached | None = None
        self._targets: dict[str, _CachedTarget] = {}
        self._metrics_clients: dict[str, Any] = {}

    # ------------------------------------------------------------------ clients
    @property
    def credential(self) -> Any:
        if self._credential_override is not None:
            return self._credential_override
        from shared.storage import credential

        return credential(self.settings.azure_client_id)

    @property
    def workspace(self) -> MLClient:
        """Workspace client (no network call on construction)."""
        with self._lock:
            if self._workspace is None:
                from azure.ai.ml import MLClient

                s = self.settings
                if s.azure_ml_config:
                    with azure_errors(f"reading workspace config {s.azure_ml_config}"):
                        self._workspace = MLClient.from_config(self.credential, path=s.azure_ml_config, **self._client_kwargs)
                else:
                    self._workspace = MLClient(
                        self.credential, s.azure_subscription_id, s.azure_resource_group, s.azure_ml_workspace,
                        **self._client_kwargs,
                    )
            return self._workspace

    @property
    def registry(self) -> MLClient:
        """Registry client, created on first use: its constructor calls the registry discovery service."""
        with self._lock:
            if self._registry is None:
                from azure.ai.ml import MLClient

                name = self.settings.azure_ml_registry
                with azure_errors(f"connecting to registry {name}"):
                    self._registry = MLClient(self.credential, registry_name=name, **self._client_kwargs)
            return self._registry

    @property
    def workspace_id(self) -> str:
        s = self.settings
        if s.azure_subscription_id and s.azure_resource_group and s.azure_ml_workspace:
            return s.workspace_resource_id
        ws = self.workspace
        return (
            f"/subscriptions/{ws.subscription_id}/resourceGroups/{ws.resource_group_name}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{ws.workspace_name}"
        )

    # ------------------------------------------------------------------ registry assets
    def foundation_model(self) -> FoundationModel:
        """The registry's foundation model (pinned version or label latest) with its tags parsed."""
        cached = self._foundation
        if cached is not None and time.monotonic() - cached.at < _REGISTRY_CACHE_S:
            return cached.value
        s = self.settings
        name, version = s.foundation_model_name, s.foundation_model_version
        with azure_errors(f"reading foundation model {name} from registry {s.azure_ml_registry}"):
            model, raw = rest.registry_model(self.registry, name, version or None)
        system_metadata = raw.get("system_metadata") or raw.get("systemMetadata")
        foundation = FoundationModel.from_tags(str(model.id), str(model.name), str(model.version), model.tags,
                                               system_metadata, archived=bool(raw.get("isArchived")))
        self._foundation = _Cached(foundation, time.monotonic())
        log.info("foundation model %s version %s", foundation.name, foundation.version)
        return foundation

    def cached_foundation_model(self) -> FoundationModel | None:
        """The foundation model if this worker read it within the cache time (no request)."""
        cached = self._foundation
        if cached is not None and time.monotonic() - cached.at < _REGISTRY_CACHE_S:
            return cached.value
        return None

    def check_foundation_model(self, foundation: FoundationModel, *, finetune: bool) -> list[str]:
        """Lifecycle and inference size checks (BackendError); returns the warnings, already logged."""
        today = self._today()
        warnings = []
        for kind in (("finetune", "inference") if finetune else ("inference",)):
            warning = foundation.check_lifecycle(kind, today)
            if warning:
                log.warning("%s", warning)
                warnings.append(warning)
        size = self.settings.inference_instance_type
        check_size_current(size, today, f"inference instance type {size}", "INFERENCE_INSTANCE_TYPE")
        foundation.check_inference_instance(size)
        return warnings

    def _workspace_entity(self) -> Any:
        """The workspace resource (one read per worker: its region and discovery URL do not change)."""
        if self._ws_entity is None:
            ws = self.workspace
            with azure_errors(f"reading workspace {ws.workspace_name}"):
                self._ws_entity = ws.workspaces.get(ws.workspace_name)
        return self._ws_entity

    def location(self) -> str:
        """The workspace's region (endpoint PUTs and VM size lists need it)."""
        return str(self._workspace_entity().location)

    def _prime_run_history(self) -> None:
        """Point the SDK's run history client at the workspace's API host using the workspace read
        this worker already has (the SDK would read the workspace again for its discovery URL)."""
        ws = self.workspace
        if getattr(ws.jobs, "_api_base_url", None):
            return
        rest.prime_api_url(ws, self._workspace_entity())

    def check_datastore(self) -> None:
        """``AZURE_ML_DATASTORE`` exists and is the prepared container (once per worker, before the first submission)."""
        if self._datastore_checked:
            return
        s = self.settings
        name = s.azure_ml_datastore
        fix = (f"register a blob datastore named {name} on container {s.prepared_container} of the app's storage "
               "account (the deployment creates autopilot_prepared), or set AZURE_ML_DATASTORE")
        try:
            with azure_errors(f"reading datastore {name}"):
                store = self.workspace.datastores.get(name)
        except NotFoundError:
            raise BackendError(f"datastore {name} does not exist in workspace {s.azure_ml_workspace}: {fix}") from None
        kind = _text(getattr(store, "type", None)).lower()
        attribute = _DATASTORE_TYPES.get(kind)
        if attribute is None:
            raise BackendError(f"datastore {name} is a {kind or 'unknown'} datastore, not blob storage: {fix}")
        container = str(getattr(store, attribute, "") or "")
        if container != s.prepared_container:
            raise BackendError(
                f"datastore {name} points at container {container or '?'}, not the prepared container {s.prepared_container} "
                f"(train/test would be missing when the job starts): {fix}"
            )
        from shared.storage import storage_account

        account = storage_account(s)
        found = str(getattr(store, "account_name", "") or "")
        if account and found and found.lower() != account.lower():
            raise BackendError(f"datastore {name} is on storage account {found}, not the app's account {account}: {fix}")
        self._datastore_checked = True

    def pipeline_component(self) -> Any:
        """The registry's ``chat_completion_pipeline`` (pinned version or label latest)."""
        cached = self._component
        if cached is not None and time.monotonic() - cached.at < _REGISTRY_CACHE_S:
            return cached.value
        s = self.settings
        with azure_errors(f"reading component {PIPELINE_COMPONENT} from registry {s.azure_ml_registry}"):
            if s.pipeline_component_version:
                component = self.registry.components.get(PIPELINE_COMPONENT, version=s.pipeline_component_version)
            else:
                component = self.registry.components.get(PIPELINE_COMPONENT, label="latest")
        self._component = _Cached(component, time.monotonic())
        return component

    # ------------------------------------------------------------------ compute
    def finetune_compute(self, foundation: FoundationModel) -> FinetuneCompute:
        """The notebook's compute checks on the named cluster, or on the serverless instance type."""
        s = self.settings
        ws = self.workspace
        if s.finetune_compute:
            what = f"compute cluster {s.finetune_compute}"
            with azure_errors(f"reading {what}"):
                compute = ws.compute.get(s.finetune_compute)
            check_cluster_state(s.finetune_compute, _text(getattr(compute, "provisioning_state", None)))
            size = str(getattr(compute, "size", "") or "")
            if not size:
                raise BackendError(f"{what} has no VM size (is it a compute cluster?)")
            target = s.finetune_compute
            setting = "FINETUNE_COMPUTE"
        else:
            size = s.finetune_instance_type
            what = f"serverless instance type {size}"
            target = SERVERLESS
            setting = "FINETUNE_INSTANCE_TYPE"
        check_size_current(size, self._today(), what, setting)
        check_finetune_size(size, foundation.finetune_compute_allow_list, what)
        # Not compute.list_sizes(): a subscription-scope read the app's roles do not allow (azureml_compute).
        return FinetuneCompute(compute=target, size=size, gpus_per_node=known_gpus_per_node(size, what))

    # ------------------------------------------------------------------ fine-tune
    def prepare_finetune(self, request: FineTuneRequest) -> Any:
        """The PipelineJob ``submit_finetune`` would send (every check done, nothing sent)."""
        s = self.settings
        foundation = self.foundation_model()
        foundation.check_finetuning_task()
        self.check_foundation_model(foundation, finetune=True)
        compute = self.finetune_compute(foundation)
        self.check_datastore()
        component = self.pipeline_component()
        interface = ComponentInterface.from_component(component)
        try:
            params = finetune_parameters(interface, foundation.model_specific_defaults, s.finetune_params, request.params)
        except ParameterError as exc:
            raise BackendError(f"fine-tune parameters: {exc}") from None
        inputs = pipeline_inputs(
            interface,
            model_id=foundation.id,
            compute=compute,
            train_uri=datastore_uri(s.azure_ml_datastore, request.train_blob),
            test_uri=datastore_uri(s.azure_ml_datastore, request.test_blob),
            params=params,
        )
        gpus = int(inputs.get("number_of_gpu_to_use_finetuning", compute.gpus_per_node))
        tags = {
            "dataset_id": request.dataset_id,
            "model_name": request.model_name,
            "base_model": foundation.name,
            "base_model_version": foundation.version,
            "pipeline_component": f"{component.name}:{component.version}",
            **request.tags,
            MANAGED_BY_TAG: MANAGED_BY_VALUE,
        }
        with azure_errors("building the fine-tuning pipeline"):
            return build_pipeline_job(
                component, interface, inputs,
                display_name=pipeline_display_name(foundation.name, _dataset_label(request.dataset_id), params, gpus),
                tags=tags,
                experiment_name=s.experiment_name,
            )

    def submit_finetune(self, request: FineTuneRequest) -> str:
        job = self.prepare_finetune(request)
        with azure_errors(f"submitting the fine-tuning pipeline for dataset {request.dataset_id}"):
            created = self.workspace.jobs.create_or_update(job, experiment_name=self.settings.experiment_name)
        log.info("submitted fine-tuning job %s for dataset %s", created.name, request.dataset_id)
        return str(created.name)

    def _read_job(self, job_name: str) -> Any:
        with azure_errors(f"reading job {job_name}"):
            job = self.workspace.jobs.get(job_name)
        with self._lock:
            now = time.monotonic()
            self._jobs = {k: v for k, v in self._jobs.items() if now - v.at < _JOB_REUSE_S}
            self._jobs[job_name] = _Cached(job, now)
        return job

    def _final_job(self, job_name: str) -> Any:
        """The job ``get_job`` read moments ago when it was already final (it cannot change), else a fresh read."""
        with self._lock:
            cached = self._jobs.get(job_name)
        if cached is not None and time.monotonic() - cached.at < _JOB_REUSE_S:
            if _JOB_STATES.get(_text(getattr(cached.value, "status", None)).lower()) in JOB_FINAL_STATES:
                return cached.value
        return self._read_job(job_name)

    def get_job(self, job_name: str) -> JobInfo:
        job = self._read_job(job_name)
        status = _text(getattr(job, "status", None))
        state = _JOB_STATES.get(status.lower())
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
            metrics=_latest_metrics(steps),
            started_at=min(starts, default=None) or _parse_time(props.get("StartTimeUtc")) or _parse_time(created),
            ended_at=max(ends, default=None) or _parse_time(props.get("EndTimeUtc")),
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
            state = _JOB_STATES.get(_text(getattr(run, "status", None)).lower(), RUNNING)
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
                started_at=_parse_time(getattr(run, "start_time_utc", None)),
                ended_at=_parse_time(getattr(run, "end_time_utc", None)),
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
        """Training curves from the workspace's MLflow tracking (shared.backends.azureml_metrics)."""
        from shared.backends.azureml_metrics import job_metrics_history

        return job_metrics_history(self, job_name)

    # ------------------------------------------------------------------ registration
    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        ws = self.workspace
        job = self._final_job(job_name)
        job_tags = dict(job.tags or {})
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        first = int(registered_model_version(job_name, _parse_time(created)))
        base_model = job_tags.get("base_model", self.settings.foundation_model_name)
        owners: list[str] = []
        for version in (str(first + i) for i in range(VERSION_PROBES)):
            ref = ModelRef(name=model_name, version=version, job_name=job_name, base_model=base_model)
            try:
                with azure_errors(f"reading model {model_name}:{version}"):
                    existing = ws.models.get(model_name, version=version)
            except NotFoundError:
                break
            owner = (existing.tags or {}).get("job_name")
            if not owner or owner == job_name:
                log.info("model %s already registered for job %s", ref.ref, job_name)
                return ref
            owners.append(f"{version} ({owner})")  # another job created in the same second: the next one
        else:
            raise BackendError(f"model {model_name}: versions {', '.join(owners)} already belong to other jobs, not {job_name}")
        model = Model(
            path=f"azureml://jobs/{job_name}/outputs/{TRAINED_MODEL_OUTPUT}",
            type=AssetTypes.MLFLOW_MODEL,
            name=model_name,
            version=version,
            description=f"{base_model} fine-tuned on chat data by job {job_name}",
            tags={
                MANAGED_BY_TAG: MANAGED_BY_VALUE,
                "job_name": job_name,
                "base_model": base_model,
                "dataset_id": job_tags.get("dataset_id", ""),
                **lineage_tags(job_tags),  # collection, corpus id, dataset ids (corpus mode)
            },
        )
        with azure_errors(f"registering model {ref.ref} from job {job_name}"):
            rest.put_model_version(ws, model)
        log.info("registered model %s from job %s", ref.ref, job_name)
        return ref

    # ------------------------------------------------------------------ deployment
    def _read_endpoint(self, endpoint_name: str) -> Any | None:
        try:
            with azure_errors(f"reading endpoint {endpoint_name}"):
                endpoint = rest.get_endpoint(self.workspace, endpoint_name)
        except NotFoundError:
            with self._lock:
                self._endpoints.pop(endpoint_name, None)
            return None
        with self._lock:
            self._endpoints[endpoint_name] = _Cached(endpoint, time.monotonic())
        return endpoint

    def _forget_endpoint(self, endpoint_name: str) -> None:
        with self._lock:
            self._endpoints.pop(endpoint_name, None)

    def _recent_endpoint(self, endpoint_name: str) -> Any | None:
        """The endpoint as ``get_endpoint`` read it moments ago (the reconcile step that then routes traffic), else a read."""
        with self._lock:
            cached = self._endpoints.pop(endpoint_name, None)
        if cached is not None and time.monotonic() - cached.at < _JOB_REUSE_S:
            return cached.value
        return self._read_endpoint(endpoint_name)

    def _read_deployment(self, endpoint_name: str, name: str = DEPLOYMENT_NAME) -> Any | None:
        try:
            with azure_errors(f"reading deployment {name} of endpoint {endpoint_name}"):
                return self.workspace.online_deployments.get(name, endpoint_name)
        except NotFoundError:
            return None

    # ------------------------------------------------------------------ deployments beside the serving one
    def begin_deploy_deployment(self, model: ModelRef, endpoint_name: str, deployment: str) -> None:
        from shared.backends.azureml_rollout import begin_deploy_deployment

        begin_deploy_deployment(self, model, endpoint_name, deployment)
        self._deployment_models[(endpoint_name, deployment)] = model.ref

    def get_deployment(self, endpoint_name: str, deployment: str) -> Any:
        from shared.backends.azureml_rollout import deployment_info, get_deployment_rest

        try:
            with azure_errors(f"reading deployment {deployment} of endpoint {endpoint_name}"):
                found = get_deployment_rest(self.workspace, endpoint_name, deployment)
        except NotFoundError:
            return None
        info = deployment_info(found)
        if info.model:
            self._deployment_models[(endpoint_name, deployment)] = info.model
        return info

    def begin_delete_deployment(self, endpoint_name: str, deployment: str) -> None:
        from shared.backends.azureml_rollout import start_deployment_delete

        with azure_errors(f"deleting deployment {deployment} of endpoint {endpoint_name}"):
            start_deployment_delete(self.workspace, endpoint_name, deployment)
        self._deployment_models.pop((endpoint_name, deployment), None)
        log.info("started deleting deployment %s of endpoint %s", deployment, endpoint_name)

    def deployment_metrics(self, endpoint_name: str, since: datetime) -> Any:
        from shared.backends.azureml_rollout import deployment_metrics

        return deployment_metrics(self, endpoint_name, since)

    def _model_arm_id(self, model_ref: str) -> str:
        name, sep, version = model_ref.rpartition(":")
        if not sep or not name or not version:
            raise BackendError(f"model reference {model_ref!r} is not name:version")
        return f"{self.workspace_id}/models/{name}/versions/{version}"

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        """Step 1 of the state machine: check the size, start the endpoint (or the deployment if it exists)."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        s = self.settings
        # The sizes and lifecycle were checked before the job was submitted; re-checked here only
        # against what this worker already knows (no registry round trip on every deployment):
        # a size Azure refuses fails the deployment PUT with Azure's reason.
        check_size_current(s.inference_instance_type, self._today(), f"inference instance type {s.inference_instance_type}",
                           "INFERENCE_INSTANCE_TYPE")
        foundation = self.cached_foundation_model()
        if foundation is not None:
            self.check_foundation_model(foundation, finetune=False)
        endpoint = self._read_endpoint(endpoint_name)
        state = _text(getattr(endpoint, "provisioning_state", None)).lower()
        if endpoint is not None and state == "deleting":
            raise TransientBackendError(f"endpoint {endpoint_name} is being deleted; deploy again once it is gone")
        if endpoint is not None and state == "succeeded":
            # A deploy request (first, or a heal attempt) re-submits a Failed/Canceled deployment;
            # get_endpoint's step 2 never does (the health loop bounds how often this happens).
            self._ensure_deployment(endpoint, redo_failed=True)
            return
        if endpoint is not None and state != "failed":
            log.info("endpoint %s is already being created (%s)", endpoint_name, state)
            return
        # Missing, or failed: (re)start the endpoint PUT; ARM retries the creation.
        endpoint_tags = {
            **{str(k): str(v) for k, v in tags.items()},
            "model": model.ref,
            "model_name": model.name,
            "model_version": model.version,
            "job_name": model.job_name,
            "base_model": model.base_model,
            MANAGED_BY_TAG: MANAGED_BY_VALUE,
        }
        new_endpoint = ManagedOnlineEndpoint(
            name=endpoint_name,
            description=f"Online endpoint for {model.ref}, fine-tuned chat completion",
            auth_mode=s.endpoint_auth_mode,
            tags=endpoint_tags,
        )
        with azure_errors(f"creating endpoint {endpoint_name}"):
            location = self.location()
            rest.start_endpoint_put(self.workspace, new_endpoint, location)
        log.info("started creating endpoint %s for %s", endpoint_name, model.ref)

    def _ensure_deployment(self, endpoint: Any, *, redo_failed: bool = False) -> Any | None:
        """Step 2: the endpoint exists; start the deployment of its tagged model unless there is one
        (or, with ``redo_failed``, unless the one there is not Failed or Canceled)."""
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

        # A promoted candidate (or a version rolled back to inside the endpoint) serves under its
        # own name: that is the deployment checked, and re-submitted when it failed (a heal).
        name = serving_deployment(endpoint, DEPLOYMENT_NAME)
        existing = self._read_deployment(endpoint.name, name)
        existing_state = _text(getattr(existing, "provisioning_state", None)).lower() if existing is not None else ""
        if existing is not None and not (redo_failed and existing_state in {"failed", "canceled"}):
            return existing
        model_ref = (endpoint.tags or {}).get("model")
        if not model_ref:
            raise BackendError(f"endpoint {endpoint.name} has no model tag: cannot tell which model to deploy")
        s = self.settings
        deployment = ManagedOnlineDeployment(
            name=name,
            endpoint_name=endpoint.name,
            model=self._model_arm_id(model_ref),
            instance_type=s.inference_instance_type,
            instance_count=s.inference_instance_count,
            liveness_probe=ProbeSettings(initial_delay=PROBE_INITIAL_DELAY_S),
            request_settings=OnlineRequestSettings(request_timeout_ms=REQUEST_TIMEOUT_MS),
            tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model_ref},
        )
        with azure_errors(f"creating deployment {name} of endpoint {endpoint.name}"):
            rest.start_deployment_put(self.workspace, deployment, str(endpoint.location or "") or self.location())
        log.info("started deployment %s of %s on endpoint %s", name, model_ref, endpoint.name)
        return None

    def get_endpoint(self, endpoint_name: str) -> EndpointInfo | None:
        """Endpoint + deployment state; starts the deployment once the endpoint exists (step 2)."""
        endpoint = self._read_endpoint(endpoint_name)
        if endpoint is None:
            return None
        base = self._endpoint_info(endpoint)
        state = _text(endpoint.provisioning_state).lower()
        if state == "deleting":
            return dataclasses.replace(base, state=EP_DELETING)
        if state in {"failed", "canceled"}:
            return dataclasses.replace(base, state=EP_FAILED, error=f"endpoint {endpoint_name} provisioning {state}")
        if state != "succeeded":
            return dataclasses.replace(base, state=EP_PROVISIONING)
        try:
            deployment = self._ensure_deployment(endpoint)
        except TransientBackendError:
            raise
        except BackendError as exc:
            return dataclasses.replace(base, state=EP_FAILED, error=str(exc))
        if deployment is None:
            return dataclasses.replace(base, state=EP_PROVISIONING, deployment=base.deployment or DEPLOYMENT_NAME)
        dstate = _text(deployment.provisioning_state).lower()
        info = dataclasses.replace(
            base,
            deployment=str(deployment.name),
            instance_type=deployment.instance_type,
            instance_count=int(deployment.instance_count or 1),
        )
        if dstate == "succeeded":
            return dataclasses.replace(info, state=EP_SUCCEEDED)
        if dstate in {"failed", "canceled"}:
            return dataclasses.replace(
                info, state=EP_FAILED,
                error=f"deployment {deployment.name} of endpoint {endpoint_name} {dstate} "
                      f"(az ml online-deployment get-logs -e {endpoint_name} -n {deployment.name})",
            )
        return dataclasses.replace(info, state=EP_PROVISIONING)

    def _endpoint_info(self, endpoint: Any, last_activity: datetime | None = None) -> EndpointInfo:
        tags = {str(k): str(v) for k, v in (endpoint.tags or {}).items()}
        traffic = {str(k): int(v) for k, v in (endpoint.traffic or {}).items()}
        serving = [d for d, share in traffic.items() if share > 0]
        state = _text(endpoint.provisioning_state).lower()
        if state == "succeeded":
            # Without reading the deployment: an endpoint routing traffic serves; one that does not is still rolling out.
            ep_state = EP_SUCCEEDED if serving else EP_PROVISIONING
        elif state == "deleting":
            ep_state = EP_DELETING
        elif state in {"failed", "canceled"}:
            ep_state = EP_FAILED
        else:
            ep_state = EP_PROVISIONING
        return EndpointInfo(
            name=str(endpoint.name),
            state=ep_state,
            tags=tags,
            model=tags.get("model"),
            deployment=serving[0] if serving else None,
            traffic=traffic,
            instance_type=None,
            created_at=_parse_time((endpoint.properties or {}).get("createdAt")),
            last_activity=last_activity,
        )

    def set_traffic(self, endpoint_name: str, traffic: dict[str, int] | None = None,
                    mirror: dict[str, int] | None = None) -> None:
        """Step 3: route 100% to the deployment (started, not waited on; a no-op when already so).
        With ``traffic``: that split between the endpoint's deployments (shared.backends.azureml_rollout)."""
        if traffic is not None or mirror:
            from shared.backends.azureml_rollout import set_traffic_split

            set_traffic_split(self, endpoint_name, traffic or {}, mirror)
            return
        endpoint = self._recent_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_name} does not exist")
        current = {k: int(v) for k, v in (endpoint.traffic or {}).items() if int(v)}
        if len(current) == 1 and next(iter(current.values())) == 100:
            return  # one deployment takes everything already (the first one, or a promoted candidate)
        wanted = {DEPLOYMENT_NAME: 100}
        endpoint.traffic = wanted
        with azure_errors(f"routing traffic of endpoint {endpoint_name} to {DEPLOYMENT_NAME}"):
            rest.start_endpoint_put(self.workspace, endpoint, str(endpoint.location or "") or self.location())
        log.info("routing 100%% of endpoint %s to deployment %s", endpoint_name, DEPLOYMENT_NAME)

    def list_endpoints(self) -> list[EndpointInfo]:
        with azure_errors("listing online endpoints"):
            endpoints = [e for e in self.workspace.online_endpoints.list() if (e.tags or {}).get(MANAGED_BY_TAG) == MANAGED_BY_VALUE]
        activity = self.last_activity(endpoints)
        return [self._endpoint_info(e, activity.get(str(e.id).lower())) for e in endpoints]

    def last_activity(self, endpoints: list[Any]) -> dict[str, datetime | None]:
        """Last minute with requests (Azure Monitor ``RequestsPerMinute``), by lower-case endpoint id.

        Looks back twice the idle threshold (at least an hour). Any failure to read the metrics
        gives no entry (unknown), never an error: the janitor then relies on the ledger.
        """
        window = timedelta(minutes=max(60.0, 2 * self.settings.idle_endpoint_minutes))
        granularity = timedelta(minutes=1) if window <= timedelta(days=1) else timedelta(hours=1)
        by_region: dict[str, list[str]] = {}
        for e in endpoints:
            if e.id and e.location:
                by_region.setdefault(str(e.location).lower().replace(" ", ""), []).append(str(e.id))
        found: dict[str, datetime | None] = {}
        for region, ids in by_region.items():
            for start in range(0, len(ids), _METRICS_BATCH):
                batch = ids[start:start + _METRICS_BATCH]
                try:
                    found.update(self._query_activity(region, batch, window, granularity))
                except Exception as exc:  # noqa: BLE001 - metrics are advisory: unknown, never a crash
                    log.warning("cannot read %s for %d endpoint(s) in %s: %s", ACTIVITY_METRIC, len(batch), region, _reason(exc))
        return found

    def _query_activity(self, region: str, ids: list[str], window: timedelta, granularity: timedelta) -> dict[str, datetime | None]:
        from azure.monitor.querymetrics import MetricsClient

        client = self._metrics_clients.get(region)
        if client is None:
            client = MetricsClient(f"https://{region}.metrics.monitor.azure.com", self.credential)
            self._metrics_clients[region] = client
        results = client.query_resources(
            resource_ids=ids,
            metric_namespace=METRICS_NAMESPACE,
            metric_names=[ACTIVITY_METRIC],
            timespan=window,
            granularity=granularity,
            aggregations=["Average"],
        )
        wanted = [i.lower() for i in ids]
        found: dict[str, datetime | None] = {}
        for result in results:
            for metric in result.metrics:
                metric_id = str(metric.id or "").lower()
                owner = next((i for i in wanted if metric_id.startswith(i + "/")), None)
                if owner is None:
                    continue
                latest = found.get(owner)
                for series in metric.timeseries:
                    for point in series.data:
                        if (point.average or 0) > 0 and (latest is None or point.timestamp > latest):
                            latest = point.timestamp
                found[owner] = latest
        return found

    def begin_delete_endpoint(self, endpoint_name: str) -> None:
        with self._lock:
            self._targets.pop(endpoint_name, None)
        try:
            with azure_errors(f"deleting endpoint {endpoint_name}"):
                rest.start_endpoint_delete(self.workspace, endpoint_name)
        except NotFoundError:
            log.info("endpoint %s is already gone", endpoint_name)
            return
        log.info("started deleting endpoint %s", endpoint_name)

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False, deployment: str | None = None) -> ScoringTarget:
        target = self._endpoint_target(endpoint_name, refresh)
        # Unpinned, the endpoint's traffic split decides; pinned, the header names the deployment.
        return dataclasses.replace(target, deployment=deployment)

    def _endpoint_target(self, endpoint_name: str, refresh: bool) -> ScoringTarget:
        now = time.time()
        with self._lock:
            cached = self._targets.get(endpoint_name)
        if cached is not None and not refresh and (cached.expires_at is None or cached.expires_at - 60 > now):
            return cached.target
        endpoint = self._read_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_name} does not exist")
        if not endpoint.scoring_uri:
            raise TransientBackendError(f"endpoint {endpoint_name} has no scoring URI yet")
        with azure_errors(f"reading the credentials of endpoint {endpoint_name}"):
            creds = rest.endpoint_credentials(self.workspace, endpoint)
        key = getattr(creds, "primary_key", None) or getattr(creds, "access_token", None)
        if not key:
            raise BackendError(f"endpoint {endpoint_name} returned no key or token")
        expiry = getattr(creds, "expiry_time_utc", None)
        target = ScoringTarget(url=str(endpoint.scoring_uri), key=str(key), timeout_s=SCORING_TIMEOUT_S)
        with self._lock:
            self._targets[endpoint_name] = _CachedTarget(target, float(expiry) if expiry else None)
        return target

    def endpoint_health(self, endpoint_name: str) -> Any:
        from shared.backends.azureml_health import endpoint_health  # endpoint + deployment provisioning state

        return endpoint_health(self.workspace, endpoint_name, DEPLOYMENT_NAME)
