"""Azure ML backend: the Phi-3 cookbook notebook "FineTuning_MLSDK", step by step, unattended.

Every notebook step has its place here, reshaped for an event-driven app that never waits:

======================================  ==================================================
notebook                                here
======================================  ==================================================
``MLClient.from_config`` / workspace    :attr:`AzureMLBackend.workspace` (settings or config.json)
``MLClient(registry_name="azureml")``   :attr:`AzureMLBackend.registry` (lazy: its constructor calls
                                        the registry discovery service)
``models.get(name, label="latest")``    :meth:`AzureMLBackend.foundation_model` (+ tags parsed safely)
compute checks, ``list_sizes()``        :meth:`AzureMLBackend.finetune_compute`
fine-tune parameters, display name      :mod:`shared.backends.azureml_params`
``@pipeline`` + ``jobs.create_or_update``  :meth:`AzureMLBackend.submit_finetune` (``jobs.stream``
                                        is replaced by the job-completed event)
``Model(path=azureml://jobs/...)``      :meth:`AzureMLBackend.register_model`
endpoint, deployment "demo", traffic    :meth:`begin_deploy` / :meth:`get_endpoint` / :meth:`set_traffic`
``online_endpoints.begin_delete``       :meth:`begin_delete_endpoint`
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

``begin_*`` calls return the SDK's ``LROPoller`` unwaited: azure-core keeps polling the operation
in a daemon thread of the worker; nothing depends on that thread, state is always re-read.

``azure.ai.ml`` is imported only inside this module's methods (``get_backend`` imports this
module only when ``ML_BACKEND=azureml``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from shared.backends.azureml_compute import (
    SERVERLESS,
    FinetuneCompute,
    check_cluster_state,
    check_finetune_size,
    gpus_per_node,
    planned_gpus_per_node,
)
from shared.backends.azureml_model import FoundationModel, registered_model_version
from shared.backends.azureml_params import ComponentInterface, ParameterError, finetune_parameters, pipeline_display_name
from shared.backends.base import (
    CANCELED,
    COMPLETED,
    EP_DELETING,
    EP_FAILED,
    EP_PROVISIONING,
    EP_SUCCEEDED,
    FAILED,
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
    TransientBackendError,
)
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


def _parse_time(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
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

    def __init__(self, settings: Settings, *, credential: Any = None, client_kwargs: Mapping[str, Any] | None = None) -> None:
        self.settings = settings
        self._credential_override = credential
        self._client_kwargs = dict(client_kwargs or {})
        self._lock = threading.Lock()
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
            if version:
                model = self.registry.models.get(name, version=version)
            else:
                model = self.registry.models.get(name, label="latest")
        foundation = FoundationModel.from_tags(str(model.id), str(model.name), str(model.version), model.tags)
        self._foundation = _Cached(foundation, time.monotonic())
        log.info("foundation model %s version %s", foundation.name, foundation.version)
        return foundation

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
        else:
            size = s.finetune_instance_type
            what = f"serverless instance type {size}"
            target = SERVERLESS
        check_finetune_size(size, foundation.finetune_compute_allow_list, what)
        with azure_errors("listing the workspace's VM sizes"):
            skus = list(ws.compute.list_sizes())
        return FinetuneCompute(compute=target, size=size, gpus_per_node=gpus_per_node(size, skus, what))

    # ------------------------------------------------------------------ fine-tune
    def prepare_finetune(self, request: FineTuneRequest) -> Any:
        """The PipelineJob ``submit_finetune`` would send (every check done, nothing sent)."""
        s = self.settings
        foundation = self.foundation_model()
        compute = self.finetune_compute(foundation)
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

    def get_job(self, job_name: str) -> JobInfo:
        with azure_errors(f"reading job {job_name}"):
            job = self.workspace.jobs.get(job_name)
        status = _text(getattr(job, "status", None))
        state = _JOB_STATES.get(status.lower())
        if state is None:
            log.warning("job %s has unknown status %r; treating it as running", job_name, status)
            state = RUNNING
        props = dict(getattr(job, "properties", None) or {})
        error = None
        if state == FAILED:
            error = next((str(v) for k, v in props.items() if "error" in k.lower() and v), None) or f"job {job_name} {status}"
        elif state == CANCELED:
            error = f"job {job_name} was canceled"
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        return JobInfo(
            name=str(job.name),
            state=state,
            tags={str(k): str(v) for k, v in (job.tags or {}).items()},
            error=error,
            started_at=_parse_time(props.get("StartTimeUtc")) or _parse_time(created),
            ended_at=_parse_time(props.get("EndTimeUtc")),
            log_path=getattr(job, "studio_url", None),
        )

    # ------------------------------------------------------------------ registration
    def register_model(self, job_name: str, model_name: str) -> ModelRef:
        from azure.ai.ml.constants import AssetTypes
        from azure.ai.ml.entities import Model

        ws = self.workspace
        with azure_errors(f"reading job {job_name}"):
            job = ws.jobs.get(job_name)
        job_tags = dict(job.tags or {})
        created = getattr(getattr(job, "creation_context", None), "created_at", None)
        version = registered_model_version(job_name, _parse_time(created))
        base_model = job_tags.get("base_model", self.settings.foundation_model_name)
        ref = ModelRef(name=model_name, version=version, job_name=job_name, base_model=base_model)
        try:
            with azure_errors(f"reading model {model_name}:{version}"):
                existing = ws.models.get(model_name, version=version)
        except NotFoundError:
            existing = None
        if existing is not None:
            owner = (existing.tags or {}).get("job_name")
            if owner and owner != job_name:
                raise BackendError(f"model {model_name}:{version} already belongs to job {owner}, not {job_name}")
            log.info("model %s already registered for job %s", ref.ref, job_name)
            return ref
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
            },
        )
        with azure_errors(f"registering model {ref.ref} from job {job_name}"):
            ws.models.create_or_update(model)
        log.info("registered model %s from job %s", ref.ref, job_name)
        return ref

    # ------------------------------------------------------------------ deployment
    def _read_endpoint(self, endpoint_name: str) -> Any | None:
        try:
            with azure_errors(f"reading endpoint {endpoint_name}"):
                return self.workspace.online_endpoints.get(endpoint_name)
        except NotFoundError:
            return None

    def _read_deployment(self, endpoint_name: str) -> Any | None:
        try:
            with azure_errors(f"reading deployment {DEPLOYMENT_NAME} of endpoint {endpoint_name}"):
                return self.workspace.online_deployments.get(DEPLOYMENT_NAME, endpoint_name)
        except NotFoundError:
            return None

    def _model_arm_id(self, model_ref: str) -> str:
        name, sep, version = model_ref.rpartition(":")
        if not sep or not name or not version:
            raise BackendError(f"model reference {model_ref!r} is not name:version")
        return f"{self.workspace_id}/models/{name}/versions/{version}"

    def begin_deploy(self, model: ModelRef, endpoint_name: str, tags: dict[str, str]) -> None:
        """Step 1 of the state machine: check the size, start the endpoint (or the deployment if it exists)."""
        from azure.ai.ml.entities import ManagedOnlineEndpoint

        s = self.settings
        self.foundation_model().check_inference_instance(s.inference_instance_type)
        endpoint = self._read_endpoint(endpoint_name)
        state = _text(getattr(endpoint, "provisioning_state", None)).lower()
        if endpoint is not None and state == "deleting":
            raise TransientBackendError(f"endpoint {endpoint_name} is being deleted; deploy again once it is gone")
        if endpoint is not None and state == "succeeded":
            self._ensure_deployment(endpoint)
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
            self.workspace.online_endpoints.begin_create_or_update(new_endpoint)
        log.info("started creating endpoint %s for %s", endpoint_name, model.ref)

    def _ensure_deployment(self, endpoint: Any) -> Any | None:
        """Step 2: the endpoint exists; start the deployment of its tagged model unless there is one."""
        from azure.ai.ml.entities import ManagedOnlineDeployment, OnlineRequestSettings, ProbeSettings

        existing = self._read_deployment(endpoint.name)
        if existing is not None:
            return existing
        model_ref = (endpoint.tags or {}).get("model")
        if not model_ref:
            raise BackendError(f"endpoint {endpoint.name} has no model tag: cannot tell which model to deploy")
        s = self.settings
        deployment = ManagedOnlineDeployment(
            name=DEPLOYMENT_NAME,
            endpoint_name=endpoint.name,
            model=self._model_arm_id(model_ref),
            instance_type=s.inference_instance_type,
            instance_count=s.inference_instance_count,
            liveness_probe=ProbeSettings(initial_delay=PROBE_INITIAL_DELAY_S),
            request_settings=OnlineRequestSettings(request_timeout_ms=REQUEST_TIMEOUT_MS),
            tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "model": model_ref},
        )
        with azure_errors(f"creating deployment {DEPLOYMENT_NAME} of endpoint {endpoint.name}"):
            self.workspace.online_deployments.begin_create_or_update(deployment)
        log.info("started deployment %s of %s on endpoint %s", DEPLOYMENT_NAME, model_ref, endpoint.name)
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
            return dataclasses.replace(base, state=EP_PROVISIONING, deployment=DEPLOYMENT_NAME)
        dstate = _text(deployment.provisioning_state).lower()
        info = dataclasses.replace(
            base,
            deployment=DEPLOYMENT_NAME,
            instance_type=deployment.instance_type,
            instance_count=int(deployment.instance_count or 1),
        )
        if dstate == "succeeded":
            return dataclasses.replace(info, state=EP_SUCCEEDED)
        if dstate in {"failed", "canceled"}:
            return dataclasses.replace(
                info, state=EP_FAILED,
                error=f"deployment {DEPLOYMENT_NAME} of endpoint {endpoint_name} {dstate} "
                      f"(az ml online-deployment get-logs -e {endpoint_name} -n {DEPLOYMENT_NAME})",
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

    def set_traffic(self, endpoint_name: str) -> None:
        """Step 3: route 100% to the deployment (started, not waited on; a no-op when already so)."""
        endpoint = self._read_endpoint(endpoint_name)
        if endpoint is None:
            raise NotFoundError(f"endpoint {endpoint_name} does not exist")
        wanted = {DEPLOYMENT_NAME: 100}
        if {k: int(v) for k, v in (endpoint.traffic or {}).items() if int(v)} == wanted:
            return
        endpoint.traffic = wanted
        with azure_errors(f"routing traffic of endpoint {endpoint_name} to {DEPLOYMENT_NAME}"):
            self.workspace.online_endpoints.begin_create_or_update(endpoint)
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
                self.workspace.online_endpoints.begin_delete(endpoint_name)
        except NotFoundError:
            log.info("endpoint %s is already gone", endpoint_name)
            return
        log.info("started deleting endpoint %s", endpoint_name)

    def get_scoring_target(self, endpoint_name: str, refresh: bool = False) -> ScoringTarget:
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
            creds = self.workspace.online_endpoints.get_keys(endpoint_name)
        key = getattr(creds, "primary_key", None) or getattr(creds, "access_token", None)
        if not key:
            raise BackendError(f"endpoint {endpoint_name} returned no key or token")
        expiry = getattr(creds, "expiry_time_utc", None)
        target = ScoringTarget(url=str(endpoint.scoring_uri), key=str(key), timeout_s=SCORING_TIMEOUT_S, deployment=DEPLOYMENT_NAME)
        with self._lock:
            self._targets[endpoint_name] = _CachedTarget(target, float(expiry) if expiry else None)
        return target

    def endpoint_health(self, endpoint_name: str) -> Any:
        from shared.backends.azureml_health import endpoint_health  # endpoint + deployment provisioning state

        return endpoint_health(self.workspace, endpoint_name, DEPLOYMENT_NAME)


# --------------------------------------------------------------------------- plan command

@dataclasses.dataclass(frozen=True)
class Plan:
    yaml: str
    component_source: str  # "registry" or "repo interface"
    inputs: dict[str, Any]


def plan_pipeline_job(settings: Settings, train_uri: str, test_uri: str, *, backend: AzureMLBackend | None = None) -> Plan:
    """The pipeline job the app would submit for these files, as Azure ML v2 YAML.

    Uses the registry's component and foundation model when reachable; otherwise the component
    interface the repo keeps, the foundation model by label, and GPUs per node from a table of
    known sizes. Each online step is tried once with short timeouts.
    """
    from azure.ai.ml import load_component

    notes: list[str] = []
    online = backend
    if online is None:
        online = AzureMLBackend(settings, client_kwargs={"connection_timeout": 5, "read_timeout": 15, "retry_total": 0})

    component: Any = None
    foundation: FoundationModel | None = None
    try:
        component = online.pipeline_component()
        foundation = online.foundation_model()
        source = f"registry {settings.azure_ml_registry}"
        component_reference = str(component.id)
    except BackendError as exc:
        notes.append(f"registry not reachable ({_first_line(str(exc))}); using the repo's interface copy")
        component = None
    except Exception as exc:  # noqa: BLE001 - e.g. no credential at all: planning stays offline
        notes.append(f"registry not reachable ({type(exc).__name__}); using the repo's interface copy")
        component = None
    if component is None:
        from shared.backends.azureml_params import INTERFACE_PATH

        component = load_component(source=str(INTERFACE_PATH))
        source = f"repo interface copy {INTERFACE_PATH.name} ({component.name} {component.version})"
        pinned = settings.pipeline_component_version
        component_reference = (
            f"azureml://registries/{settings.azure_ml_registry}/components/{PIPELINE_COMPONENT}/"
            + (f"versions/{pinned}" if pinned else "labels/latest")
        )
        label = f"versions/{settings.foundation_model_version}" if settings.foundation_model_version else "labels/latest"
        foundation = FoundationModel(
            id=f"azureml://registries/{settings.azure_ml_registry}/models/{settings.foundation_model_name}/{label}",
            name=settings.foundation_model_name,
            version=settings.foundation_model_version or "latest",
        )
    assert foundation is not None
    interface = ComponentInterface.from_component(component)

    compute: FinetuneCompute | None = None
    workspace_configured = bool(settings.azure_ml_config or settings.azure_subscription_id)
    if source.startswith("registry") and workspace_configured:
        try:
            compute = online.finetune_compute(foundation)
        except TransientBackendError as exc:
            notes.append(f"workspace not reachable ({exc}); GPUs per node from known sizes")
        # A BackendError here (failed cluster, disallowed size) is the answer the user needs: raise it.
    if compute is None and settings.finetune_compute:
        compute = FinetuneCompute(compute=settings.finetune_compute, size="unknown offline", gpus_per_node=1)
        notes.append(f"compute cluster {settings.finetune_compute} not checked offline; number_of_gpu_to_use_finetuning assumed 1")
    elif compute is None:
        size = settings.finetune_instance_type
        check_finetune_size(size, foundation.finetune_compute_allow_list, f"serverless instance type {size}")
        compute = FinetuneCompute(compute=SERVERLESS, size=size, gpus_per_node=planned_gpus_per_node(size))

    try:
        params = finetune_parameters(interface, foundation.model_specific_defaults, settings.finetune_params)
    except ParameterError as exc:
        raise BackendError(f"fine-tune parameters: {exc}") from None
    inputs = pipeline_inputs(
        interface, model_id=foundation.id, compute=compute, train_uri=train_uri, test_uri=test_uri, params=params,
    )
    gpus = int(inputs.get("number_of_gpu_to_use_finetuning", compute.gpus_per_node))
    job = build_pipeline_job(
        component, interface, inputs,
        display_name=pipeline_display_name(foundation.name, "plan", params, gpus),
        tags={MANAGED_BY_TAG: MANAGED_BY_VALUE, "base_model": foundation.name, "base_model_version": foundation.version},
        experiment_name=settings.experiment_name,
    )
    buf = io.StringIO()
    job.dump(buf)
    document = _with_component_reference(buf.getvalue(), component_reference)
    header = [
        "# Pipeline job the fine-tuning autopilot would submit (azure-ai-ml v2 YAML, not submitted).",
        f"# component: {source}",
        f"# foundation model: {foundation.id}",
        f"# compute: {compute.compute} ({compute.size}, {compute.gpus_per_node} GPU(s) per node)",
        *(f"# note: {n}" for n in notes),
    ]
    return Plan(yaml="\n".join(header) + "\n" + document, component_source=source, inputs=inputs)


def _with_component_reference(document: str, reference: str) -> str:
    """The SDK's YAML with each node's inlined component body replaced by its registry reference.

    The SDK inlines the whole component spec (every input's declaration) ahead of the inputs the
    job sets; the reference is what a v2 job YAML names, so the plan stays short and submittable
    with ``az ml job create --file``.
    """
    import yaml

    data = yaml.safe_load(document)
    data = {"$schema": "https://azuremlschemas.azureedge.net/latest/pipelineJob.schema.json", **data}
    for node in (data.get("jobs") or {}).values():
        if isinstance(node, dict) and isinstance(node.get("component"), dict):
            node["component"] = reference
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False)


def _first_line(text: str, limit: int = 160) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return line if len(line) <= limit else line[:limit] + "..."


def _plan_settings() -> Settings:
    from shared.settings import SettingsError, get_settings, load_settings, local_settings_values

    try:
        return get_settings()
    except SettingsError as exc:
        # Planning needs no workspace: without AZURE_SUBSCRIPTION_ID & co. it only skips the workspace checks.
        log.warning("planning without a workspace: %s", exc)
        env = {**local_settings_values(), **os.environ, "ML_BACKEND": "local"}
        return load_settings(environ=env)


def cli_plan(args: Any) -> int:
    """``python -m shared.cli plan --train URI --test URI [--out FILE]``."""
    settings = _plan_settings()
    # Offline, every credential in DefaultAzureCredential's chain explains at length why it has no token.
    logging.getLogger("azure.identity").setLevel(logging.ERROR)
    try:
        plan = plan_pipeline_job(settings, args.train, args.test)
    except BackendError as exc:
        print(f"plan failed: {exc}", file=sys.stderr)
        return 1
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(plan.yaml)
        print(f"wrote {args.out} (component from {plan.component_source})", file=sys.stderr)
    else:
        sys.stdout.write(plan.yaml)
    return 0
